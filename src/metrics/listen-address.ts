// --metrics-listen ADDR: where the Prometheus endpoint listens. A Unix
// socket path, or HOST:PORT ([V6]:PORT for IPv6). Pure: parses, binds nothing.
//
// A wildcard address (0.0.0.0, [::]) is refused: the endpoint has no
// authentication, so it listens on one interface the operator names (the
// loopback, a management network's address) or on a Unix socket whose
// permissions guard it. Port 0 asks the kernel for a free port; the daemon
// logs the one it got.

import net from 'node:net';
import { UsageError } from '../errors';

export type MetricsAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** sizeof(sockaddr_un.sun_path) on Linux is 108, one byte of which is the NUL. */
const MAX_UNIX_PATH_BYTES = 107;
const OPTION = '--metrics-listen';
const FORMS = 'a Unix socket path, HOST:PORT or [IPV6]:PORT (e.g. 127.0.0.1:9101)';

export function parseMetricsAddress(raw: string): MetricsAddress {
  const fail = (why: string): never => {
    throw new UsageError(`${OPTION} expects ${FORMS}${why}, got ${JSON.stringify(raw)}`);
  };
  if (raw === '') fail('');
  if (raw.includes('\0')) fail(' without NUL bytes');
  // A path: absolute, explicitly relative, or a bare name without a colon.
  if (raw.startsWith('/') || raw.startsWith('.') || !raw.includes(':')) {
    const bytes = Buffer.byteLength(raw, 'utf8');
    if (bytes > MAX_UNIX_PATH_BYTES) fail(`; a Unix socket path has at most ${MAX_UNIX_PATH_BYTES} bytes, this one ${bytes}`);
    return { kind: 'unix', path: raw };
  }
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(raw);
  if (m === null) return fail('');
  const port = Number(m[3]);
  if (port > 65535) fail('; a port is at most 65535');
  // The pattern matches exactly one of the two host groups.
  const host = m[1] ?? m[2] ?? '';
  if (m[1] !== undefined && !net.isIPv6(host)) fail(`; ${host} is not an IPv6 address`);
  if (isWildcard(host)) {
    fail('; a wildcard address would serve the unauthenticated endpoint on every interface: name one address');
  }
  return { kind: 'tcp', host, port };
}

function isWildcard(host: string): boolean {
  if (net.isIPv4(host)) return host === '0.0.0.0';
  if (net.isIPv6(host)) return /^[0:]+$/.test(host);
  return false;
}

/** How the address is named in log lines and errors. */
export function describeAddress(a: MetricsAddress): string {
  if (a.kind === 'unix') return a.path;
  return net.isIPv6(a.host) ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
