// The virtio-blk device as a vhost-user backend: what BlkDevice offers, and a
// data plane for every connection (on worker threads, or in-thread with --workers 0).

import type { DataPlaneEvents, VhostUserBackend, VhostUserDataPlane } from '../vhost-user/backend';
import type { BlkDevice } from './blk-device';
import { BlkDataPlane } from './blk-data-plane';
import { WorkerDataPlane } from './worker-data-plane';
import { WorkerPool } from './worker-pool';

export class BlkBackend implements VhostUserBackend {
  /** The data-plane worker threads every connection uses (none with --workers 0). */
  private readonly pool: WorkerPool | undefined;

  constructor(readonly device: BlkDevice) {
    this.pool = device.workers > 0 ? new WorkerPool(device) : undefined;
  }

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
    if (this.pool !== undefined) return new WorkerDataPlane(this.device, conn, events, this.pool);
    return new BlkDataPlane(this.device, conn, events, { config: this.device });
  }

  countViolation(): void {
    this.device.stats.violations++;
  }
}
