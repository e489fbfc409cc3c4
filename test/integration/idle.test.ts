// An idle disk costs no CPU: after a burst of I/O has made a data-plane
// worker poll, the worker stops polling once requests stop coming and
// sleeps on its eventfds. A worker left spinning would burn a whole core.

import t from 'tap';
import fs from 'node:fs';
import { BlkStatus } from '../../src/frontend/blk-driver';
import { connect, startDaemon } from './harness';

/** utime + stime of the process in clock ticks (/proc/PID/stat fields 14, 15). */
function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

const TICKS_PER_S = 100; // USER_HZ on Linux
const IDLE_S = 3;

t.test('an idle daemon sleeps: its CPU time stays flat with no I/O', async (t) => {
  const d = await startDaemon(t, { queues: 2, extraArgs: ['--workers', '2', '--poll-max-us', '100000'] });
  const { drv } = await connect(t, d, { queues: 2 });
  // A burst on both queues: the workers poll between batches.
  const burstEnd = Date.now() + 1000;
  let done = 0;
  while (Date.now() < burstEnd) {
    const rs = await Promise.all(Array.from({ length: 16 }, (_, i) => drv.read(i % 2, (i * 8) % 4096, 4096)));
    done += rs.filter((r) => r.status === BlkStatus.OK).length;
  }
  t.ok(done > 0, `the burst completed ${done} reads`);
  await new Promise((resolve) => setTimeout(resolve, 500)); // the poll bound adapts down to 0
  const pid = d.v.child.pid as number;
  const before = cpuTicks(pid);
  await new Promise((resolve) => setTimeout(resolve, IDLE_S * 1000));
  const used = (cpuTicks(pid) - before) / TICKS_PER_S / IDLE_S;
  // A polling worker would use ~100 % of a core; an asleep daemon ~0.
  t.ok(used < 0.05, `the daemon used ${(used * 100).toFixed(1)} % of a core over ${IDLE_S} s idle (< 5 %)`);
});
