// Per-queue request statistics for the metrics endpoint: completions by type
// and status, data bytes by type, and a latency histogram by type. Plain
// typed arrays, filled by the completion funnel with no allocation; the
// metrics endpoint reads them when scraped (src/metrics/).

import {
  SECTOR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../virtio/constants';
import type { BlkRequest } from './request';

/** Request type labels, by typeIndex(); "unknown" is every type the spec does not name. */
export const REQUEST_TYPES = [
  'in',
  'out',
  'flush',
  'get_id',
  'get_lifetime',
  'discard',
  'write_zeroes',
  'secure_erase',
  'unknown',
] as const;
/** Status labels, by status byte (VIRTIO_BLK_S_OK, IOERR, UNSUPP). */
export const REQUEST_STATUSES = ['ok', 'ioerr', 'unsupp'] as const;
/**
 * Upper bounds in seconds of the latency histogram's buckets (+Inf follows):
 * from a page-cache hit to a disk that stalls.
 */
export const LATENCY_BOUNDS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;

const TYPES = REQUEST_TYPES.length;
const STATUSES = REQUEST_STATUSES.length;
/** Buckets per type: one per bound, then +Inf (counts per bucket, not cumulative). */
export const LATENCY_BUCKETS = LATENCY_BOUNDS.length + 1;

/** Index of a virtio-blk request type in REQUEST_TYPES. */
export function typeIndex(type: number): number {
  switch (type) {
    case VIRTIO_BLK_T_IN:
      return 0;
    case VIRTIO_BLK_T_OUT:
      return 1;
    case VIRTIO_BLK_T_FLUSH:
      return 2;
    case VIRTIO_BLK_T_GET_ID:
      return 3;
    case VIRTIO_BLK_T_GET_LIFETIME:
      return 4;
    case VIRTIO_BLK_T_DISCARD:
      return 5;
    case VIRTIO_BLK_T_WRITE_ZEROES:
      return 6;
    case VIRTIO_BLK_T_SECURE_ERASE:
      return 7;
    default:
      return 8;
  }
}

export class RequestStats {
  /** Completions: [typeIndex * STATUSES + status]. */
  readonly requests = new Float64Array(TYPES * STATUSES);
  /** Data bytes of requests completed OK: [typeIndex]. */
  readonly bytes = new Float64Array(TYPES);
  /** Latency observations per bucket: [typeIndex * LATENCY_BUCKETS + bucket]. */
  readonly buckets = new Float64Array(TYPES * LATENCY_BUCKETS);
  /** Sum of latencies in seconds: [typeIndex]. */
  readonly seconds = new Float64Array(TYPES);

  /** One completed request: its virtio type, status byte, data bytes and latency. */
  record(type: number, status: number, bytes: number, seconds: number): void {
    const t = typeIndex(type);
    // The handler completes with OK, IOERR or UNSUPP only; anything else counts as an error.
    bump(this.requests, t * STATUSES + (status < STATUSES ? status : VIRTIO_BLK_S_IOERR), 1);
    bump(this.bytes, t, bytes);
    let b = 0;
    while (b < LATENCY_BOUNDS.length && seconds > (LATENCY_BOUNDS[b] as number)) b++;
    bump(this.buckets, t * LATENCY_BUCKETS + b, 1);
    bump(this.seconds, t, seconds);
  }

  add(o: RequestStats): void {
    addInto(this.requests, o.requests);
    addInto(this.bytes, o.bytes);
    addInto(this.buckets, o.buckets);
    addInto(this.seconds, o.seconds);
  }

  /** Completions of type index t with status s. */
  count(t: number, s: number): number {
    return this.requests[t * STATUSES + s] as number;
  }
}

function bump(a: Float64Array, i: number, by: number): void {
  a[i] = (a[i] as number) + by;
}

function addInto(to: Float64Array, from: Float64Array): void {
  for (let i = 0; i < to.length; i++) bump(to, i, from[i] as number);
}

/** Data bytes a request completed OK moved: read or written, the id returned, the sectors discarded or zeroed. */
export function requestBytes(req: Pick<BlkRequest, 'type' | 'dataLen' | 'writableLen' | 'segments'>): number {
  switch (req.type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT:
      return req.dataLen;
    case VIRTIO_BLK_T_GET_ID:
      return req.writableLen - 1; // used.len counts the status byte too
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      const list = req.segments;
      let sectors = 0;
      for (let i = 0; list !== undefined && i < list.count; i++) sectors += list.sectors[i] as number;
      return sectors * SECTOR_SIZE;
    }
    default:
      return 0;
  }
}
