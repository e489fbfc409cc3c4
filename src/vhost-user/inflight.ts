// GET_INFLIGHT_FD and SET_INFLIGHT_FD (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD).
//
// The inflight region belongs to the frontend: vublk creates it once when
// asked (a sealed, zeroed memfd), hands it over and keeps nothing; QEMU keeps
// it across backend restarts and hands it back with SET_INFLIGHT_FD on every
// start. The data plane (native) tracks requests in it and recovers from it
// when a ring starts; the layout and its checks live there.

import { native } from '../native/binding';
import type { Inflight } from './message';
import { encodeInflightPayload, encodeReply } from './encode';
import { Request } from './protocol';
import { violation } from './violation';

export interface InflightLimits {
  queues: number;
  maxQueueSize: number;
}

/** The counts GET_INFLIGHT_FD and SET_INFLIGHT_FD carry, checked against the device. */
function checkCounts(what: string, r: Inflight, limits: InflightLimits): void {
  if (r.numQueues < 1 || r.numQueues > limits.queues) {
    throw violation(`${what} num_queues ${r.numQueues} is outside 1..${limits.queues}`);
  }
  if (r.queueSize < 1 || r.queueSize > limits.maxQueueSize) {
    throw violation(`${what} queue_size ${r.queueSize} is outside 1..${limits.maxQueueSize}`);
  }
}

/**
 * GET_INFLIGHT_FD: creates a region for the counts asked for. Returns the
 * reply and the region's fd, which travels with it (the sender closes it).
 */
export function createInflight(r: Inflight, limits: InflightLimits): { reply: Buffer; fd: number } {
  checkCounts('GET_INFLIGHT_FD', r, limits);
  const { fd, mmapSize } = native.inflightCreate(r.numQueues, r.queueSize);
  const payload = encodeInflightPayload({ mmapSize, mmapOffset: 0, numQueues: r.numQueues, queueSize: r.queueSize });
  return { reply: encodeReply(Request.GET_INFLIGHT_FD, payload), fd };
}

/**
 * SET_INFLIGHT_FD, before the session maps the region (which checks the
 * layout): the counts, and every ring stopped, since a running ring tracks
 * its requests in the region it started with.
 */
export function checkSetInflight(rings: { vringStarted(q: number): boolean }, r: Inflight, limits: InflightLimits): void {
  checkCounts('SET_INFLIGHT_FD', r, limits);
  for (let q = 0; q < limits.queues; q++) {
    if (rings.vringStarted(q)) throw violation(`SET_INFLIGHT_FD while queue ${q} runs`);
  }
}
