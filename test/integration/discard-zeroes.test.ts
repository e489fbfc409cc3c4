// DISCARD and WRITE_ZEROES end to end: a real vublk, the in-repo front-end,
// a 512-byte guest, on four kinds of host disk:
//
//   image file     a pre-filled file on the test machine's /tmp (ext4)
//   512 loop       a loop device with 512-byte sectors and direct I/O (root)
//   4Kn loop       a loop device with 4096-byte sectors and direct I/O, served
//                  with --logical-block-size 512: every unaligned range is a
//                  head | aligned middle | tail split (root)
//   tmpfs image    a file on a tmpfs mounted for the test: no ZERO_RANGE there,
//                  so the daemon must fall back to writing zeroes (root)
//
// Every case checks the data the guest reads back AND the host's bytes (read
// with O_DIRECT) against a model of the whole disk. DISCARD leaves its range
// undefined (VIRTIO 1.2 5.2.6.2), so the model marks it unknown: there only
// "the guest reads what the host holds" is checked, and the neighbours must
// be intact. WRITE_ZEROES ranges must read back as zeroes (seed:
// write-zeroes-unaligned).
//
// Per host: features and config limits; WRITE_ZEROES over odd ranges with and
// without UNMAP; DISCARD over odd ranges; the file's allocated blocks shrink
// after a large DISCARD and after WRITE_ZEROES with UNMAP (file hosts);
// multi-segment requests up to max_*_seg, in every descriptor layout; lists
// with a bad segment fail whole (IOERR / UNSUPP) with nothing done; and, on
// the 4Kn loop, WRITE_ZEROES racing writes to other sectors of the same 4 KiB
// host block from both queues. Separately: a read-only disk, and the max
// sectors limit on a sparse image larger than it.
//
// Root-only hosts are skipped when not root (failed when CI is set).
// VUBLK_TEST_SEED repeats a run's random placement and data.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import {
  asanEnabled,
  runsAsanAddon,
  startVublk,
  stopCleanly,
  teardownDaemon,
  tmpDir,
  warnLines,
  type VublkProcess,
} from '../helpers/vublk-process';
import { attachLoop, sysBlockNumber, type LoopDevice } from '../helpers/loop-device';
import { total } from '../helpers/counters';
import { Frontend } from '../../src/frontend/frontend';
import { VirtioFeature } from '../../src/frontend/features';
import { Request } from '../../src/vhost-user/protocol';
import { encodeConfigPayload } from '../../src/vhost-user/encode';
import { CFG_WRITEBACK } from '../../src/blk/config-space';
import {
  BlkDriver,
  BlkStatus,
  BlkType,
  SECTOR_SIZE,
  parseBlkConfig,
  type BlkConfig,
  type BlkResult,
  type Layout,
  type BlkRequest,
} from '../../src/frontend/blk-driver';
import { prng } from '../helpers/prng';
import { closeAndCount, connIdAfter, countersNow, readDirect, requirements } from './align-helpers';
import { DiskModel, fastPattern, firstSectorDiff, fsType, mountTmpfs, segmentList, type RawSegment, type Tmpfs } from './dz-helpers';

const SEED = Number(process.env.VUBLK_TEST_SEED ?? Date.now() % 1_000_000);
const DISK_BYTES = 32 << 20;
const SECTORS = DISK_BYTES / SECTOR_SIZE;
/** Guest sectors per 4 KiB: the unit odd ranges are placed around. */
const SPB = 8;
const QUEUES = 2;
const QUEUE_SIZE = 256;
const U64_MAX = (1n << 64n) - 1n;
const { OK, IOERR, UNSUPP } = BlkStatus;
const { DISCARD, WRITE_ZEROES: WZ } = BlkType;

const rootSkip = requirements({ root: true, commands: ['losetup', 'blockdev', 'dd', 'mount', 'umount'] });
const fileSkip = requirements({ commands: ['dd'] });

t.comment(`seed ${SEED} (set VUBLK_TEST_SEED to repeat)`);
// About 20 s here; the ASan daemon is slower.
t.setTimeout(5 * 60 * 1000);

