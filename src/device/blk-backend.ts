// The virtio-blk device as a vhost-user backend: what BlkDevice offers, and a
// data plane for every connection (on worker threads, or in-thread with --workers 0).

import type { DataPlaneEvents, VhostUserBackend, VhostUserDataPlane } from '../vhost-user/backend';
import type { BlkDevice } from './blk-device';
import { BlkDataPlane } from './blk-data-plane';
import { WorkerDataPlane } from './worker-data-plane';

export class BlkBackend implements VhostUserBackend {
  constructor(readonly device: BlkDevice) {}

  get features(): bigint {
    return this.device.features;
  }

  get protocolFeatures(): bigint {
    return this.device.protocolFeatures;
  }

  get queues(): number {
    return this.device.queues;
  }

  get maxQueueSize(): number {
    return this.device.maxQueueSize;
  }

  connect(conn: number, events: DataPlaneEvents): VhostUserDataPlane {
    if (this.device.workers > 0) return new WorkerDataPlane(this.device, conn, events);
    return new BlkDataPlane(this.device, conn, events, { config: this.device });
  }

  countViolation(): void {
    this.device.stats.violations++;
  }
}
