// Serialisation of requests that touch the same host blocks.
//
// A read-modify-write reads whole host blocks, patches the guest's bytes in
// and writes the blocks back. Any other write to those blocks that lands
// between the read and the write-back would be undone by it (the RMW writes
// back stale data). So, on overlapping host-block ranges:
//   RMW   conflicts with RMW and WRITE   (exclusive)
//   WRITE conflicts with RMW             (aligned writes may run together)
//   READ  conflicts with nothing         (padding bytes of a read are discarded)
// Requests on disjoint blocks never wait. Grants are first come, first
// served: a request waits for every earlier conflicting one, granted or not,
// so a stream of new requests cannot starve an earlier RMW.

export const LockMode = { READ: 0, WRITE: 1, RMW: 2 } as const;
export type LockMode = (typeof LockMode)[keyof typeof LockMode];

function conflicts(a: LockMode, b: LockMode): boolean {
  return a === LockMode.RMW ? b !== LockMode.READ : a === LockMode.WRITE && b === LockMode.RMW;
}

interface Entry {
  id: number;
  start: number;
  end: number;
  mode: LockMode;
  granted: boolean;
}

export class RangeLock {
  /** Entries in arrival order (granted and waiting). */
  private entries: Entry[] = [];

  constructor(private readonly onGrant: (id: number) => void) {}

  get size(): number {
    return this.entries.length;
  }

  /**
   * Asks for [start, end) in `mode` for request `id`. Returns true if granted
   * now; otherwise onGrant(id) is called later, from release().
   */
  acquire(id: number, start: number, end: number, mode: LockMode): boolean {
    const e: Entry = { id, start, end, mode, granted: false };
    e.granted = !this.blocked(e, this.entries.length);
    this.entries.push(e);
    return e.granted;
  }

  /** Releases request id's range and grants whatever that unblocks, in order. */
  release(id: number): void {
    const i = this.entries.findIndex((e) => e.id === id);
    if (i < 0) throw new Error(`range lock: request ${id} holds no range`);
    this.entries.splice(i, 1);
    for (let j = i; j < this.entries.length; j++) {
      const e = this.entries[j] as Entry;
      if (e.granted || this.blocked(e, j)) continue;
      e.granted = true;
      this.onGrant(e.id);
    }
  }

  /** Is entry e (at index `before` or to be appended there) blocked by an earlier one? */
  private blocked(e: Entry, before: number): boolean {
    if (e.mode === LockMode.READ) return false;
    for (let j = 0; j < before; j++) {
      const o = this.entries[j] as Entry;
      if (o.start < e.end && e.start < o.end && conflicts(e.mode, o.mode)) return true;
    }
    return false;
  }

  /** Drops everything (the connection is gone). */
  clear(): void {
    this.entries = [];
  }
}
