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

/**
 * Payload types (the decoders in message.ts). QEMU sends no payload for
 * GET_FEATURES, SET_OWNER, RESET_DEVICE and the like (vhost_user_get_u64
 * sets no size); GET_VRING_BASE carries the state {index, 0} and GET_CONFIG a
 * config header plus zeroes. 'unsupported': a vhost-user-blk back-end does
 * not serve the request.
 */
export type PayloadKind =
  | 'none'
  | 'u64'
  | 'vring-state'
  | 'vring-addr'
  | 'mem-table'
  | 'add-mem-reg'
  | 'rem-mem-reg'
  | 'vring-file'
  | 'config'
  | 'backend-fd'
  | 'inflight'
  | 'unsupported';

/**
 * When the back-end answers: 'always' (a reply of its own, so REPLY_ACK adds
 * none) or 'ack' (only the u64 of REPLY_ACK, when the front-end sets NEED_REPLY).
 */
export type ReplyRule = 'always' | 'ack';

/** One front-end -> back-end request: code, name, payload, fds it may carry (min, max), reply. */
export interface RequestRow {
  readonly name: string;
  readonly code: number;
  readonly payload: PayloadKind;
  readonly fds: readonly [number, number];
  readonly reply: ReplyRule;
}

/**
 * Every front-end -> back-end request ("front-end message types"), one row
 * each: Request, requestName(), hasReply() and payloadKind() come from here.
 * The decoders refine the fd counts where the payload decides (NOFD, nregions).
 */
