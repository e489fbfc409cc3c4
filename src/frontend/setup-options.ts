// Options of Frontend.setup(): how many queues, which features, how guest
// memory is laid out and sent, and what survives the connection.

import type { GuestMemoryOptions } from './guest-memory';
import type { GuestState } from './guest-state';
import type { InflightRegion } from './inflight-region';

export interface SetupOptions {
  /** Number of virtqueues (default 1). */
  queues?: number;
  /** Queue size, a power of two (default 128). */
  queueSize?: number;
  /** Virtio features to ack, intersected with those offered (default DEFAULT_BLK_FEATURES). */
  features?: bigint;
  /** Negotiate VIRTIO_RING_F_EVENT_IDX: true requires it, false refuses it, undefined takes it if offered. */
  eventIdx?: boolean;
  /** Negotiate VIRTIO_RING_F_INDIRECT_DESC, like eventIdx. */
  indirect?: boolean;
  /** Guest RAM layout (default two back-to-back 16 MiB regions). */
  memory?: GuestMemoryOptions;
  /**
   * How the memory table is sent: 'set-mem-table', 'add-mem-reg' (needs
   * CONFIGURE_MEM_SLOTS), or 'auto' (default): ADD_MEM_REG when
   * CONFIGURE_MEM_SLOTS is negotiated, as QEMU does.
   */
  memTable?: 'set-mem-table' | 'add-mem-reg' | 'auto';
  /** Protocol features to accept of those offered (default DEFAULT_PROTOCOL_FEATURES). */
  protocolFeatures?: bigint;
  /** GET_CONFIG size (default 60). */
  configSize?: number;
  /** Send SET_VRING_CALL (a throwaway "masked" eventfd) and SET_VRING_ERR at init, as QEMU 7.2 does. Default true. */
  qemuInitNotifiers?: boolean;
  /** Set NEED_REPLY on every message that has no reply of its own (REPLY_ACK must be negotiated). */
  needReplyAll?: boolean;
  /**
   * INFLIGHT_SHMFD, as QEMU 7.2 vhost-user-blk: false refuses the feature;
   * a region is created by GET_INFLIGHT_FD once (if not yet created) and
   * sent with SET_INFLIGHT_FD on every setup. Default: a region of this
   * Frontend's own, closed with it.
   */
  inflight?: InflightRegion | false;
  /**
   * Guest memory and rings that survive this connection (see GuestState).
   * Rings it already holds are reused, with SET_VRING_BASE = their used
   * index (QEMU after a backend crash) unless vringBases says otherwise.
   */
  guest?: GuestState;
  /** SET_VRING_BASE per queue (default 0, or the used index of a reused ring). */
  vringBases?: number[];
}
