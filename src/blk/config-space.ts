// struct virtio_blk_config (VIRTIO 1.2 5.2.4), little endian:
//
//   @0  capacity u64                 @32 writeback u8   @33 unused0 u8
//   @8  size_max u32                 @34 num_queues u16
//   @12 seg_max u32                  @36 max_discard_sectors u32
//   @16 geometry.cylinders u16       @40 max_discard_seg u32
//   @18 geometry.heads u8            @44 discard_sector_alignment u32
//   @19 geometry.sectors u8          @48 max_write_zeroes_sectors u32
//   @20 blk_size u32                 @52 max_write_zeroes_seg u32
//   @24 physical_block_exp u8        @56 write_zeroes_may_unmap u8, 3 unused
//   @25 alignment_offset u8          @60 max_secure_erase_sectors u32
//   @26 min_io_size u16              @64 max_secure_erase_seg u32
//   @28 opt_io_size u32              @68 secure_erase_sector_alignment u32
//                                    = 72 bytes
//
// The frontend reads it with GET_CONFIG (any window of up to 256 bytes) and
// the driver may write only `writeback` (VIRTIO_BLK_F_CONFIG_WCE).

import { SECTOR_SIZE } from '../virtio/constants';
import type { DiskView } from './disk-view';

export const CFG_CAPACITY = 0;
export const CFG_SIZE_MAX = 8;
export const CFG_SEG_MAX = 12;
export const CFG_GEOMETRY_CYLINDERS = 16;
export const CFG_GEOMETRY_HEADS = 18;
export const CFG_GEOMETRY_SECTORS = 19;
export const CFG_BLK_SIZE = 20;
export const CFG_PHYSICAL_BLOCK_EXP = 24;
export const CFG_ALIGNMENT_OFFSET = 25;
export const CFG_MIN_IO_SIZE = 26;
export const CFG_OPT_IO_SIZE = 28;
export const CFG_WRITEBACK = 32;
export const CFG_UNUSED0 = 33;
export const CFG_NUM_QUEUES = 34;
export const CFG_MAX_DISCARD_SECTORS = 36;
export const CFG_MAX_DISCARD_SEG = 40;
export const CFG_DISCARD_SECTOR_ALIGNMENT = 44;
export const CFG_MAX_WRITE_ZEROES_SECTORS = 48;
export const CFG_MAX_WRITE_ZEROES_SEG = 52;
export const CFG_WRITE_ZEROES_MAY_UNMAP = 56;
export const CFG_MAX_SECURE_ERASE_SECTORS = 60;
export const CFG_MAX_SECURE_ERASE_SEG = 64;
export const CFG_SECURE_ERASE_SECTOR_ALIGNMENT = 68;
/** sizeof(struct virtio_blk_config). */
export const BLK_CONFIG_SIZE = 72;
/** Largest GET_CONFIG/SET_CONFIG payload (vhost-user VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_WINDOW = 256;

/**
 * Segment size limit offered with VIRTIO_BLK_F_SIZE_MAX. QEMU's
 * contrib/vhost-user-blk uses the same 64 KiB; it keeps every iovec well
 * inside what one read/write op moves and costs guests nothing (pages are
 * 4 KiB anyway).
 */
export const DEFAULT_SIZE_MAX = 65536;

/** The config space's values; fields left out encode as 0. Sizes per the spec's units. */
export interface BlkConfig {
  /** Disk size in 512-byte sectors. */
  capacity: number;
  sizeMax?: number;
  segMax?: number;
  geometry?: { cylinders: number; heads: number; sectors: number };
  /** Logical block size in bytes. */
  blkSize?: number;
  /** log2(physical block / logical block). */
  physicalBlockExp?: number;
  /** In logical blocks. */
  alignmentOffset?: number;
  /** Suggested minimum I/O size, in logical blocks. */
  minIoSize?: number;
  /** Optimal I/O size, in logical blocks. */
  optIoSize?: number;
  /** 1 = write-back cache (flushes needed), 0 = write-through. Driver-writable. */
  writeback?: number;
  numQueues?: number;
  maxDiscardSectors?: number;
  maxDiscardSeg?: number;
  discardSectorAlignment?: number;
  maxWriteZeroesSectors?: number;
  maxWriteZeroesSeg?: number;
  writeZeroesMayUnmap?: number;
  maxSecureEraseSectors?: number;
  maxSecureEraseSeg?: number;
  secureEraseSectorAlignment?: number;
}

function put(view: DataView, offset: number, bits: 8 | 16 | 32, value: number | undefined, name: string): void {
  const v = value ?? 0;
  if (!Number.isInteger(v) || v < 0 || v >= 2 ** bits) {
    throw new RangeError(`config ${name} must be an integer between 0 and ${2 ** bits - 1}, got ${v}`);
  }
  if (bits === 8) view.setUint8(offset, v);
  else if (bits === 16) view.setUint16(offset, v, true);
  else view.setUint32(offset, v, true);
}

