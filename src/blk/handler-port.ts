// What a request family (rw-requests.ts, zero-discard-requests.ts) needs from
// the handler, which implements it; and the request phases they share.

import type { BlkRequest } from './request';
import type { BouncePool } from './bounce-pool';
import type { QueueCounters } from './counters';
import type { DiskView } from './disk-view';
import type { RequestOps } from './request-ops';
import type { DataPlane } from './shared-arrays';
import type { RwPlanner } from '../align/rw-plan';
import type { RangeLock } from '../align/range-lock';

/** req.phase: where a request is between its ops. */
export const PHASE_IDLE = 0;
export const PHASE_RMW_READ = 1;
export const PHASE_MAIN = 2;
export const PHASE_DONE = 3;
export const PHASE_SYNC = 4;

export const EIO = 5;

export interface HandlerPort {
  /** The device's disk (capacity and the highest write accepted live here). */
  readonly disk: DiskView;
  /** The alignment plan: the one call a request makes into src/align/. */
  readonly planner: RwPlanner;
  readonly ops: RequestOps;
  readonly bounce: BouncePool;
  /** Serialises writes that share host blocks with a read-modify-write; a grant issues the request. */
  readonly lock: Pick<RangeLock, 'acquire' | 'release'>;
  counters(q: number): QueueCounters;
  /** True while the guest has the write cache on. */
  writeback(): boolean;
  /** The data plane, while attached. */
  plane(): DataPlane | undefined;
  /** No bounce space now: issue req again when a completion frees some, oldest first. */
  waitForBounce(req: BlkRequest): void;
  /** The one completion funnel. */
  finish(req: BlkRequest, status: number): void;
}
