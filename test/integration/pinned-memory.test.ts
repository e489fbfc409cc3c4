// What vublk pins is bounded by --max-pinned-memory. Registering guest memory
// as io_uring fixed buffers faults in and pins every byte the frontend
// announces (as root RLIMIT_MEMLOCK does not bound it), so a frontend with a
// huge sparse memfd would make the daemon allocate all of it. Past the limit
// vublk registers nothing, warns once (naming the option) and serves with
// plain reads and writes; its RSS does not grow by the region's size.

import t from 'tap';
import fs from 'node:fs';
import { BlkStatus } from '../../src/frontend/blk-driver';
import { total } from '../helpers/counters';
import { warnLines } from '../helpers/vublk-process';
import { countersNow } from './align-helpers';
import { connIdSince, connect, pattern, startDaemon, waitConnClosed } from './harness';

const MiB = 1 << 20;
const GiB = 1024 * MiB;
/**
 * Sparse memfds (ftruncate allocates nothing until a page is touched): 64 GiB
 * as 16 regions of 4 GiB, the most the test frontend can map into one
 * ArrayBuffer each.
 */
const REGION = 4 * GiB;
const REGIONS = 16;
const LIMIT = '256M';

function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? NaN) * 1024;
}

t.test(
  `${(REGIONS * REGION) / GiB} GiB of sparse guest memory against --max-pinned-memory ${LIMIT}: nothing pinned, one warning, plain I/O`,
  async (t) => {
    const d = await startDaemon(t, { extraArgs: ['--max-pinned-memory', LIMIT] });
    const pid = d.v.child.pid!; // spawned
    // A first small connection starts the data-plane workers: their heaps
    // are there from then on, and are not guest memory.
    const warmMark = d.v.stderr().length;
    const warm = await connect(t, d);
    const warmConn = await connIdSince(d, warmMark);
    t.equal((await warm.drv.read(0, 0, 4096)).status, BlkStatus.OK, 'a warm-up read');
    warm.fe.close();
    await waitConnClosed(d, warmMark, warmConn);
    const rss0 = rssBytes(pid);
    const mark = d.v.stderr().length;
    const { drv } = await connect(t, d, { memory: { regions: Array<number>(REGIONS).fill(REGION) } });
    const conn = await connIdSince(d, mark);

    for (let i = 0; i < 4; i++) {
      const data = pattern(65536, 40 + i);
      const sector = 2048 + i * 256;
      const w = await drv.write(0, sector, data, { layout: '3desc', align: 4096 });
      const r = await drv.read(0, sector, data.length, { layout: '3desc', align: 4096 });
      t.ok(w.status === BlkStatus.OK && r.status === BlkStatus.OK && r.data.equals(data), `64 KiB write and read back at sector ${sector}`);
    }
    const c = total(await countersNow(d.v, conn, 1));
    t.equal(c.fixedOps, 0, `no fixed op (fixedOps=${c.fixedOps})`);
    t.equal(c.plainOps, 8, 'every op plain');
    const grew = rssBytes(pid) - rss0;
    t.ok(grew < 128 * MiB, `the daemon's RSS grew by ${Math.round(grew / MiB)} MiB, far less than guest memory`);
    const warns = warnLines(d.v, mark);
    t.equal(warns.length, 1, `one warning:\n${warns.join('\n')}`);
    t.match(warns[0] ?? '', /--max-pinned-memory/, 'it names the option');
    t.match(warns[0] ?? '', new RegExp(`conn=${conn}( |$)`), 'and the connection');
  },
);
