// The one place where an I/O result becomes a virtio-blk status byte
// (STYLE.md: the error-to-status mapping lives in exactly one function).

import { constants } from 'node:os';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP } from '../virtio/constants';

// Linux: ENOTSUP and EOPNOTSUPP are the same number (95).
const EOPNOTSUPP = constants.errno.EOPNOTSUPP;
const ENOTSUP = constants.errno.ENOTSUP;

/**
 * Status for an io_uring-style result: >= 0 (bytes or success) is OK,
 * -EOPNOTSUPP is UNSUPP, every other negative errno (and anything that is
 * not a number at all) is IOERR.
 */
export function statusForErrno(res: number): number {
  if (res >= 0) return VIRTIO_BLK_S_OK;
  if (res === -EOPNOTSUPP || res === -ENOTSUP) return VIRTIO_BLK_S_UNSUPP;
  return VIRTIO_BLK_S_IOERR;
}
