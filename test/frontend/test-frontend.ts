// The in-repo front-end with the hooks only tests need: raw (malformed)
// bytes on the socket, and reading of the socket or back-end channel paused.

import { DEFAULT_TIMEOUT_MS, connectSocket } from '../../src/frontend/connection';
import { Frontend } from '../../src/frontend/frontend';

export class TestFrontend extends Frontend {
  /** Connects like Frontend.connect, with the test hooks. */
  static override async connect(socketPath: string, opts: { timeoutMs?: number } = {}): Promise<TestFrontend> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new TestFrontend(await connectSocket(socketPath, timeoutMs), timeoutMs);
  }

  /** Sends bytes as they are, fds attached to the first byte (for malformed-message tests). */
  sendRaw(bytes: Uint8Array, fds: number[] = []): void {
    this.write(bytes, fds);
  }

  /**
   * Stops (false) or resumes (true) reading the socket: replies then pile up
   * in the kernel, as with a frontend that does not read them.
   */
  setReading(on: boolean): void {
    if (!this.isOpen) return;
    if (on) this.watcher.start();
    else this.watcher.stop();
  }

  /** Stops (false) or resumes (true) reading the back-end channel: its messages then pile up in the kernel. */
  setBackendReading(on: boolean): void {
    this.backend?.setReading(on);
  }
}
