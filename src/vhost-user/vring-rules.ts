// The ring size a frontend may ask for (SET_VRING_NUM): a rule with a
// user-facing limit, kept out of the handler so the CLI can share the bound.
// (Which fds may serve as kick/call/err notifiers: notifier-fd.ts.)

import { violation } from './violation';

/** The largest split ring vublk serves: QEMU's VIRTQUEUE_MAX_SIZE, the most vhost-user-blk-pci's queue-size allows. */
export const MAX_RING_SIZE = 1024;

/**
 * Checks SET_VRING_NUM's ring size against the operator's cap (--queue-size,
 * at most MAX_RING_SIZE). A refusal names the size asked for, the limit and
 * what to change, since it is usually a configuration mismatch rather than an
 * attack.
 */
export function checkRingSize(num: number, limit: number): void {
  if (num < 1 || (num & (num - 1)) !== 0) {
    throw violation(`SET_VRING_NUM ${num} is not a power of two`);
  }
  if (num > MAX_RING_SIZE) {
    throw violation(
      `SET_VRING_NUM ${num} asks for a ${num}-entry ring; vublk serves at most ${MAX_RING_SIZE} (lower the frontend's queue-size)`,
    );
  }
  if (num > limit) {
    throw violation(
      `SET_VRING_NUM ${num} asks for a ${num}-entry ring, over the limit of ${limit} set by --queue-size (raise --queue-size to ${num}, or lower the frontend's queue-size)`,
    );
  }
}
