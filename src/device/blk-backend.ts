// The virtio-blk device as a vhost-user backend: what BlkDevice offers, and a
// BlkDataPlane for every connection.

import type { DataPlaneEvents, VhostUserBackend, VhostUserDataPlane } from '../vhost-user/backend';
import type { BlkDevice } from './blk-device';
import { BlkDataPlane } from './blk-data-plane';

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
    return new BlkDataPlane(this.device, conn, events);
  }

  countViolation(): void {
    this.device.stats.violations++;
  }
}
