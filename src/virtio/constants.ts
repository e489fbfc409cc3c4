// Virtio and virtio-blk numbers (VIRTIO 1.2: 2.7 split ring, 5.2 block
// device, 6 reserved feature bits) and the vhost-user feature bit.
//
// Feature bits are bit positions (numbers); a feature set is a u64 bigint.

// --- transport / ring feature bits ---
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
export const VIRTIO_F_ANY_LAYOUT = 27;
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
/** vhost-user only: the backend speaks the protocol-feature negotiation. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;
export const VIRTIO_F_ORDER_PLATFORM = 36;
export const VIRTIO_F_SR_IOV = 37;
export const VIRTIO_F_NOTIFICATION_DATA = 38;
export const VIRTIO_F_RING_RESET = 40;

// --- virtio-blk feature bits (5.2.3) ---
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;
export const VIRTIO_BLK_F_LIFETIME = 15;
export const VIRTIO_BLK_F_SECURE_ERASE = 16;

// --- virtio-blk request types (5.2.6) ---
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

// --- virtio-blk request status (5.2.6) ---
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

// --- sizes ---
/** Length of the GET_ID answer; a 20-byte serial has no NUL terminator. */
export const VIRTIO_BLK_ID_BYTES = 20;
/** virtio-blk sectors are always 512 bytes, whatever blk_size says. */
export const SECTOR_SIZE = 512;
/** Linux UIO_MAXIOV: the most iovecs one preadv/pwritev/io_uring op takes. */
export const IOV_MAX = 1024;
/** struct virtio_blk_outhdr: type u32, ioprio u32, sector u64. */
export const VIRTIO_BLK_OUTHDR_BYTES = 16;

const FEATURE_NAMES: ReadonlyMap<number, string> = new Map<number, string>([
  [VIRTIO_BLK_F_SIZE_MAX, 'SIZE_MAX'],
  [VIRTIO_BLK_F_SEG_MAX, 'SEG_MAX'],
  [VIRTIO_BLK_F_GEOMETRY, 'GEOMETRY'],
  [VIRTIO_BLK_F_RO, 'RO'],
  [VIRTIO_BLK_F_BLK_SIZE, 'BLK_SIZE'],
  [VIRTIO_BLK_F_FLUSH, 'FLUSH'],
  [VIRTIO_BLK_F_TOPOLOGY, 'TOPOLOGY'],
  [VIRTIO_BLK_F_CONFIG_WCE, 'CONFIG_WCE'],
  [VIRTIO_BLK_F_MQ, 'MQ'],
  [VIRTIO_BLK_F_DISCARD, 'DISCARD'],
  [VIRTIO_BLK_F_WRITE_ZEROES, 'WRITE_ZEROES'],
  [VIRTIO_BLK_F_LIFETIME, 'LIFETIME'],
  [VIRTIO_BLK_F_SECURE_ERASE, 'SECURE_ERASE'],
  [VIRTIO_F_NOTIFY_ON_EMPTY, 'NOTIFY_ON_EMPTY'],
  [VIRTIO_F_ANY_LAYOUT, 'ANY_LAYOUT'],
  [VIRTIO_RING_F_INDIRECT_DESC, 'INDIRECT_DESC'],
  [VIRTIO_RING_F_EVENT_IDX, 'EVENT_IDX'],
  [VHOST_USER_F_PROTOCOL_FEATURES, 'PROTOCOL_FEATURES'],
  [VIRTIO_F_VERSION_1, 'VERSION_1'],
  [VIRTIO_F_ACCESS_PLATFORM, 'ACCESS_PLATFORM'],
  [VIRTIO_F_RING_PACKED, 'RING_PACKED'],
  [VIRTIO_F_IN_ORDER, 'IN_ORDER'],
  [VIRTIO_F_ORDER_PLATFORM, 'ORDER_PLATFORM'],
  [VIRTIO_F_SR_IOV, 'SR_IOV'],
  [VIRTIO_F_NOTIFICATION_DATA, 'NOTIFICATION_DATA'],
  [VIRTIO_F_RING_RESET, 'RING_RESET'],
]);

function checkBit(bit: number): void {
  if (!Number.isInteger(bit) || bit < 0 || bit > 63) {
    throw new RangeError(`feature bit must be an integer between 0 and 63, got ${bit}`);
  }
}

/** The u64 feature set with exactly these bits set. Throws RangeError on a bit outside 0..63. */
export function featureMask(bits: readonly number[]): bigint {
  let mask = 0n;
  for (const bit of bits) {
    checkBit(bit);
    mask |= 1n << BigInt(bit);
  }
  return mask;
}

/** True when `bit` is set in `features`. Throws RangeError on a bit outside 0..63. */
export function hasFeature(features: bigint, bit: number): boolean {
  checkBit(bit);
  return ((features >> BigInt(bit)) & 1n) === 1n;
}

/** Names of the bits set in `features`, lowest bit first; unknown bits as "bit<N>". For logs. */
export function featureNames(features: bigint): string[] {
  const names: string[] = [];
  const set = BigInt.asUintN(64, features);
  for (let bit = 0; bit < 64; bit++) {
    if (((set >> BigInt(bit)) & 1n) === 1n) names.push(FEATURE_NAMES.get(bit) ?? `bit${bit}`);
  }
  return names;
}
