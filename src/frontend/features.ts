// The virtio-blk and vhost-user protocol features the in-repo front-end
// knows and acks by default (as a QEMU 7.2 vhost-user-blk front-end does).

import { ProtocolFeature, featureBit } from '../vhost-user/protocol';

/** Virtio feature bits the front-end knows (virtio-blk device + transport). */
export const VirtioFeature = Object.freeze({
  BLK_SIZE_MAX: 1,
  BLK_SEG_MAX: 2,
  BLK_GEOMETRY: 4,
  BLK_RO: 5,
  BLK_BLK_SIZE: 6,
  BLK_FLUSH: 9,
  BLK_TOPOLOGY: 10,
  BLK_CONFIG_WCE: 11,
  BLK_MQ: 12,
  BLK_DISCARD: 13,
  BLK_WRITE_ZEROES: 14,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
} as const);

/** Features acked by default (when offered); INDIRECT/EVENT_IDX follow the setup options. */
export const DEFAULT_BLK_FEATURES = [
  VirtioFeature.BLK_SIZE_MAX,
  VirtioFeature.BLK_SEG_MAX,
  VirtioFeature.BLK_GEOMETRY,
  VirtioFeature.BLK_RO,
  VirtioFeature.BLK_BLK_SIZE,
  VirtioFeature.BLK_FLUSH,
  VirtioFeature.BLK_TOPOLOGY,
  VirtioFeature.BLK_CONFIG_WCE,
  VirtioFeature.BLK_MQ,
  VirtioFeature.BLK_DISCARD,
  VirtioFeature.BLK_WRITE_ZEROES,
  VirtioFeature.VERSION_1,
].reduce((m, b) => m | featureBit(b), 0n);

/** The protocol features a QEMU 7.2 vhost-user-blk front-end accepts (of those offered). */
export const DEFAULT_PROTOCOL_FEATURES = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.CONFIG,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.INFLIGHT_SHMFD,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.STATUS,
].reduce((m, b) => m | featureBit(b), 0n);

/** sizeof(struct virtio_blk_config) up to write_zeroes_may_unmap + padding (QEMU 7.2 default). */
export const BLK_CONFIG_SIZE = 60;
