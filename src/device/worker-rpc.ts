// Calls from the main thread into a data-plane worker thread.
//
// Synchronous calls keep VhostUserDataPlane synchronous where it is today:
// the main thread posts {id, method, args} on the call port, then sleeps in
// Atomics.wait on a one-word SharedArrayBuffer until the worker has posted its
// reply on the same channel and flipped the word; it reads the reply with
// receiveMessageOnPort (nothing listens on that port, so the reply waits in
// its queue). The worker never waits for the main thread, so this cannot
// deadlock; a worker that does not answer within SYNC_TIMEOUT_MS is an
// internal error for its connection (thrown like any data-plane error).
//
// Asynchronous calls (quiesce, drainVring, drain) go the same way in (calls
// stay ordered) and their replies come back on the worker's parentPort, with
// the events the worker raises (violations, log-worthy news).

import { MessageChannel, receiveMessageOnPort, parentPort, type MessagePort, type Worker } from 'node:worker_threads';

/** How long a synchronous call waits for the worker before it gives up. */
export const SYNC_TIMEOUT_MS = 5_000;

interface Call {
  id: number;
  method: string;
  args: unknown[];
  async: boolean;
}

interface Reply {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: string;
}

/** What the worker end of an RpcClient needs (passed in workerData; port transferred). */
export interface RpcEnd {
  port: MessagePort;
  signal: SharedArrayBuffer;
}

/** An event a worker posts to the main thread (anything on parentPort that is not a reply). */
export interface WorkerEvent {
  event: string;
  [k: string]: unknown;
}

export class RpcClient {
  private readonly port: MessagePort;
  private readonly signal: Int32Array;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private deadReason: string | undefined;
  /** The worker's end, to post in workerData with its port in the transfer list. */
  readonly end: RpcEnd;

  constructor(private readonly label: string) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const signal = new SharedArrayBuffer(4);
    this.signal = new Int32Array(signal);
    this.end = { port: port2, signal };
  }

  /** Wires the worker's parentPort messages: replies to async calls, and events for onEvent. */
  attach(worker: Worker, onEvent: (e: WorkerEvent) => void): void {
    worker.on('message', (m: Reply | WorkerEvent) => {
      if ('id' in m && typeof m.id === 'number') this.settle(m as Reply);
      else onEvent(m as WorkerEvent);
    });
  }

  /** The worker is gone: every call from now on, and every one pending, fails with reason. */
  dead(reason: string): void {
    this.deadReason ??= reason;
    for (const [, p] of this.pending) p.reject(new Error(this.deadReason));
    this.pending.clear();
    this.port.close();
  }

  /** The worker is gone, or stopped answering: no call reaches it any more. */
  get isDead(): boolean {
    return this.deadReason !== undefined;
  }

  /** Calls method in the worker and waits for its answer; rethrows its error as Error(message). */
  call(method: string, ...args: unknown[]): unknown {
    return this.callWithin(SYNC_TIMEOUT_MS, method, ...args);
  }

  /**
   * call() with its own bound: a worker that does not answer in time is
   * dead from then on (its late reply would answer the next call).
   */
  callWithin(timeoutMs: number, method: string, ...args: unknown[]): unknown {
    if (this.deadReason !== undefined) throw new Error(this.deadReason);
    const id = this.nextId++;
    Atomics.store(this.signal, 0, 0);
    this.port.postMessage({ id, method, args, async: false } satisfies Call);
    if (Atomics.wait(this.signal, 0, 0, timeoutMs) === 'timed-out') {
      const reason = `internal error: ${this.label} did not answer ${method} within ${timeoutMs} ms`;
      this.dead(reason);
      throw new Error(reason);
    }
    const got = receiveMessageOnPort(this.port);
    const reply = got?.message as Reply | undefined;
    if (reply?.id !== id) throw new Error(`internal error: ${this.label} answered ${method} out of turn`);
    if (!reply.ok) throw new Error(reply.error);
    return reply.value;
  }

  /** Calls an async method in the worker. */
  callAsync(method: string, ...args: unknown[]): Promise<unknown> {
    if (this.deadReason !== undefined) return Promise.reject(new Error(this.deadReason));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.port.postMessage({ id, method, args, async: true } satisfies Call);
    });
  }

  private settle(r: Reply): void {
    const p = this.pending.get(r.id);
    if (p === undefined) return;
    this.pending.delete(r.id);
    if (r.ok) p.resolve(r.value);
    else p.reject(new Error(r.error));
  }
}

/** Worker side: runs the calls arriving on end.port against target's methods. */
export function serveRpc(end: RpcEnd, target: Record<string, (...args: never[]) => unknown>): void {
  const signal = new Int32Array(end.signal);
  const parent = parentPort;
  if (parent === null) throw new Error('serveRpc runs in a worker thread');
  end.port.on('message', (c: Call) => {
    const fn = Object.hasOwn(target, c.method) ? target[c.method] : undefined;
    if (!c.async) {
      end.port.postMessage(run(c.id, () => invoke(fn, c)));
      Atomics.store(signal, 0, 1);
      Atomics.notify(signal, 0);
      return;
    }
    Promise.resolve()
      .then(() => invoke(fn, c))
      .then(
        (value) => parent.postMessage({ id: c.id, ok: true, value } satisfies Reply),
        (err: unknown) => parent.postMessage({ id: c.id, ok: false, error: messageOf(err) } satisfies Reply),
      );
  });
}

function invoke(fn: ((...args: never[]) => unknown) | undefined, c: Call): unknown {
  if (fn === undefined) throw new Error(`internal error: no data-plane method ${c.method}`);
  return fn(...(c.args as never[]));
}

function run(id: number, fn: () => unknown): Reply {
  try {
    return { id, ok: true, value: fn() };
  } catch (err) {
    return { id, ok: false, error: messageOf(err) };
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
