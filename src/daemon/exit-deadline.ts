// The bound on a shutdown: once SIGTERM or SIGINT has started it, vublk is
// gone within the drain bound plus EXIT_MARGIN_MS, whatever it waits for.
//
// A connection waits at most drainTimeoutMs() for its requests, but what
// comes after cannot be bounded from JS: librbd holds an op until an OSD
// answers and rbd_close releases the exclusive lock through the cluster, so
// with the cluster unreachable a thread (the main one, or a data-plane
// worker's) blocks in native code for ever, and a JS timer on a blocked
// thread never fires. native.exitDeadline's own thread ends the process
// then, after one error line that says why. The requests it abandons were
// never completed to the guest: QEMU resubmits them from its inflight region
// to the next vublk. The default total (40 s) stays under the systemd unit's
// TimeoutStopSec=45s, so the line is written before systemd SIGKILLs.

import { drainTimeoutMs } from '../device/drain';
import { renderErrorLine } from '../log';
import { native } from '../native/binding';

export const EXIT_MARGIN_MS = 10_000;

/** Arms the deadline (once per process: it cannot be disarmed). */
export function armExitDeadline(env: NodeJS.ProcessEnv = process.env): void {
  const ms = drainTimeoutMs(env) + EXIT_MARGIN_MS;
  native.exitDeadline(
    ms,
    renderErrorLine('shutdown did not finish in time; exiting without closing the disk', {
      waitedMs: ms,
      hint: 'a disk op or close never completed (for an rbd: disk, is the Ceph cluster reachable?)',
    }),
  );
}
