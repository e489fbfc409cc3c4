// How many submission entries a connection's io_uring gets.
//
// The wish is one per descriptor of every queue (capped), so a full set of
// rings fits one submission. But the kernel charges the rings' memory to
// RLIMIT_MEMLOCK for a process without CAP_IPC_LOCK (an unprivileged service
// with the old 64 KiB default): 1024 entries with their 4096-entry completion
// queue need more than that, and refusing the whole connection for it would
// be wrong. A smaller ring is only slower: a batch that does not fit is
// submitted in parts, and completions past the completion queue wait in the
// kernel's overflow list. So on ENOMEM the ring is halved down to a floor.

import { log } from '../log';

export const URING_ENTRIES_MAX = 4096;
/** The smallest ring tried before the connection is refused. */
export const URING_ENTRIES_MIN = 16;

/** The entries wished for: queues × ring size, as a power of two, at most URING_ENTRIES_MAX. */
export function wantedUringEntries(queues: number, queueSize: number): number {
  let p = 1;
  while (p < queues * queueSize && p < URING_ENTRIES_MAX) p *= 2;
  return p;
}

/**
 * Calls make(entries) with the wished-for size and, while the kernel says
 * ENOMEM, with half of it, down to URING_ENTRIES_MIN; other errors and the
 * last ENOMEM are thrown. A ring smaller than wished is logged once (info).
 */
export function withUringEntries<T>(wanted: number, conn: number, make: (entries: number) => T): T {
  for (let entries = wanted; ; entries /= 2) {
    try {
      const made = make(entries);
      if (entries < wanted) {
        log.info('io_uring ring made smaller than wished: the kernel refused the larger one (RLIMIT_MEMLOCK?)', {
          conn,
          entries,
          wanted,
        });
      }
      return made;
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOMEM' || entries / 2 < URING_ENTRIES_MIN) throw err;
    }
  }
}
