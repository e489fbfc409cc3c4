// Disk operations a daemon has in flight, read from its io_uring fdinfo: the
// moment to kill it mid-I/O in the crash and reconnect tests.
import * as fs from 'node:fs';

/**
 * Sum over the process's io_uring instances of SqHead - CqTail (SQEs the
 * kernel consumed minus CQEs it posted): disk operations in flight. Best effort.
 */
export function uringInflight(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    let n = 0;
    let rings = 0;
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      let target: string;
      try {
        target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (!target.includes('io_uring')) continue;
      const info = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      const sq = /^SqHead:\s*(\d+)/m.exec(info);
      const cq = /^CqTail:\s*(\d+)/m.exec(info);
      if (!sq || !cq) return undefined;
      n += (Number(sq[1]) - Number(cq[1])) >>> 0;
      rings++;
    }
    return rings > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Polls uringInflight(pid) until it is > 0 or maxMs have passed: the moment
 * to kill a daemon that has disk I/O in flight. `inflight` is the last value
 * read (undefined: not readable), busyWaitMs how long that took.
 */
export async function untilUringBusy(
  pid: number | undefined,
  maxMs: number,
): Promise<{ inflight: number | undefined; busyWaitMs: number }> {
  const t0 = Date.now();
  let inflight = uringInflight(pid);
  while (inflight === 0 && Date.now() - t0 < maxMs) {
    await new Promise((r) => setTimeout(r, 1));
    inflight = uringInflight(pid);
  }
  return { inflight, busyWaitMs: Date.now() - t0 };
}
