// Reads the Prometheus text exposition format (version 0.0.4) strictly
// enough for tests: `name{label="value",...} number` sample lines, # HELP and
// # TYPE comments. A line it cannot read throws, so a malformed endpoint
// fails the test instead of reading as missing metrics.

import http from 'node:http';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  /** # TYPE of each metric family. */
  types: Map<string, string>;
  help: Map<string, string>;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)/y;

function parseValue(text: string, line: string): number {
  // As Go's ParseFloat, which Prometheus uses: case does not matter (prom-client writes "Nan").
  if (/^\+?inf$/i.test(text)) return Infinity;
  if (/^-inf$/i.test(text)) return -Infinity;
  if (/^nan$/i.test(text)) return NaN;
  const v = Number(text);
  if (Number.isNaN(v)) throw new Error(`bad sample value in: ${line}`);
  return v;
}

function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  LABEL.lastIndex = 0;
  while (LABEL.lastIndex < text.length) {
    const m = LABEL.exec(text);
    if (m === null) throw new Error(`bad labels in: ${line}`);
    labels[m[1]!] = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
  }
  return labels;
}

export function parseExposition(text: string): Exposition {
  const out: Exposition = { samples: [], types: new Map(), help: new Map() };
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      (meta[1] === 'TYPE' ? out.types : out.help).set(meta[2]!, meta[3]!);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = SAMPLE.exec(line);
    if (m === null) throw new Error(`not a sample line: ${line}`);
    out.samples.push({ name: m[1]!, labels: parseLabels(m[2] ?? '', line), value: parseValue(m[3]!, line) });
  }
  return out;
}

/** Samples of `name` whose labels include every pair of `match`. */
export function select(e: Exposition, name: string, match: Record<string, string> = {}): Sample[] {
  return e.samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

/** The one sample of `name` with these labels (throws if there is none or several). */
export function value(e: Exposition, name: string, match: Record<string, string> = {}): number {
  const s = select(e, name, match);
  if (s.length !== 1) throw new Error(`${s.length} samples of ${name} ${JSON.stringify(match)}`);
  return s[0]!.value;
}

/** Sum over the samples of `name` with these labels (0 if none). */
export function sum(e: Exposition, name: string, match: Record<string, string> = {}): number {
  return select(e, name, match).reduce((a, s) => a + s.value, 0);
}

export interface HttpTarget {
  /** Unix socket path, or undefined for TCP. */
  socketPath?: string;
  host?: string;
  port?: number;
}

/** GET path from the endpoint: status, content type and body. */
export function httpGet(target: HttpTarget, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ ...target, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error(`no answer from the metrics endpoint within 5 s`)));
    req.end();
  });
}

/** Scrapes /metrics and parses it (throws unless 200). */
export async function scrape(target: HttpTarget): Promise<Exposition> {
  const r = await httpGet(target, '/metrics');
  if (r.status !== 200) throw new Error(`GET /metrics answered ${r.status}: ${r.body}`);
  return parseExposition(r.body);
}
