// Guest RAM and virtqueues that can outlive one front-end connection, as a
// QEMU guest outlives a backend restart (reconnect=1).

import type { GuestMemory } from './guest-memory';
import type { SplitRing } from './split-ring';

/** What a chain in flight resolves or rejects when the back-end returns it (or never will). */
export interface Completion {
  resolve: (usedLen: number) => void;
  reject: (err: Error) => void;
}

/**
 * Guest RAM and virtqueues that outlive a Frontend, as QEMU's guest outlives
 * a backend: the caller owns it and closes it (rejecting chains never
 * completed).
 */
export class GuestState {
  mem: GuestMemory | undefined;
  readonly rings: SplitRing<Completion>[] = [];

  close(): void {
    const err = new Error('guest closed');
    for (const r of this.rings) for (const c of r.abandonAll()) c.reject(err);
    this.mem?.close();
    this.mem = undefined;
  }
}