function statusName(s: number): string {
  return s === OK ? 'OK' : s === IOERR ? 'IOERR' : s === UNSUPP ? 'UNSUPP' : `0x${s.toString(16)}`;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

// ------------------------------------------------------------ hosts

interface Host {
  /** What vublk opens. */
  disk: string;
  /** What host bytes are read from (O_DIRECT). */
  target: string;
  /** The image file whose allocated blocks are checked (file hosts). */
  image?: string;
  /** Block device: its queue's discard limits. */
  block?: { dev: string; discardMaxBytes: number; discardGranularity: number };
  cleanup(): void;
}

interface HostSpec {
  name: string;
  skip: string | false;
  /** offsetAlign the daemon must find, when the host fixes it. */
  offsetAlign?: number;
  /** Where ZERO_RANGE is refused and zeroes must be written instead. */
  noZeroRange?: boolean;
  /** Run the same-block race (4Kn). */
  race?: boolean;
  make(dir: string, content: Buffer): Host;
}

function loopHost(sectorSize: number) {
  return (dir: string, content: Buffer): Host => {
    const file = path.join(dir, 'backing.img');
    fs.writeFileSync(file, content);
    const loop: LoopDevice = attachLoop(file, sectorSize);
    return {
      disk: loop.dev,
      target: loop.dev,
      block: {
        dev: loop.dev,
        discardMaxBytes: sysBlockNumber(loop.dev, 'queue/discard_max_bytes'),
        discardGranularity: sysBlockNumber(loop.dev, 'queue/discard_granularity'),
      },
      cleanup: () => loop.detach(),
    };
  };
}

const HOSTS: HostSpec[] = [
  {
    name: 'image file (/tmp)',
    skip: fileSkip,
    make(dir, content) {
      const image = path.join(dir, 'disk.img');
      fs.writeFileSync(image, content);
      return { disk: image, target: image, image, cleanup: () => undefined };
    },
  },
  { name: '512-byte loop device', skip: rootSkip, offsetAlign: 512, make: loopHost(512) },
  { name: '4Kn loop device, 512-byte guest', skip: rootSkip, offsetAlign: 4096, race: true, make: loopHost(4096) },
  {
    name: 'image on tmpfs',
    skip: rootSkip,
    noZeroRange: true,
    make(dir, content) {
      const mnt = path.join(dir, 'tmpfs');
      fs.mkdirSync(mnt);
      const m: Tmpfs = mountTmpfs(mnt, DISK_BYTES + (16 << 20));
      try {
        const type = fsType(mnt);
        if (type !== 'tmpfs') throw new Error(`${mnt} is ${type}, not tmpfs`);
        const image = path.join(mnt, 'disk.img');
        fs.writeFileSync(image, content);
        return { disk: image, target: image, image, cleanup: () => m.unmount() };
      } catch (err) {
        m.unmount();
        throw err;
      }
    },
  },
];

// ------------------------------------------------------------ one host

HOSTS.forEach((spec, hostIndex) => {
  t.test(`host: ${spec.name}`, { skip: spec.skip }, async (t) => {
    const seed = SEED + hostIndex * 1000;
    const rand = prng(seed);
    const dir = tmpDir('vublk-dz-');
    const socket = path.join(dir, 'vublk.sock');
    const model = new DiskModel(fastPattern(DISK_BYTES, seed));
    let host: Host | undefined;
    let v: VublkProcess | undefined;
    let fe: Frontend | undefined;
    t.teardown(async () => {
      try {
        fe?.close();
        if (v) await stopCleanly(v);
      } finally {
        try {
          host?.cleanup();
        } finally {
          fs.rmSync(dir, { recursive: true, force: true });
        }
      }
    });
    host = spec.make(dir, model.bytes);
    const h = host;
    try {
      v = await startVublk([
        '--disk',
        h.disk,
        '--socket',
        socket,
        '--queues',
        String(QUEUES),
        '--queue-size',
        String(QUEUE_SIZE),
        '--logical-block-size',
        '512',
      ]);
    } catch (err) {
      throw new Error(`vublk refused ${spec.name} (${h.disk}): ${(err as Error).message}`);
    }
    const daemon = v;
    const dioLine = await daemon.waitForLog(/^vublk: info: host disk direct I\/O /);
    const offsetAlign = Number(/ offsetAlign=(\d+)/.exec(dioLine)?.[1]);
    t.comment(`${h.disk}: ${dioLine}`);
    if (asanEnabled()) t.ok(runsAsanAddon(daemon.child.pid!), 'the daemon runs the ASan addon'); // spawned
    if (spec.offsetAlign !== undefined) t.equal(offsetAlign, spec.offsetAlign, `the daemon found offsetAlign=${spec.offsetAlign}`);
    const hostSectors = offsetAlign / SECTOR_SIZE;

    const mark = daemon.stderr().length;
    fe = await Frontend.connect(socket, { timeoutMs: 20000 });
    const conn = await connIdAfter(daemon, mark);
    await fe.setup({ queues: QUEUES, queueSize: QUEUE_SIZE });
    const front = fe;
    const drv = new BlkDriver(front);
    const cfg: BlkConfig = parseBlkConfig(front.config!); // CONFIG is negotiated
    /** Requests this test expects to fail (the daemon's errors counter must agree). */
    let expectedErrors = 0;
    let nextQ = 0;
    const q = (): number => nextQ++ % QUEUES;

    // -------------------------------------------------------- checks

    const expectStatus = (t: Test, r: BlkResult, want: number, what: string): void => {
      t.same(
        { status: statusName(r.status), usedLen: r.usedLen },
        { status: statusName(want), usedLen: 1 },
        `${what}: ${statusName(want)}`,
      );
      if (want !== OK) expectedErrors++;
    };

    /** Guest reads and host bytes of sectors [lo, hi) both match the model, and each other. */
    const verify = async (t: Test, lo: number, hi: number, what: string): Promise<Buffer> => {
      lo = Math.max(0, lo);
      hi = Math.min(SECTORS, hi);
      const parts: Buffer[] = [];
      const CHUNK = 8192; // sectors (4 MiB)
      for (let s = lo; s < hi; s += CHUNK) {
        const n = Math.min(CHUNK, hi - s);
        const r = await drv.read(q(), s, n * SECTOR_SIZE);
        if (r.status !== OK) {
          t.fail(`${what}: read of sectors [${s}, ${s + n}) failed with ${statusName(r.status)}`);
          return Buffer.alloc(0);
        }
        parts.push(r.data);
      }
      const guest = Buffer.concat(parts);
      const hostBytes = readDirect(h.target, lo * SECTOR_SIZE, (hi - lo) * SECTOR_SIZE);
      const g = model.diff(guest, lo);
      const hd = model.diff(hostBytes, lo);
      const gh = firstSectorDiff(guest, hostBytes);
      t.ok(g === null, `${what}: the guest reads the model over [${lo}, ${hi})${g === null ? '' : `: ${g}`}`);
      t.ok(hd === null, `${what}: the host holds the model over [${lo}, ${hi})${hd === null ? '' : `: ${hd}`}`);
      t.ok(gh < 0, `${what}: the guest reads what the host holds${gh < 0 ? '' : ` (sector ${lo + gh} differs)`}`);
      return guest;
    };

    /** Writes fresh random data over sectors [lo, hi) (the neighbours a case checks). */
    const fresh = async (lo: number, hi: number): Promise<void> => {
      lo = Math.max(0, lo);
      hi = Math.min(SECTORS, hi);
      const CHUNK = 2048; // sectors (1 MiB)
      const reqs: BlkRequest[] = [];
      for (let s = lo; s < hi; s += CHUNK) {
        const n = Math.min(CHUNK, hi - s);
        const data = fastPattern(n * SECTOR_SIZE, Math.floor(rand() * 2 ** 31));
        reqs.push({ q: q(), type: BlkType.OUT, sector: s, data });
        model.write(s, data);
      }
      const rs = await Promise.all(drv.submitBatch(reqs));
      const bad = rs.filter((r) => r.status !== OK);
      if (bad.length > 0) throw new Error(`fresh data over [${lo}, ${hi}): ${bad.length} writes failed`);
    };

    /** A 4 KiB-aligned place for `len` sectors in [1 MiB, 30 MiB) of the disk. */
    const place = (len: number): number => {
      const lo = (1 << 20) / SECTOR_SIZE;
      const hi = (30 << 20) / SECTOR_SIZE - len - 4 * SPB;
      return lo + Math.floor(rand() * ((hi - lo) / SPB)) * SPB;
    };

    /** Sends a raw segment list and checks it failed with `want` and changed nothing in [lo, hi). */
    const refused = async (
      t: Test,
      type: number,
      list: Buffer | null,
      want: number,
      lo: number,
      hi: number,
      what: string,
      layout?: Layout,
    ): Promise<void> => {
      const r = list === null ? await drv.raw(q(), type, 0, []) : await drv.request({ q: q(), type, sector: 0, data: list, layout });
      expectStatus(t, r, want, what);
      await verify(t, lo, hi, `${what}: nothing changed`);
    };

    // -------------------------------------------------------- cases

    t.test('DISCARD and WRITE_ZEROES are offered, with consistent limits', async (t) => {
      t.ok(front.hasFeature(VirtioFeature.BLK_DISCARD), 'VIRTIO_BLK_F_DISCARD offered and negotiated');
      t.ok(front.hasFeature(VirtioFeature.BLK_WRITE_ZEROES), 'VIRTIO_BLK_F_WRITE_ZEROES offered and negotiated');
      t.equal(cfg.blkSize, 512, 'blk_size 512');
      t.equal(cfg.capacity, BigInt(SECTORS), 'capacity');
      t.comment(
        `max_discard_sectors=${cfg.maxDiscardSectors} max_discard_seg=${cfg.maxDiscardSeg} discard_sector_alignment=${cfg.discardSectorAlignment} ` +
          `max_write_zeroes_sectors=${cfg.maxWriteZeroesSectors} max_write_zeroes_seg=${cfg.maxWriteZeroesSeg} write_zeroes_may_unmap=${cfg.writeZeroesMayUnmap}`,
      );
      const lbsSectors = cfg.blkSize / SECTOR_SIZE;
      t.ok(cfg.maxDiscardSectors > 0, 'max_discard_sectors > 0');
      t.ok(cfg.maxDiscardSeg > 0, 'max_discard_seg > 0');
      t.ok(cfg.discardSectorAlignment > 0, 'discard_sector_alignment > 0');
      t.ok(cfg.maxWriteZeroesSectors > 0, 'max_write_zeroes_sectors > 0');
      t.ok(cfg.maxWriteZeroesSeg > 0, 'max_write_zeroes_seg > 0');
      t.equal(cfg.discardSectorAlignment % hostSectors, 0, `discard_sector_alignment is whole host blocks (${hostSectors} sectors)`);
      t.equal(cfg.discardSectorAlignment % lbsSectors, 0, 'discard_sector_alignment is whole logical blocks');
      t.equal(cfg.maxDiscardSectors % cfg.discardSectorAlignment, 0, 'max_discard_sectors is a multiple of discard_sector_alignment');
      t.equal(cfg.maxWriteZeroesSectors % hostSectors, 0, 'max_write_zeroes_sectors is whole host blocks');
      t.equal(cfg.maxWriteZeroesSectors % lbsSectors, 0, 'max_write_zeroes_sectors is whole logical blocks');
      t.ok(cfg.writeZeroesMayUnmap === 0 || cfg.writeZeroesMayUnmap === 1, 'write_zeroes_may_unmap is 0 or 1');
      if (h.block) {
        const b = h.block;
        t.comment(`${b.dev}: discard_max_bytes=${b.discardMaxBytes} discard_granularity=${b.discardGranularity}`);
        t.ok(cfg.maxDiscardSectors * SECTOR_SIZE <= b.discardMaxBytes, 'max_discard_sectors is within the device queue discard_max_bytes');
        t.equal(
          (cfg.discardSectorAlignment * SECTOR_SIZE) % Math.max(b.discardGranularity, 1),
          0,
          'discard_sector_alignment is whole discard granules of the device',
        );
        t.equal(cfg.writeZeroesMayUnmap, b.discardMaxBytes > 0 ? 1 : 0, 'write_zeroes_may_unmap as the device discards');
      } else {
        const st = fs.statSync(h.image!); // file hosts have an image
        t.equal(
          (cfg.discardSectorAlignment * SECTOR_SIZE) % st.blksize,
          0,
          `discard_sector_alignment is whole file system blocks (${st.blksize})`,
        );
        t.equal(cfg.writeZeroesMayUnmap, 1, 'write_zeroes_may_unmap: the file system punches holes');
      }
    });

    const SHAPES: [number, number][] = [
      [0, 1],
      [1, 1],
      [7, 1],
      [3, 2],
      [1, 6],
      [7, 2],
      [5, 9],
      [3, 17],
      [0, 8],
      [0, 16],
      [1, 63],
      [6, 130],
      [2, 255],
      [0, 2048],
      [1, 4095],
      [3, 8197],
    ];
    /** Ranges against the ends of the disk. */
    const EDGES: [number, number][] = [
      [0, 3],
      [0, 9],
      [SECTORS - 1, 1],
      [SECTORS - 5, 5],
      [SECTORS - 8 - 3, 11],
      [SECTORS - 4101, 4101],
    ];

    t.test('WRITE_ZEROES over odd ranges reads back as zeroes, neighbours intact', async (t) => {
      const cases: { sector: number; len: number; unmap: boolean }[] = [];
      for (const unmap of [false, true]) {
        for (const [off, len] of SHAPES) cases.push({ sector: place(len) + off, len, unmap });
        for (const [sector, len] of EDGES) cases.push({ sector, len, unmap });
      }
      for (const { sector, len, unmap } of cases) {
        const what = `WRITE_ZEROES${unmap ? '+UNMAP' : ''} [${sector}, +${len})`;
        const lo = Math.floor(sector / SPB) * SPB - 2 * SPB;
        const hi = Math.ceil((sector + len) / SPB) * SPB + 2 * SPB;
        await fresh(lo, hi);
        const r = await drv.writeZeroes(q(), sector, len, unmap);
        expectStatus(t, r, OK, what);
        model.zero(sector, len);
        const guest = await verify(t, lo - SPB, hi + SPB, what);
        const from = (sector - Math.max(0, lo - SPB)) * SECTOR_SIZE;
        t.ok(guest.length > 0 && isZero(guest.subarray(from, from + len * SECTOR_SIZE)), `${what}: the range reads back as zeroes`);
      }
    });

    t.test('DISCARD over odd ranges leaves the neighbours intact', async (t) => {
      const cases: [number, number][] = [...SHAPES.map(([off, len]): [number, number] => [place(len) + off, len]), ...EDGES];
      for (const [sector, len] of cases) {
        const what = `DISCARD [${sector}, +${len})`;
        const lo = Math.floor(sector / SPB) * SPB - 2 * SPB;
        const hi = Math.ceil((sector + len) / SPB) * SPB + 2 * SPB;
        await fresh(lo, hi);
        const r = await drv.discard(q(), sector, len);
        expectStatus(t, r, OK, what);
        model.discard(sector, len);
        await verify(t, lo - SPB, hi + SPB, what);
      }
      // Discarded sectors take writes again like any others.
      const s = place(64) + 3;
      await fresh(s, s + 64);
      t.equal(await drv.discard(q(), s, 64).then((r) => r.status), OK, 'DISCARD 64 sectors');
      model.discard(s, 64);
      await fresh(s + 10, s + 20);
      await verify(t, s - SPB, s + 64 + SPB, 'a write after a DISCARD reads back');
    });

    if (h.image !== undefined) {
      const image = h.image;
      t.test('the image file shrinks after a large DISCARD and after WRITE_ZEROES with UNMAP', async (t) => {
        const base = (24 << 20) / SECTOR_SIZE;
        const n = (4 << 20) / SECTOR_SIZE;
        await fresh(base, base + n);
        const b0 = fs.statSync(image).blocks;
        expectStatus(t, await drv.discard(q(), base, n), OK, 'DISCARD of 4 MiB');
        model.discard(base, n);
        const b1 = fs.statSync(image).blocks;
        t.ok(b0 - b1 >= n * 0.9, `st_blocks fell by ${b0 - b1} (from ${b0} to ${b1}), at least 90% of the ${n} discarded sectors`);
        await verify(t, base - SPB, base + n + SPB, 'after the DISCARD');

        await fresh(base, base + n);
        const b2 = fs.statSync(image).blocks;
        t.ok(b2 - b1 >= n * 0.9, `writing it again allocates (st_blocks ${b1} -> ${b2})`);
        expectStatus(t, await drv.writeZeroes(q(), base + 3, n - 6, true), OK, 'WRITE_ZEROES+UNMAP of 4 MiB less 3 sectors each end');
        model.zero(base + 3, n - 6);
        const b3 = fs.statSync(image).blocks;
        t.ok(b2 - b3 >= (n - 2 * SPB) * 0.9, `st_blocks fell by ${b2 - b3} (from ${b2} to ${b3})`);
        const guest = await verify(t, base - SPB, base + n + SPB, 'after the WRITE_ZEROES+UNMAP');
        t.ok(isZero(guest.subarray((SPB + 3) * SECTOR_SIZE, (SPB + n - 3) * SECTOR_SIZE)), 'and it reads back as zeroes');
      });
    }

    t.test('multi-segment requests', async (t) => {
      const maxWz = cfg.maxWriteZeroesSeg;
      const maxDiscard = cfg.maxDiscardSeg;
      t.ok(maxWz >= 2 && maxDiscard >= 2, `several segments per request (write zeroes ${maxWz}, discard ${maxDiscard})`);

      // Five odd ranges, UNMAP mixed, one request.
      {
        const base = place(320);
        const segs = [
          { sector: base + 1, sectors: 3, unmap: false },
          { sector: base + 13, sectors: 9, unmap: true },
          { sector: base + 40, sectors: 17, unmap: false },
          { sector: base + 100, sectors: 64, unmap: true },
          { sector: base + 200, sectors: 1, unmap: false },
        ];
        await fresh(base - SPB, base + 320);
        expectStatus(t, await drv.ranges(q(), WZ, segs), OK, 'WRITE_ZEROES of 5 ranges');
        for (const s of segs) model.zero(s.sector, s.sectors);
        await verify(t, base - 2 * SPB, base + 330, 'WRITE_ZEROES of 5 ranges');
      }
      // Overlapping ranges in one request.
      {
        const base = place(64);
        const segs = [
          { sector: base + 1, sectors: 20 },
          { sector: base + 10, sectors: 20, unmap: true },
          { sector: base + 5, sectors: 3 },
        ];
        await fresh(base - SPB, base + 64);
        expectStatus(t, await drv.ranges(q(), WZ, segs), OK, 'WRITE_ZEROES of 3 overlapping ranges');
        for (const s of segs) model.zero(s.sector, s.sectors);
        await verify(t, base - 2 * SPB, base + 72, 'WRITE_ZEROES of overlapping ranges');
      }
      // Four one-sector segments inside one 4 KiB block, and two that share a
      // block boundary: each is its own head/tail read-modify-write of the
      // same host block, one after the other, in one request.
      {
        const base = place(32);
        const segs = [
          { sector: base + 0, sectors: 1 },
          { sector: base + 2, sectors: 1, unmap: true },
          { sector: base + 4, sectors: 1 },
          { sector: base + 6, sectors: 1, unmap: true },
          { sector: base + 15, sectors: 2 },
          { sector: base + 17, sectors: 1, unmap: true },
        ];
        await fresh(base - SPB, base + 4 * SPB);
        expectStatus(t, await drv.ranges(q(), WZ, segs), OK, 'WRITE_ZEROES of 6 ranges sharing host blocks');
        for (const s of segs) model.zero(s.sector, s.sectors);
        await verify(t, base - 2 * SPB, base + 5 * SPB, 'WRITE_ZEROES of ranges sharing host blocks');
      }
      // max_write_zeroes_seg and max_discard_seg segments, in every layout.
      const many = (n: number, base: number, unmap: boolean) =>
        Array.from({ length: n }, (_, i) => ({
          sector: base + i * 24 + (i % 7),
          sectors: 1 + ((i * 5) % 17),
          unmap: unmap && i % 2 === 1,
        }));
      for (const layout of ['3desc', '2desc', 'indirect', 'split-header', 'fragmented'] as Layout[]) {
        const base = place(maxWz * 24 + 32);
        const segs = many(maxWz, base, true);
        await fresh(base - SPB, base + maxWz * 24 + 16);
        expectStatus(
          t,
          await drv.ranges(q(), WZ, segs, { layout }),
          OK,
          `WRITE_ZEROES of ${maxWz} ranges (max_write_zeroes_seg), ${layout}`,
        );
        for (const s of segs) model.zero(s.sector, s.sectors);
        await verify(t, base - 2 * SPB, base + maxWz * 24 + 24, `WRITE_ZEROES of ${maxWz} ranges, ${layout}`);
      }
      {
        const base = place(maxDiscard * 24 + 32);
        const segs = many(maxDiscard, base, false);
        await fresh(base - SPB, base + maxDiscard * 24 + 16);
        expectStatus(
          t,
          await drv.ranges(q(), DISCARD, segs, { layout: 'fragmented' }),
          OK,
          `DISCARD of ${maxDiscard} ranges (max_discard_seg)`,
        );
        for (const s of segs) model.discard(s.sector, s.sectors);
        await verify(t, base - 2 * SPB, base + maxDiscard * 24 + 24, `DISCARD of ${maxDiscard} ranges`);
        // Something must survive between the ranges for this to mean anything.
        t.ok(model.unknownIn(base, maxDiscard * 24) < (maxDiscard * 24) / 2, 'most sectors between the ranges are checked');
      }

      // Lists that fail whole: nothing of any segment may happen.
      for (const [type, max, name] of [
        [WZ, maxWz, 'WRITE_ZEROES'],
        [DISCARD, maxDiscard, 'DISCARD'],
      ] as const) {
        const base = place(max * 24 + 64);
        const lo = base - SPB;
        const hi = base + max * 24 + 64;
        await fresh(lo, hi);
        const good = many(max + 1, base, false).map((s): RawSegment => ({ sector: s.sector, sectors: s.sectors }));
        await refused(t, type, segmentList(good), IOERR, lo, hi, `${name} of ${max + 1} ranges (one over max_*_seg)`);
        const three = good.slice(0, 3);
        await refused(
          t,
          type,
          segmentList([...three, { sector: SECTORS, sectors: 1 }]),
          IOERR,
          lo,
          hi,
          `${name}: 3 good ranges, then one at the capacity`,
        );
        await refused(
          t,
          type,
          segmentList([{ sector: SECTORS - 1, sectors: 2 }, ...three]),
          IOERR,
          lo,
          hi,
          `${name}: one across the end, then 3 good ranges`,
        );
        await refused(
          t,
          type,
          segmentList([three[0]!, { sector: U64_MAX - 7n, sectors: 16 }, three[1]!]),
          IOERR,
          lo,
          hi,
          `${name}: a range whose end wraps u64 between good ones`,
        );
        await refused(
          t,
          type,
          segmentList([three[0]!, { sector: 2n ** 63n, sectors: 1 }, three[1]!]),
          IOERR,
          lo,
          hi,
          `${name}: a range at sector 2^63 between good ones`,
          'fragmented',
        );
        const badFlag = type === DISCARD ? 1 : 2;
        await refused(
          t,
          type,
          segmentList([three[0]!, { ...three[1]!, flags: badFlag }, three[2]!]),
          UNSUPP,
          lo,
          hi,
          `${name}: flags ${badFlag} on the middle one of 3`,
        );
        await refused(
          t,
          type,
          segmentList([...three.slice(0, 2), { ...three[2]!, flags: 0x8000_0000 }]),
          UNSUPP,
          lo,
          hi,
          `${name}: an unknown flag on the last one`,
          'indirect',
        );
      }
    });

    t.test('single bad segments: UNSUPP and IOERR, nothing done', async (t) => {
      const base = place(64);
      const lo = base - SPB;
      const hi = base + 64;
      await fresh(lo, hi);
      await fresh(SECTORS - 4 * SPB, SECTORS); // the disk's end, which the "beyond" cases border
      const endLo = SECTORS - 4 * SPB;
      const inside = { sector: base + 3, sectors: 13 };
      const cases: [string, number, RawSegment, number][] = [
        ['DISCARD with UNMAP', DISCARD, { ...inside, flags: 1 }, UNSUPP],
        ['DISCARD with flag bit 1', DISCARD, { ...inside, flags: 2 }, UNSUPP],
        ['DISCARD with flag bit 31', DISCARD, { ...inside, flags: 0x8000_0000 }, UNSUPP],
        ['WRITE_ZEROES with flag bit 1', WZ, { ...inside, flags: 2 }, UNSUPP],
        ['WRITE_ZEROES with UNMAP and flag bit 1', WZ, { ...inside, flags: 3 }, UNSUPP],
        ['WRITE_ZEROES with flag bit 31', WZ, { ...inside, flags: 0x8000_0000 }, UNSUPP],
        ['WRITE_ZEROES with every flag bit', WZ, { ...inside, flags: 0xffff_ffff }, UNSUPP],
      ];
      for (const [type, name] of [
        [DISCARD, 'DISCARD'],
        [WZ, 'WRITE_ZEROES'],
      ] as const) {
        cases.push(
          [`${name} at the capacity`, type, { sector: SECTORS, sectors: 1 }, IOERR],
          [`${name} across the end`, type, { sector: SECTORS - 3, sectors: 4 }, IOERR],
          // 2 TiB past the end: on an ext4 image a daemon that ran it would
          // fill the test machine's disk, so there a 32 MiB overrun stands in
          // (block devices and the size-limited tmpfs bound the damage).
          h.image !== undefined && spec.name.startsWith('image file')
            ? [`${name} of 65536 sectors from the last block`, type, { sector: SECTORS - 8, sectors: 65536 }, IOERR]
            : [`${name} of 2^32-1 sectors from the last block`, type, { sector: SECTORS - 8, sectors: 0xffff_ffff }, IOERR],
          [`${name} at sector 2^64-1`, type, { sector: U64_MAX, sectors: 1 }, IOERR],
          [`${name} whose end wraps u64 to sector 8`, type, { sector: U64_MAX - 7n, sectors: 16 }, IOERR],
          [`${name} at sector 2^53+1`, type, { sector: 2n ** 53n + 1n, sectors: 1 }, IOERR],
          [`${name} with the high word set (2^32 + a sector inside)`, type, { sector: 2n ** 32n + BigInt(base), sectors: 8 }, IOERR],
        );
      }
      for (const [what, type, s, want] of cases) {
        await refused(t, type, segmentList([s]), want, lo, hi, what);
      }
      await verify(t, endLo, SECTORS, 'the end of the disk is untouched by the refused ranges');
      // Malformed lists: no segment, and lengths that are not whole segments.
      const one = segmentList([inside]);
      for (const [type, name] of [
        [DISCARD, 'DISCARD'],
        [WZ, 'WRITE_ZEROES'],
      ] as const) {
        await refused(t, type, null, IOERR, lo, hi, `${name} with no data descriptor`);
        await refused(t, type, one.subarray(0, 15), IOERR, lo, hi, `${name} with a 15-byte list`);
        await refused(
          t,
          type,
          Buffer.concat([one, Buffer.alloc(1)]),
          IOERR,
          lo,
          hi,
          `${name} with a 17-byte list (a good segment and a stray byte)`,
        );
        await refused(t, type, Buffer.concat([one, one.subarray(0, 8)]), IOERR, lo, hi, `${name} with 24 bytes`, 'fragmented');
      }
    });

    t.test('write-through (the guest turned the write cache off): same results', async (t) => {
      await front.command(Request.SET_CONFIG, encodeConfigPayload(CFG_WRITEBACK, 0, Buffer.from([0])), [], true);
      t.teardown(() => front.command(Request.SET_CONFIG, encodeConfigPayload(CFG_WRITEBACK, 0, Buffer.from([1])), [], true));
      t.equal((await front.readConfig())[CFG_WRITEBACK], 0, 'writeback is 0');
      const cases: [number, number, number, boolean][] = [
        [WZ, 3, 17, false],
        [WZ, 1, 4095, true],
        [WZ, 0, 2048, false],
        [WZ, 0, 64, true],
        [DISCARD, 5, 130, false],
        [DISCARD, 0, 2048, false],
      ];
      for (const [type, off, len, unmap] of cases) {
        const sector = place(len) + off;
        const what = `${type === WZ ? `WRITE_ZEROES${unmap ? '+UNMAP' : ''}` : 'DISCARD'} [${sector}, +${len}), write-through`;
        await fresh(sector - 2 * SPB, sector + len + 2 * SPB);
        const r = type === WZ ? await drv.writeZeroes(q(), sector, len, unmap) : await drv.discard(q(), sector, len);
        expectStatus(t, r, OK, what);
        if (type === WZ) model.zero(sector, len);
        else model.discard(sector, len);
        await verify(t, sector - 3 * SPB, sector + len + 3 * SPB, what);
      }
    });

    if (spec.race) {
      t.test('WRITE_ZEROES racing writes to other sectors of the same 4 KiB host block: no lost update', async (t) => {
        const before = total(await countersNow(daemon, conn, QUEUES));
        const ROUNDS = 12;
        for (let round = 0; round < ROUNDS; round++) {
          const b0 = place(64) / SPB;
          const blocks = [b0, b0 + 1, b0 + 2, b0 + 5]; // b0+1 and b0+2 share a spanning WRITE_ZEROES
          await fresh(b0 * SPB, (b0 + 6) * SPB);
          const reqs: BlkRequest[] = [];
          const zeroes: [number, number][] = [];
          const wzQ = round % 2;
          const wQ = 1 - wzQ;
          const unmap = rand() < 0.5;
          const addWz = (sector: number, sectors: number): void => {
            reqs.push({ q: wzQ, type: WZ, sector: 0, data: segmentList([{ sector, sectors, flags: unmap ? 1 : 0 }]) });
            zeroes.push([sector, sectors]);
          };
          const addWrite = (sector: number): void => {
            const data = fastPattern(SECTOR_SIZE, round * 1_000_003 + sector);
            reqs.push({ q: wQ, type: BlkType.OUT, sector, data });
            model.write(sector, data);
          };
          // Block b0: zero sectors 2-4; writes to 0, 1, 5, 6, 7 interleaved around it.
          const s0 = blocks[0]! * SPB;
          addWrite(s0);
          addWz(s0 + 2, 3);
          addWrite(s0 + 1);
          addWrite(s0 + 5);
          addWrite(s0 + 6);
          addWrite(s0 + 7);
          // Blocks b0+1 and b0+2: zero sectors 5 of the first to 2 of the second (head | tail, no middle).
          const s1 = blocks[1]! * SPB;
          for (const k of [0, 1, 2]) addWrite(s1 + k);
          addWz(s1 + 5, 6);
          for (const k of [3, 4]) addWrite(s1 + k);
          for (const k of [3, 4, 5, 6, 7]) addWrite(s1 + SPB + k);
          // Block b0+5: a one-sector WRITE_ZEROES in the middle, writes all around.
          const s5 = blocks[3]! * SPB;
          for (const k of [0, 1, 2]) addWrite(s5 + k);
          addWz(s5 + 3, 1);
          for (const k of [4, 5, 6, 7]) addWrite(s5 + k);
          for (const [s, n] of zeroes) model.zero(s, n);
          const rs = await Promise.all(drv.submitBatch(reqs));
          const bad = rs.filter((r) => r.status !== OK).length;
          if (bad > 0) t.fail(`round ${round}: ${bad} requests failed`);
          for (const b of [b0, b0 + 1, b0 + 2, b0 + 5]) {
            const got = readDirect(h.target, b * SPB * SECTOR_SIZE, SPB * SECTOR_SIZE);
            const d = model.diff(got, b * SPB);
            if (d !== null)
              t.fail(
                `round ${round} (WRITE_ZEROES on q${wzQ}${unmap ? ' with UNMAP' : ''}, writes on q${wQ}): host block ${b} lost an update: ${d}`,
              );
          }
        }
        t.pass(`${ROUNDS} rounds: every write and every zeroed sector is on the host`);
        const after = total(await countersNow(daemon, conn, QUEUES));
        t.ok(
          after.overlapWaits > before.overlapWaits,
          `requests waited for overlapping ones (overlapWaits +${after.overlapWaits - before.overlapWaits})`,
        );
        t.ok(after.rmwCycles > before.rmwCycles, `read-modify-writes happened (rmwCycles +${after.rmwCycles - before.rmwCycles})`);
      });
    }

    t.test('the whole disk matches the model; the daemon counted exactly the expected errors', async (t) => {
      await verify(t, 0, SECTORS, 'whole disk');
      t.ok(model.unknownIn(0, SECTORS) > 0, `the model has discarded (unknown) sectors: ${model.unknownIn(0, SECTORS)}`);
      fe = undefined;
      const c = total(await closeAndCount(daemon, front, conn, QUEUES));
      t.equal(c.errors, expectedErrors, `errors counted by the daemon (${c.errors}) = requests expected to fail`);
      if (hostSectors > 1) t.ok(c.rmwCycles > 0, `unaligned WRITE_ZEROES made read-modify-writes (rmwCycles=${c.rmwCycles})`);
      const bad = warnLines(daemon, mark)
        // Not root: a small RLIMIT_MEMLOCK refuses fixed buffers (plain I/O then).
        .filter((l) => !/cannot register guest memory with io_uring/.test(l));
      t.same(bad, [], 'the daemon logged no warning or error');
    });
  });
});

// ------------------------------------------------------------ read-only

t.test('read-only disk: DISCARD and WRITE_ZEROES fail with IOERR, data unchanged', { skip: fileSkip }, async (t) => {
  const dir = tmpDir('vublk-dz-ro-');
  const image = path.join(dir, 'disk.img');
  const socket = path.join(dir, 'vublk.sock');
  const content = fastPattern(4 << 20, SEED ^ 0x7a7a);
  fs.writeFileSync(image, content);
  let v: VublkProcess | undefined;
  teardownDaemon(t, dir, () => v);
  v = await startVublk(['--disk', image, '--socket', socket, '--read-only']);
  const fe = await Frontend.connect(socket, { timeoutMs: 20000 });
  t.teardown(() => fe.close());
  await fe.setup({ queues: 1 });
  const drv = new BlkDriver(fe);
  t.notOk(fe.offeredFeatures & (1n << BigInt(VirtioFeature.BLK_DISCARD)), 'DISCARD is not offered');
  t.notOk(fe.offeredFeatures & (1n << BigInt(VirtioFeature.BLK_WRITE_ZEROES)), 'WRITE_ZEROES is not offered');
  t.ok(fe.offeredFeatures & (1n << BigInt(VirtioFeature.BLK_RO)), 'VIRTIO_BLK_F_RO is offered');
  const cfg = parseBlkConfig(fe.config!); // CONFIG negotiated
  t.same(
    [cfg.maxDiscardSectors, cfg.maxDiscardSeg, cfg.maxWriteZeroesSectors, cfg.maxWriteZeroesSeg, cfg.writeZeroesMayUnmap],
    [0, 0, 0, 0, 0],
    'the config space offers no DISCARD / WRITE_ZEROES limits',
  );
  const reqs: [string, Promise<BlkResult>][] = [
    ['DISCARD', drv.discard(0, 8, 64)],
    ['DISCARD of an unaligned range', drv.discard(0, 3, 5)],
    ['WRITE_ZEROES', drv.writeZeroes(0, 8, 64, false)],
    ['WRITE_ZEROES with UNMAP', drv.writeZeroes(0, 1, 6, true)],
    [
      'WRITE_ZEROES of two ranges',
      drv.ranges(0, WZ, [
        { sector: 0, sectors: 16 },
        { sector: 100, sectors: 9, unmap: true },
      ]),
    ],
  ];
  for (const [what, p] of reqs) {
    const r = await p;
    t.same([statusName(r.status), r.usedLen], ['IOERR', 1], `${what}: IOERR`);
  }
  const r = await drv.read(0, 0, content.length);
  t.ok(r.status === OK && r.data.equals(content), 'the guest reads the original data');
  t.ok(readDirect(image, 0, content.length).equals(content), 'the image holds the original data');
});

// ------------------------------------------------------------ max sectors

t.test('max sectors: a segment over max_*_sectors is IOERR even inside the disk', { skip: fileSkip }, async (t) => {
  // A sparse image larger than the largest segment, data only where checked.
  const dir = tmpDir('vublk-dz-max-');
  const image = path.join(dir, 'disk.img');
  const socket = path.join(dir, 'vublk.sock');
  const GIB = 1 << 30;
  const bytes = GIB + (8 << 20);
  fs.closeSync(fs.openSync(image, 'w'));
  fs.truncateSync(image, bytes);
  const headData = fastPattern(2 << 20, SEED ^ 0x1111);
  const edgeAt = GIB - (2 << 20);
  const edgeData = fastPattern(6 << 20, SEED ^ 0x2222); // [1 GiB - 2 MiB, 1 GiB + 4 MiB)
  const fd = fs.openSync(image, 'r+');
  fs.writeSync(fd, headData, 0, headData.length, 0);
  fs.writeSync(fd, edgeData, 0, edgeData.length, edgeAt);
  fs.closeSync(fd);
  let v: VublkProcess | undefined;
  teardownDaemon(t, dir, () => v);
  v = await startVublk(['--disk', image, '--socket', socket]);
  const fe = await Frontend.connect(socket, { timeoutMs: 20000 });
  t.teardown(() => fe.close());
  await fe.setup({ queues: 1 });
  const drv = new BlkDriver(fe);
  const cfg = parseBlkConfig(fe.config!); // CONFIG negotiated
  const cap = Number(cfg.capacity);
  const maxWz = cfg.maxWriteZeroesSectors;
  const maxD = cfg.maxDiscardSectors;
  t.comment(`capacity ${cap}, max_write_zeroes_sectors ${maxWz}, max_discard_sectors ${maxD}`);
  t.ok(maxWz + 1 < cap && maxD + 1 < cap, 'both maxima are inside the disk');

  const intact = async (what: string): Promise<void> => {
    const h = readDirect(image, 0, headData.length);
    const e = readDirect(image, edgeAt, edgeData.length);
    t.ok(h.equals(headData) && e.equals(edgeData), `${what}: the image is unchanged`);
    const g = await drv.read(0, 0, headData.length);
    t.ok(g.status === OK && g.data.equals(headData), `${what}: the guest reads the original data`);
  };
  const expect = async (what: string, p: Promise<BlkResult>, want: number): Promise<void> => {
    const r = await p;
    t.same([statusName(r.status), r.usedLen], [statusName(want), 1], `${what}: ${statusName(want)}`);
  };
  await expect(`WRITE_ZEROES of max+1 (${maxWz + 1}) sectors at 0`, drv.writeZeroes(0, 0, maxWz + 1, false), IOERR);
  await expect('WRITE_ZEROES+UNMAP of max+1 sectors at 1', drv.writeZeroes(0, 1, maxWz + 1, true), IOERR);
  await expect(`DISCARD of max+1 (${maxD + 1}) sectors at 0`, drv.discard(0, 0, maxD + 1), IOERR);
  await expect(
    'WRITE_ZEROES: a good range, then one of max+1',
    drv.ranges(0, WZ, [
      { sector: 8, sectors: 64 },
      { sector: 0, sectors: maxWz + 1 },
    ]),
    IOERR,
  );
  await expect(
    'DISCARD: a good range, then one of max+1',
    drv.ranges(0, DISCARD, [
      { sector: 8, sectors: 64 },
      { sector: 0, sectors: maxD + 1 },
    ]),
    IOERR,
  );
  await intact('after the refused requests');

  // Exactly max, unaligned at both ends: done, and only that.
  const start = 3;
  await expect(`WRITE_ZEROES of exactly max (${maxWz}) sectors at sector ${start}`, drv.writeZeroes(0, start, maxWz, false), OK);
  const endByte = (start + maxWz) * SECTOR_SIZE;
  const head = readDirect(image, 0, headData.length);
  t.ok(head.subarray(0, start * SECTOR_SIZE).equals(headData.subarray(0, start * SECTOR_SIZE)), 'sectors before it are intact');
  t.ok(isZero(head.subarray(start * SECTOR_SIZE)), 'its first 2 MiB are zeroes on the image');
  const edge = readDirect(image, edgeAt, edgeData.length);
  const cut = endByte - edgeAt;
  t.ok(isZero(edge.subarray(0, cut)), 'its last bytes are zeroes on the image');
  t.ok(edge.subarray(cut).equals(edgeData.subarray(cut)), 'the sectors after it are intact');
  const g = await drv.read(0, endByte / SECTOR_SIZE - 16, 32 * SECTOR_SIZE);
  t.ok(
    g.status === OK &&
      isZero(g.data.subarray(0, 16 * SECTOR_SIZE)) &&
      g.data.subarray(16 * SECTOR_SIZE).equals(edgeData.subarray(cut, cut + 16 * SECTOR_SIZE)),
    'the guest reads zeroes up to its end and the data after',
  );
  const d = await drv.discard(0, 0, maxD);
  t.same([statusName(d.status), d.usedLen], ['OK', 1], `DISCARD of exactly max (${maxD}) sectors: OK`);
  const after = readDirect(image, edgeAt, edgeData.length);
  const dEnd = maxD * SECTOR_SIZE - edgeAt;
  t.ok(after.subarray(Math.max(dEnd, cut)).equals(edgeData.subarray(Math.max(dEnd, cut))), 'data after the discarded range is intact');
});
