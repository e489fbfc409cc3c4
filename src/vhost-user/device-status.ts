// The virtio device status byte (VHOST_USER_PROTOCOL_F_STATUS): the frontend
// stores it with SET_STATUS and reads it back with GET_STATUS. vublk keeps it
// and drives nothing from it: rings start and stop with the ring messages.
//
// QEMU 7.2 sends SET_STATUS 0 when it stops the device BEFORE it asks for
// each ring's base (GET_VRING_BASE), so 0 must not reset anything: the rings'
// in-flight requests are still to be drained and their bases reported.

import { log } from '../log';

/** Status bits (VIRTIO 1.2, 2.1 Device Status Field). */
export const DeviceStatus = Object.freeze({
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const);

export class DeviceStatusByte {
  private value = 0;

  constructor(private readonly conn: number) {}

  get(): number {
    return this.value;
  }

  /**
   * Stores status. FEATURES_OK before SET_FEATURES means the device did not
   * accept any features: stored without it, so the driver reading it back
   * sees the device refused (VIRTIO 1.2, 3.1.1 step 6).
   */
  set(status: number, featuresSet: boolean): void {
    let s = status;
    if ((s & DeviceStatus.FEATURES_OK) !== 0 && !featuresSet) {
      s &= ~DeviceStatus.FEATURES_OK;
      log.warn('SET_STATUS sets FEATURES_OK before SET_FEATURES; not accepted', { conn: this.conn, status });
    }
    this.value = s;
  }

  /** RESET_DEVICE: back to 0. */
  reset(): void {
    this.value = 0;
  }
}