/**
 * Encode `cfg` into `out` (at least 72 bytes; the first 72 are written, the
 * rest untouched) or into a new 72-byte array. Throws RangeError when a value
 * does not fit its field: the config is ours, so that is a bug, not input.
 */
export function encodeConfig(cfg: BlkConfig, out?: Uint8Array): Uint8Array {
  const bytes = out ?? new Uint8Array(BLK_CONFIG_SIZE);
  if (bytes.length < BLK_CONFIG_SIZE) {
    throw new RangeError(`config buffer is ${bytes.length} bytes, needs ${BLK_CONFIG_SIZE}`);
  }
  bytes.fill(0, 0, BLK_CONFIG_SIZE);
  const view = new DataView(bytes.buffer, bytes.byteOffset, BLK_CONFIG_SIZE);
  if (!Number.isSafeInteger(cfg.capacity) || cfg.capacity < 0) {
    throw new RangeError(`config capacity must be a non-negative safe integer, got ${cfg.capacity}`);
  }
  view.setBigUint64(CFG_CAPACITY, BigInt(cfg.capacity), true);
  put(view, CFG_SIZE_MAX, 32, cfg.sizeMax, 'sizeMax');
  put(view, CFG_SEG_MAX, 32, cfg.segMax, 'segMax');
  put(view, CFG_GEOMETRY_CYLINDERS, 16, cfg.geometry?.cylinders, 'geometry.cylinders');
  put(view, CFG_GEOMETRY_HEADS, 8, cfg.geometry?.heads, 'geometry.heads');
  put(view, CFG_GEOMETRY_SECTORS, 8, cfg.geometry?.sectors, 'geometry.sectors');
  put(view, CFG_BLK_SIZE, 32, cfg.blkSize, 'blkSize');
  put(view, CFG_PHYSICAL_BLOCK_EXP, 8, cfg.physicalBlockExp, 'physicalBlockExp');
  put(view, CFG_ALIGNMENT_OFFSET, 8, cfg.alignmentOffset, 'alignmentOffset');
  put(view, CFG_MIN_IO_SIZE, 16, cfg.minIoSize, 'minIoSize');
  put(view, CFG_OPT_IO_SIZE, 32, cfg.optIoSize, 'optIoSize');
  put(view, CFG_WRITEBACK, 8, cfg.writeback, 'writeback');
  put(view, CFG_NUM_QUEUES, 16, cfg.numQueues, 'numQueues');
  put(view, CFG_MAX_DISCARD_SECTORS, 32, cfg.maxDiscardSectors, 'maxDiscardSectors');
  put(view, CFG_MAX_DISCARD_SEG, 32, cfg.maxDiscardSeg, 'maxDiscardSeg');
  put(view, CFG_DISCARD_SECTOR_ALIGNMENT, 32, cfg.discardSectorAlignment, 'discardSectorAlignment');
  put(view, CFG_MAX_WRITE_ZEROES_SECTORS, 32, cfg.maxWriteZeroesSectors, 'maxWriteZeroesSectors');
  put(view, CFG_MAX_WRITE_ZEROES_SEG, 32, cfg.maxWriteZeroesSeg, 'maxWriteZeroesSeg');
  put(view, CFG_WRITE_ZEROES_MAY_UNMAP, 8, cfg.writeZeroesMayUnmap, 'writeZeroesMayUnmap');
  put(view, CFG_MAX_SECURE_ERASE_SECTORS, 32, cfg.maxSecureEraseSectors, 'maxSecureEraseSectors');
  put(view, CFG_MAX_SECURE_ERASE_SEG, 32, cfg.maxSecureEraseSeg, 'maxSecureEraseSeg');
  put(view, CFG_SECURE_ERASE_SECTOR_ALIGNMENT, 32, cfg.secureEraseSectorAlignment, 'secureEraseSectorAlignment');
  return bytes;
}

/**
 * The GET_CONFIG answer: `size` bytes of the config space from `offset`,
 * zero past the end of the struct. Returns null for a window that is not
 * inside the 256 bytes a vhost-user config message can carry (the caller
 * treats that as a protocol violation). `bytes` is an encodeConfig() result.
 */
export function readConfig(bytes: Uint8Array, offset: number, size: number): Uint8Array | null {
  if (
    !Number.isInteger(offset) ||
    !Number.isInteger(size) ||
    offset < 0 ||
    size < 0 ||
    size > MAX_CONFIG_WINDOW ||
    offset > MAX_CONFIG_WINDOW - size
  ) {
    return null;
  }
  const out = new Uint8Array(size);
  const end = Math.min(offset + size, bytes.length);
  if (offset < end) out.set(bytes.subarray(offset, end), 0);
  return out;
}

