// A NOTIFY_SOCKET for tests: a unix datagram socket (node has none, so a
// small python3 process) that records each sd_notify message with the time
// it arrived.

import type { Test } from 'tap';
import { spawn } from 'node:child_process';

const LISTENER = `
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = sys.argv[1]
s.bind("\\0" + addr[1:] if addr.startswith("@") else addr)
print(json.dumps({"ready": True}), flush=True)
while True:
    d = s.recv(65536)
    print(json.dumps({"t": time.monotonic(), "msg": d.decode()}), flush=True)
`;

export interface Notification {
  /** Arrival time in seconds (monotonic). */
  t: number;
  /** The datagram: newline-separated KEY=VALUE lines. */
  msg: string;
}

export interface NotifyListener {
  /** The value for NOTIFY_SOCKET. */
  address: string;
  messages: Notification[];
  /** Resolves with the first message (from index `from`) containing `line`. */
  waitFor(line: string | RegExp, from?: number, timeoutMs?: number): Promise<Notification>;
  /** Messages from index `from` with this line among theirs. */
  withLine(line: string, from?: number): Notification[];
}

function hasLine(n: Notification, line: string | RegExp): boolean {
  return n.msg.split('\n').some((l) => (typeof line === 'string' ? l === line : line.test(l)));
}

/** Listens on address (a path, or "@name" for an abstract socket); teardown stops it. */
export async function notifyListener(t: Test, address: string): Promise<NotifyListener> {
  const child = spawn('python3', ['-c', LISTENER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const messages: Notification[] = [];
  let buffered = '';
  let ready: () => void = () => {};
  const isReady = new Promise<void>((resolve, reject) => {
    ready = resolve;
    child.on('exit', (code) => reject(new Error(`notify listener exited (${code})`)));
  });
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    buffered += d.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const l of lines) {
      const j = JSON.parse(l) as { ready?: boolean } & Notification;
      if (j.ready) ready();
      else messages.push({ t: j.t, msg: j.msg });
    }
    for (const w of [...waiters]) w();
  });
  await isReady;
  const l: NotifyListener = {
    address,
    messages,
    withLine: (line, from = 0) => messages.slice(from).filter((n) => hasLine(n, line)),
    waitFor(line, from = 0, timeoutMs = 15000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const n = messages.slice(from).find((m) => hasLine(m, line));
          if (n === undefined) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(n);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no notification with ${line} within ${timeoutMs} ms; got ${JSON.stringify(messages.map((m) => m.msg))}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
  return l;
}
