// The last part of closing a connection: its native work.
//
// A connection that is closing first waits for its requests to complete
// (at most drainTimeoutMs()). Requests can be abandoned then, but the ops
// the kernel already holds, and BLKDISCARDs on libuv's thread pool, cannot:
// they still write to the disk and into this connection's guest memory. So
// before the Session is destroyed (guest memory unmapped) and the server
// accepts the next frontend, waitForNativeWork() cancels what io_uring can
// cancel and waits for everything else, however long that takes: a stale
// write landing after the next frontend's write to the same block would
// lose that frontend's data silently. Only a daemon that is exiting stops
// waiting (nothing is served after it).

import type { Session } from '../native/binding';
import { log } from '../log';

const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;
const MAX_DRAIN_TIMEOUT_MS = 3_600_000;
/** How often the wait looks at the session's outstanding work. */
const POLL_MS = 10;

/**
 * How long a closing connection waits for in-flight requests before it
 * abandons them: VUBLK_DRAIN_TIMEOUT_MS (an integer 0..3600000; tests
 * shorten it) or 30 s. A bad value is logged and the default used.
 */
export function drainTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.VUBLK_DRAIN_TIMEOUT_MS;
  if (raw === undefined || raw === '') return DEFAULT_DRAIN_TIMEOUT_MS;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > MAX_DRAIN_TIMEOUT_MS) {
    log.warn(`VUBLK_DRAIN_TIMEOUT_MS expects an integer between 0 and ${MAX_DRAIN_TIMEOUT_MS}; using ${DEFAULT_DRAIN_TIMEOUT_MS}`, {
      got: raw,
    });
    return DEFAULT_DRAIN_TIMEOUT_MS;
  }
  return n;
}

/**
 * Whether `wait` settles within ms. The timer is cleared once it does:
 * pending, it would keep whatever `wait` belongs to (a closed connection's
 * arrays, handler, session) reachable for the whole timeout, and a frontend
 * reconnecting in a loop piles them up.
 */
export async function settlesWithin(wait: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const settled = await Promise.race([wait.then(() => true), new Promise<false>((r) => (timer = setTimeout(() => r(false), ms).unref()))]);
  clearTimeout(timer);
  return settled;
}

function total(o: { ioUring: number; threadPool: number; rbd: number }): number {
  return o.ioUring + o.threadPool + o.rbd;
}

/**
 * Resolves once `session` has no native work outstanding. If it has some,
 * calls `abandon` first (so that completions arriving meanwhile start
 * nothing new), logs what it waits for, and asks io_uring to cancel.
 * `exiting()` true ends the wait early (the daemon is shutting down).
 */
export async function waitForNativeWork(session: Session, conn: number, abandon: () => void, exiting: () => boolean): Promise<void> {
  const first = session.outstanding();
  if (total(first) === 0) return;
  abandon();
  const started = Date.now();
  log.warn('waiting for native I/O of the closing connection before serving another', {
    conn,
    ioUring: first.ioUring,
    threadPool: first.threadPool,
    rbd: first.rbd,
  });
  try {
    session.cancelIo();
  } catch (err) {
    // Nothing to undo: without the cancel, the ops simply run to the end.
    log.warn('cannot cancel io_uring ops; waiting for them', { conn, error: err as Error });
  }
  for (;;) {
    const now = session.outstanding();
    if (total(now) === 0) break;
    if (exiting()) {
      log.error('exiting with native I/O outstanding', { conn, ioUring: now.ioUring, threadPool: now.threadPool, rbd: now.rbd });
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  log.info('native I/O of the closing connection finished', { conn, waitedMs: Date.now() - started });
}