/**
 * A SET_CONFIG from the driver. Only the writeback byte is writable (the
 * caller applies this only when VIRTIO_BLK_F_CONFIG_WCE was negotiated):
 * a write of exactly that byte sets cfg.writeback to 0 or 1 (any non-zero
 * value means write-back, as QEMU reads it) and returns true; any other
 * window is rejected with false and changes nothing.
 */
export function applyConfigWrite(cfg: BlkConfig, offset: number, data: Uint8Array): boolean {
  if (offset !== CFG_WRITEBACK || data.length !== 1) return false;
  cfg.writeback = data[0] === 0 ? 0 : 1;
  return true;
}

/** What makeBlkConfig derives the config space from. */
export interface BlkConfigParams {
  capacitySectors: number;
  /** Block size the guest sees (512 or 4096). */
  logicalBlockSize: number;
  /** Host physical block size, if known (>= logical, power of two). */
  physicalBlockSize?: number;
  queues: number;
  /** seg_max, from deriveSegMax(queueSize). */
  segMax: number;
  /** Start in write-back mode (the guest flushes). Default true. */
  writeback?: boolean;
  /** Host I/O sizes in bytes: minimum (e.g. the O_DIRECT alignment) and optimal; 0/absent if unknown. */
  minIoBytes?: number;
  optIoBytes?: number;
  /** DISCARD / WRITE_ZEROES limits in bytes (0/absent: not offered) and segments per request. */
  maxDiscardBytes?: number;
  discardAlignBytes?: number;
  maxWriteZeroesBytes?: number;
  writeZeroesMayUnmap?: boolean;
  maxSegments?: number;
}

function sectors(bytes: number | undefined): number {
  return Math.min(0xffffffff, Math.floor((bytes ?? 0) / SECTOR_SIZE));
}

/** The config space vublk presents for these parameters. */
export function makeBlkConfig(p: BlkConfigParams): BlkConfig {
  const lbs = p.logicalBlockSize;
  if (!Number.isInteger(lbs) || lbs < SECTOR_SIZE || (lbs & (lbs - 1)) !== 0) {
    throw new RangeError(`logical block size must be a power of two >= 512, got ${lbs}`);
  }
  const pbs = Math.max(p.physicalBlockSize ?? lbs, lbs);
  if ((pbs & (pbs - 1)) !== 0) {
    throw new RangeError(`physical block size must be a power of two, got ${pbs}`);
  }
  const blocksPerPhysical = pbs / lbs;
  return {
    // A 4K-logical disk exposes only whole logical blocks.
    capacity: p.capacitySectors - (p.capacitySectors % (lbs / SECTOR_SIZE)),
    sizeMax: DEFAULT_SIZE_MAX,
    segMax: p.segMax,
    blkSize: lbs,
    physicalBlockExp: Math.log2(blocksPerPhysical),
    alignmentOffset: 0,
    // In logical blocks. Below one physical block a guest write costs a
    // read-modify-write on the host, so the minimum is at least that.
    minIoSize: Math.min(0xffff, Math.max(blocksPerPhysical, Math.ceil((p.minIoBytes ?? 0) / lbs))),
    optIoSize: Math.floor((p.optIoBytes ?? 0) / lbs),
    writeback: p.writeback === false ? 0 : 1,
    numQueues: p.queues,
    // Sector counts are in 512-byte units whatever the logical block size.
    maxDiscardSectors: sectors(p.maxDiscardBytes),
    maxDiscardSeg: p.maxDiscardBytes ? (p.maxSegments ?? 1) : 0,
    discardSectorAlignment: p.maxDiscardBytes ? sectors(p.discardAlignBytes) : 0,
    maxWriteZeroesSectors: sectors(p.maxWriteZeroesBytes),
    maxWriteZeroesSeg: p.maxWriteZeroesBytes ? (p.maxSegments ?? 1) : 0,
    writeZeroesMayUnmap: p.maxWriteZeroesBytes && p.writeZeroesMayUnmap ? 1 : 0,
  };
}

/**
 * The guest's view of the disk this config space describes. readOnly is a
 * feature bit and blockDevice a host fact, neither in the struct; the
 * capacity is a copy: whoever resizes updates both.
 */
export function diskViewOf(cfg: BlkConfig, readOnly: boolean, blockDevice: boolean): DiskView {
  const maxDiscardSectors = cfg.maxDiscardSectors ?? 0;
  const maxWriteZeroesSectors = cfg.maxWriteZeroesSectors ?? 0;
  return {
    capacitySectors: cfg.capacity,
    writtenEndSector: 0,
    readOnly,
    logicalBlockSize: cfg.blkSize ?? SECTOR_SIZE,
    blockDevice,
    discard: maxDiscardSectors > 0,
    writeZeroes: maxWriteZeroesSectors > 0,
    maxDiscardSectors,
    maxWriteZeroesSectors,
    maxSegments: Math.max(cfg.maxDiscardSeg ?? 0, cfg.maxWriteZeroesSeg ?? 0),
    mayUnmap: (cfg.writeZeroesMayUnmap ?? 0) === 1,
  };
}
