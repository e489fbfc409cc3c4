// vhost-user wire protocol constants (QEMU docs/interop/vhost-user.rst).
//
// Every message is a 12-byte header followed by `size` payload bytes, all in
// host byte order (little-endian on every platform vublk runs on):
//
//   0        4        8        12
//   +--------+--------+--------+---------------------+
//   | request| flags  | size   | payload (size bytes) |
//   +--------+--------+--------+---------------------+
//
// File descriptors travel as SCM_RIGHTS ancillary data attached to the first
// byte of the message, so they arrive together with the header.

/** Front-end -> back-end request codes ("front-end message types"). */
export const Request = Object.freeze({
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const);
export type RequestCode = (typeof Request)[keyof typeof Request];

/** Back-end -> front-end request codes (sent on the SET_BACKEND_REQ_FD channel). */
export const BackendRequest = Object.freeze({
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const);
export type BackendRequestCode = (typeof BackendRequest)[keyof typeof BackendRequest];

function invert(table: Readonly<Record<string, number>>): ReadonlyMap<number, string> {
  const names = new Map<number, string>();
  for (const [name, code] of Object.entries(table)) names.set(code, name);
  return names;
}

const REQUEST_NAMES = invert(Request);
const BACKEND_REQUEST_NAMES = invert(BackendRequest);

/** "SET_VRING_KICK" for 12; "UNKNOWN(99)" for codes outside the table. Never throws. */
export function requestName(code: number): string {
  return REQUEST_NAMES.get(code) ?? `UNKNOWN(${code})`;
}

/** Name of a back-end -> front-end request code, for logs. */
export function backendRequestName(code: number): string {
  return BACKEND_REQUEST_NAMES.get(code) ?? `UNKNOWN(${code})`;
}

/** Header flag bits. */
export const Flags = Object.freeze({
  /** Bits 0-1 hold the protocol version. */
  VERSION_MASK: 0x3,
  /** The only protocol version there is. */
  VERSION: 0x1,
  /** Set on every reply. */
  REPLY: 0x4,
  /** The sender wants a REPLY_ACK reply (u64: 0 success, non-zero failure). */
  NEED_REPLY: 0x8,
} as const);

/** Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES). */
export const ProtocolFeature = Object.freeze({
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const);

/** Mask (as bigint) of a protocol or virtio feature bit number. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Virtio feature bit 30, reused by vhost-user: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Size of the message header: request, flags, size (u32 each). */
export const HEADER_SIZE = 12;

/** Vring index bits of a SET_VRING_KICK/CALL/ERR payload. */
export const VRING_IDX_MASK = 0xff;
/** "No fd attached" bit of a SET_VRING_KICK/CALL/ERR payload. */
export const VRING_NOFD_MASK = 0x100;

/** SET_VRING_ADDR flags: bit 0 asks for used-ring logging (VHOST_VRING_F_LOG). */
export const VRING_F_LOG = 0x1;

/** Regions one SET_MEM_TABLE carries (and fds any message may carry). */
export const MEMORY_BASELINE_NREGIONS = 8;
/** Memory slots vublk reports for GET_MAX_MEM_SLOTS (libvhost-user's limit). */
export const MAX_MEM_SLOTS = 509;
/** Most fds a single message may carry with SCM_RIGHTS. */
export const MAX_FDS_PER_MESSAGE = 8;

/** GET/SET_CONFIG: offset, size, flags (u32 each) before the data. */
export const CONFIG_HDR_SIZE = 12;
/** Largest virtio config space a GET/SET_CONFIG may address. */
export const MAX_CONFIG_SIZE = 256;
/** SET_CONFIG flags: the front-end writes a writable field. */
export const CONFIG_FLAG_WRITABLE = 0;
/** SET_CONFIG flags: the front-end restores config space during live migration. */
export const CONFIG_FLAG_MIGRATION = 1;

/** Payload sizes of the fixed-size payload types. */
export const PayloadSize = Object.freeze({
  U64: 8,
  VRING_STATE: 8,
  /** index u32, flags u32, desc u64, used u64, avail u64, log u64. */
  VRING_ADDR: 40,
  /** nregions u32 + padding u32, then MEM_REGION per region. */
  MEMORY_HEADER: 8,
  /** gpa, size, uva, mmap offset (u64 each). */
  MEM_REGION: 32,
  /** padding u64 + one MEM_REGION (ADD_MEM_REG, REM_MEM_REG). */
  SINGLE_MEM_REGION: 40,
  /** mmap size u64, mmap offset u64 (SET_LOG_BASE). */
  LOG: 16,
  /** mmap size u64, mmap offset u64, num queues u16, queue size u16, padded to 8. */
  INFLIGHT: 24,
} as const);

/**
 * Largest payload accepted from a front-end: the biggest payload a
 * vhost-user-blk front-end sends, a full config space (12 + 256 = 268 bytes),
 * which also covers a full memory table (8 + 8 * 32 = 264 bytes). Anything
 * larger is a violation before a byte of it is read.
 */
export const MAX_PAYLOAD_SIZE = Math.max(
  CONFIG_HDR_SIZE + MAX_CONFIG_SIZE,
  PayloadSize.MEMORY_HEADER + MEMORY_BASELINE_NREGIONS * PayloadSize.MEM_REGION,
);
