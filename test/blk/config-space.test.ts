import t from 'tap';
import * as cs from '../../src/blk/config-space';
import { applyConfigWrite, encodeConfig, makeBlkConfig, readConfig } from '../../src/blk/config-space';

t.test('offsets follow struct virtio_blk_config', (t) => {
  const expected: Record<string, number> = {
    CFG_CAPACITY: 0,
    CFG_SIZE_MAX: 8,
    CFG_SEG_MAX: 12,
    CFG_GEOMETRY_CYLINDERS: 16,
    CFG_GEOMETRY_HEADS: 18,
    CFG_GEOMETRY_SECTORS: 19,
    CFG_BLK_SIZE: 20,
    CFG_PHYSICAL_BLOCK_EXP: 24,
    CFG_ALIGNMENT_OFFSET: 25,
    CFG_MIN_IO_SIZE: 26,
    CFG_OPT_IO_SIZE: 28,
    CFG_WRITEBACK: 32,
    CFG_UNUSED0: 33,
    CFG_NUM_QUEUES: 34,
    CFG_MAX_DISCARD_SECTORS: 36,
    CFG_MAX_DISCARD_SEG: 40,
    CFG_DISCARD_SECTOR_ALIGNMENT: 44,
    CFG_MAX_WRITE_ZEROES_SECTORS: 48,
    CFG_MAX_WRITE_ZEROES_SEG: 52,
    CFG_WRITE_ZEROES_MAY_UNMAP: 56,
    CFG_MAX_SECURE_ERASE_SECTORS: 60,
    CFG_MAX_SECURE_ERASE_SEG: 64,
    CFG_SECURE_ERASE_SECTOR_ALIGNMENT: 68,
    BLK_CONFIG_SIZE: 72,
  };
  for (const [name, offset] of Object.entries(expected)) {
    t.equal((cs as unknown as Record<string, number>)[name], offset, name);
  }
  t.end();
});

t.test('every field is encoded little endian at its offset', (t) => {
  const bytes = encodeConfig({
    capacity: 0x0123_4567_89ab,
    sizeMax: 0x11223344,
    segMax: 0x55667788,
    geometry: { cylinders: 0x99aa, heads: 0xbb, sectors: 0xcc },
    blkSize: 4096,
    physicalBlockExp: 3,
    alignmentOffset: 5,
    minIoSize: 0xdead,
    optIoSize: 0xbeef0001,
    writeback: 1,
    numQueues: 0x0102,
    maxDiscardSectors: 0x03040506,
    maxDiscardSeg: 0x0708090a,
    discardSectorAlignment: 0x0b0c0d0e,
    maxWriteZeroesSectors: 0x10111213,
    maxWriteZeroesSeg: 0x14151617,
    writeZeroesMayUnmap: 1,
    maxSecureEraseSectors: 0x18191a1b,
    maxSecureEraseSeg: 0x1c1d1e1f,
    secureEraseSectorAlignment: 0x20212223,
  });
  t.equal(bytes.length, 72);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  t.equal(v.getBigUint64(0, true), 0x0123_4567_89abn, 'capacity');
  t.equal(v.getUint32(8, true), 0x11223344, 'size_max');
  t.equal(v.getUint32(12, true), 0x55667788, 'seg_max');
  t.equal(v.getUint16(16, true), 0x99aa, 'cylinders');
  t.equal(v.getUint8(18), 0xbb, 'heads');
  t.equal(v.getUint8(19), 0xcc, 'sectors');
  t.equal(v.getUint32(20, true), 4096, 'blk_size');
  t.equal(v.getUint8(24), 3, 'physical_block_exp');
  t.equal(v.getUint8(25), 5, 'alignment_offset');
  t.equal(v.getUint16(26, true), 0xdead, 'min_io_size');
  t.equal(v.getUint32(28, true), 0xbeef0001, 'opt_io_size');
  t.equal(v.getUint8(32), 1, 'writeback');
  t.equal(v.getUint8(33), 0, 'unused0');
  t.equal(v.getUint16(34, true), 0x0102, 'num_queues');
  t.equal(v.getUint32(36, true), 0x03040506, 'max_discard_sectors');
  t.equal(v.getUint32(40, true), 0x0708090a, 'max_discard_seg');
  t.equal(v.getUint32(44, true), 0x0b0c0d0e, 'discard_sector_alignment');
  t.equal(v.getUint32(48, true), 0x10111213, 'max_write_zeroes_sectors');
  t.equal(v.getUint32(52, true), 0x14151617, 'max_write_zeroes_seg');
  t.equal(v.getUint8(56), 1, 'write_zeroes_may_unmap');
  t.same(Array.from(bytes.subarray(57, 60)), [0, 0, 0], 'unused1');
  t.equal(v.getUint32(60, true), 0x18191a1b, 'max_secure_erase_sectors');
  t.equal(v.getUint32(64, true), 0x1c1d1e1f, 'max_secure_erase_seg');
  t.equal(v.getUint32(68, true), 0x20212223, 'secure_erase_sector_alignment');
  t.end();
});

