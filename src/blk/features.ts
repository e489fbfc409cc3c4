// The feature set vublk offers, and limits derived from the queue size.

import {
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_WRITE_ZEROES,
  IOV_MAX,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  featureMask,
} from '../virtio/constants';

export const MAX_QUEUES = 64;

const BASE_FEATURES = featureMask([
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_INDIRECT_DESC,
  VIRTIO_RING_F_EVENT_IDX,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_CONFIG_WCE,
  // MQ is offered whatever --queues says, as QEMU's own vhost-user-blk
  // export does: config num_queues always tells the truth (1 for a single
  // queue) and a driver that negotiates MQ uses at most num_queues queues.
  // Making it conditional would give two code paths for the same answer.
  VIRTIO_BLK_F_MQ,
]);

const RO_FEATURE = featureMask([VIRTIO_BLK_F_RO]);

/**
 * Features offered by GET_FEATURES. DISCARD and WRITE_ZEROES only when the
 * host disk supports them (src/disk/discard-probe.ts). GEOMETRY is not offered.
 */
export function deviceFeatures(opts: { readOnly: boolean; queues: number; discard?: boolean; writeZeroes?: boolean }): bigint {
  if (!Number.isInteger(opts.queues) || opts.queues < 1 || opts.queues > MAX_QUEUES) {
    throw new RangeError(`queues must be an integer between 1 and ${MAX_QUEUES}, got ${opts.queues}`);
  }
  let f = opts.readOnly ? BASE_FEATURES | RO_FEATURE : BASE_FEATURES;
  if (opts.discard === true && !opts.readOnly) f |= featureMask([VIRTIO_BLK_F_DISCARD]);
  if (opts.writeZeroes === true && !opts.readOnly) f |= featureMask([VIRTIO_BLK_F_WRITE_ZEROES]);
  return f;
}

/**
 * seg_max for a queue of `queueSize` descriptors: the header and the status
 * byte each take a descriptor, and no request may exceed IOV_MAX iovecs.
 * At least 1: Linux reads seg_max 0 as "1" anyway, and a chain can still
 * carry data through an indirect table when the ring is tiny.
 */
export function deriveSegMax(queueSize: number): number {
  if (!Number.isInteger(queueSize) || queueSize < 1) {
    throw new RangeError(`queue size must be a positive integer, got ${queueSize}`);
  }
  return Math.max(1, Math.min(queueSize - 2, IOV_MAX - 2));
}