const REQUESTS = [
  { name: 'GET_FEATURES', code: 1, payload: 'none', fds: [0, 0], reply: 'always' },
  { name: 'SET_FEATURES', code: 2, payload: 'u64', fds: [0, 0], reply: 'ack' },
  { name: 'SET_OWNER', code: 3, payload: 'none', fds: [0, 0], reply: 'ack' },
  { name: 'RESET_OWNER', code: 4, payload: 'none', fds: [0, 0], reply: 'ack' },
  { name: 'SET_MEM_TABLE', code: 5, payload: 'mem-table', fds: [1, 8], reply: 'ack' },
  { name: 'SET_LOG_BASE', code: 6, payload: 'unsupported', fds: [1, 1], reply: 'always' },
  { name: 'SET_LOG_FD', code: 7, payload: 'unsupported', fds: [1, 1], reply: 'ack' },
  { name: 'SET_VRING_NUM', code: 8, payload: 'vring-state', fds: [0, 0], reply: 'ack' },
  { name: 'SET_VRING_ADDR', code: 9, payload: 'vring-addr', fds: [0, 0], reply: 'ack' },
  { name: 'SET_VRING_BASE', code: 10, payload: 'vring-state', fds: [0, 0], reply: 'ack' },
  { name: 'GET_VRING_BASE', code: 11, payload: 'vring-state', fds: [0, 0], reply: 'always' },
  { name: 'SET_VRING_KICK', code: 12, payload: 'vring-file', fds: [0, 1], reply: 'ack' },
  { name: 'SET_VRING_CALL', code: 13, payload: 'vring-file', fds: [0, 1], reply: 'ack' },
  { name: 'SET_VRING_ERR', code: 14, payload: 'vring-file', fds: [0, 1], reply: 'ack' },
  { name: 'GET_PROTOCOL_FEATURES', code: 15, payload: 'none', fds: [0, 0], reply: 'always' },
  { name: 'SET_PROTOCOL_FEATURES', code: 16, payload: 'u64', fds: [0, 0], reply: 'ack' },
  { name: 'GET_QUEUE_NUM', code: 17, payload: 'none', fds: [0, 0], reply: 'always' },
  { name: 'SET_VRING_ENABLE', code: 18, payload: 'vring-state', fds: [0, 0], reply: 'ack' },
  { name: 'SEND_RARP', code: 19, payload: 'unsupported', fds: [0, 0], reply: 'ack' },
  { name: 'NET_SET_MTU', code: 20, payload: 'unsupported', fds: [0, 0], reply: 'ack' },
  { name: 'SET_BACKEND_REQ_FD', code: 21, payload: 'backend-fd', fds: [1, 1], reply: 'ack' },
  { name: 'IOTLB_MSG', code: 22, payload: 'unsupported', fds: [0, 0], reply: 'ack' },
  { name: 'SET_VRING_ENDIAN', code: 23, payload: 'unsupported', fds: [0, 0], reply: 'ack' },
  { name: 'GET_CONFIG', code: 24, payload: 'config', fds: [0, 0], reply: 'always' },
  { name: 'SET_CONFIG', code: 25, payload: 'config', fds: [0, 0], reply: 'ack' },
  { name: 'CREATE_CRYPTO_SESSION', code: 26, payload: 'unsupported', fds: [0, 0], reply: 'always' },
  { name: 'CLOSE_CRYPTO_SESSION', code: 27, payload: 'unsupported', fds: [0, 0], reply: 'ack' },
  { name: 'POSTCOPY_ADVISE', code: 28, payload: 'unsupported', fds: [0, 0], reply: 'always' },
  { name: 'POSTCOPY_LISTEN', code: 29, payload: 'unsupported', fds: [0, 0], reply: 'ack' },
  { name: 'POSTCOPY_END', code: 30, payload: 'unsupported', fds: [0, 0], reply: 'always' },
  { name: 'GET_INFLIGHT_FD', code: 31, payload: 'inflight', fds: [0, 0], reply: 'always' },
  { name: 'SET_INFLIGHT_FD', code: 32, payload: 'inflight', fds: [1, 1], reply: 'ack' },
  { name: 'GPU_SET_SOCKET', code: 33, payload: 'unsupported', fds: [1, 1], reply: 'ack' },
  { name: 'RESET_DEVICE', code: 34, payload: 'none', fds: [0, 0], reply: 'ack' },
  { name: 'VRING_KICK', code: 35, payload: 'vring-state', fds: [0, 0], reply: 'ack' },
  { name: 'GET_MAX_MEM_SLOTS', code: 36, payload: 'none', fds: [0, 0], reply: 'always' },
  { name: 'ADD_MEM_REG', code: 37, payload: 'add-mem-reg', fds: [1, 1], reply: 'ack' },
  { name: 'REM_MEM_REG', code: 38, payload: 'rem-mem-reg', fds: [0, 1], reply: 'ack' },
  { name: 'SET_STATUS', code: 39, payload: 'u64', fds: [0, 0], reply: 'ack' },
  { name: 'GET_STATUS', code: 40, payload: 'none', fds: [0, 0], reply: 'always' },
] as const satisfies readonly RequestRow[];

type Row = (typeof REQUESTS)[number];

/** Front-end -> back-end request codes, by name. */
export const Request = Object.freeze(Object.fromEntries(REQUESTS.map((r) => [r.name, r.code]))) as {
  readonly [R in Row as R['name']]: R['code'];
};
export type RequestCode = Row['code'];

const REQUEST_ROWS: ReadonlyMap<number, RequestRow> = new Map(REQUESTS.map((r) => [r.code, r]));

/** The row of a request code, or undefined for codes outside the table. */
export function requestRow(code: number): RequestRow | undefined {
  return REQUEST_ROWS.get(code);
}

/** Whether a request has a reply of its own (so REPLY_ACK adds none). */
export function hasReply(code: number): boolean {
  return REQUEST_ROWS.get(code)?.reply === 'always';
}

/** The payload type of a request code ('unsupported' for anything outside the table). */
export function payloadKind(code: number): PayloadKind {
  return REQUEST_ROWS.get(code)?.payload ?? 'unsupported';
}

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

const BACKEND_REQUEST_NAMES = invert(BackendRequest);

/** "SET_VRING_KICK" for 12; "UNKNOWN(99)" for codes outside the table. Never throws. */
export function requestName(code: number): string {
  return REQUEST_ROWS.get(code)?.name ?? `UNKNOWN(${code})`;
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