t.test('omitted fields are zero; out buffers are reused', (t) => {
  const out = new Uint8Array(80).fill(0xff);
  const res = encodeConfig({ capacity: 8 }, out);
  t.equal(res, out);
  t.same(Array.from(out.subarray(0, 72)), [8, ...new Array<number>(71).fill(0)]);
  t.same(Array.from(out.subarray(72)), new Array<number>(8).fill(0xff), 'bytes past 72 untouched');
  t.throws(() => encodeConfig({ capacity: 1 }, new Uint8Array(71)), RangeError);
  t.end();
});

t.test('values that do not fit are refused', (t) => {
  t.throws(() => encodeConfig({ capacity: -1 }), /capacity/);
  t.throws(() => encodeConfig({ capacity: 2 ** 53 }), /capacity/);
  t.throws(() => encodeConfig({ capacity: 0, numQueues: 65536 }), /numQueues must be an integer between 0 and 65535/);
  t.throws(() => encodeConfig({ capacity: 0, physicalBlockExp: 256 }), /physicalBlockExp/);
  t.throws(() => encodeConfig({ capacity: 0, segMax: 2 ** 32 }), /segMax/);
  t.throws(() => encodeConfig({ capacity: 0, blkSize: 1.5 }), /blkSize/);
  t.end();
});

t.test('readConfig windows', (t) => {
  const bytes = encodeConfig({ capacity: 0x0102, writeback: 1, numQueues: 4 });
  const all = readConfig(bytes, 0, 256);
  t.ok(all);
  t.equal(all?.length, 256);
  t.same(Array.from(all?.subarray(0, 72) ?? []), Array.from(bytes));
  t.same(Array.from(all?.subarray(72) ?? []), new Array<number>(184).fill(0), 'zero past the struct');
  t.same(Array.from(readConfig(bytes, 32, 4) ?? []), [1, 0, 4, 0]);
  t.same(Array.from(readConfig(bytes, 70, 4) ?? []), [0, 0, 0, 0]);
  t.same(Array.from(readConfig(bytes, 100, 2) ?? []), [0, 0]);
  t.equal(readConfig(bytes, 0, 0)?.length, 0);
  t.equal(readConfig(bytes, 0, 257), null, 'larger than a config message');
  t.equal(readConfig(bytes, 200, 60), null, 'ends past 256');
  t.equal(readConfig(bytes, -1, 4), null);
  t.equal(readConfig(bytes, 0, -4), null);
  t.equal(readConfig(bytes, 0.5, 4), null);
  t.end();
});

t.test('only the writeback byte is writable', (t) => {
  const cfg = { capacity: 8, writeback: 1 };
  t.equal(applyConfigWrite(cfg, 32, Uint8Array.of(0)), true);
  t.equal(cfg.writeback, 0);
  t.equal(applyConfigWrite(cfg, 32, Uint8Array.of(1)), true);
  t.equal(cfg.writeback, 1);
  t.equal(applyConfigWrite(cfg, 32, Uint8Array.of(0)), true);
  t.equal(applyConfigWrite(cfg, 32, Uint8Array.of(7)), true);
  t.equal(cfg.writeback, 1, 'non-zero means write-back');
  t.equal(applyConfigWrite(cfg, 0, Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0)), false, 'capacity');
  t.equal(applyConfigWrite(cfg, 32, Uint8Array.of(0, 0)), false, 'writeback plus unused');
  t.equal(applyConfigWrite(cfg, 31, Uint8Array.of(0, 0)), false, 'straddles opt_io_size');
  t.equal(applyConfigWrite(cfg, 33, Uint8Array.of(0)), false, 'unused byte');
  t.equal(applyConfigWrite(cfg, 32, new Uint8Array(0)), false, 'empty');
  t.equal(cfg.writeback, 1, 'rejected writes change nothing');
  t.equal(cfg.capacity, 8);
  t.end();
});

t.test('makeBlkConfig', (t) => {
  const c = makeBlkConfig({ capacitySectors: 2097152, logicalBlockSize: 512, queues: 2, segMax: 254 });
  t.equal(c.capacity, 2097152);
  t.equal(c.blkSize, 512);
  t.equal(c.segMax, 254);
  t.equal(c.numQueues, 2);
  t.equal(c.writeback, 1);
  t.equal(c.physicalBlockExp, 0);
  t.equal(c.minIoSize, 1);
  t.ok((c.sizeMax ?? 0) > 0, 'size_max is never 0 (Linux would take it literally)');
  const k = makeBlkConfig({
    capacitySectors: 2097155,
    logicalBlockSize: 512,
    physicalBlockSize: 4096,
    queues: 1,
    segMax: 126,
    writeback: false,
  });
  t.equal(k.physicalBlockExp, 3);
  t.equal(k.minIoSize, 8);
  t.equal(k.writeback, 0);
  const l = makeBlkConfig({ capacitySectors: 2097155, logicalBlockSize: 4096, queues: 1, segMax: 126 });
  t.equal(l.capacity, 2097152, 'whole 4K blocks only');
  t.equal(l.blkSize, 4096);
  t.throws(() => makeBlkConfig({ capacitySectors: 8, logicalBlockSize: 1000, queues: 1, segMax: 1 }), RangeError);
  t.doesNotThrow(() => encodeConfig(k));
  t.end();
});
