// Adaptive polling for a data-plane worker: after a batch an event handler
// delivered, keep checking the rings and the completion queue in bounded
// passes (session.poll) while they find work, then sleep on the eventfds.
//
// Each pass runs from setImmediate, so control messages and timers still get
// their turn between passes. The bound adapts like QEMU's aio poll_ns: it
// grows when a wake-up came soon after the worker went to sleep (polling a
// little longer would have caught it without the wake-up), and shrinks when
// the sleep was long (polling would have burnt CPU for nothing). An idle
// worker runs no pass at all: it sleeps until an eventfd fires.
//
// session.poll() suppresses ring notifications while it polls and re-enables
// them with a barrier and a re-check before it returns, so a kick published
// while the worker decides to sleep is found by that re-check.

/** First bound once polling pays off, in ns (QEMU starts at 4 us too). */
const INITIAL_NS = 4_000;
const GROW = 2;
const SHRINK = 2;

export class PollLoop {
  /** Bound of the next pass in ns; 0: do not poll after the next batch. */
  private ns = 0;
  private scheduled = false;
  private polling = false;
  private stopped = false;
  /** When the last pass found nothing (the worker went to sleep); 0: awake. */
  private sleptAt = 0n;

  /** poll(ns): one pass of at most ns; returns how many things it delivered (0: none). */
  constructor(
    private readonly poll: (ns: number) => number,
    readonly maxNs: number,
  ) {}

  /** The current bound in ns (tests, logs). */
  get boundNs(): number {
    return this.ns;
  }

  /** An event handler delivered a batch (a batch from a poll pass is ignored). */
  woken(): void {
    if (this.polling || this.stopped) return;
    if (this.sleptAt !== 0n) {
      this.adapt(Number(process.hrtime.bigint() - this.sleptAt));
      this.sleptAt = 0n;
    }
    if (this.scheduled) return;
    if (this.ns > 0) {
      this.scheduled = true;
      setImmediate(this.pass);
    } else {
      this.sleptAt = process.hrtime.bigint(); // no pass: asleep after this batch
    }
  }

  /** No more passes (the connection is closing). */
  stop(): void {
    this.stopped = true;
  }

  /** QEMU's rule: slept longer than the bound allows -> shrink; woken within it -> grow. */
  private adapt(sleptNs: number): void {
    if (sleptNs > this.maxNs) {
      this.ns = this.ns / SHRINK < INITIAL_NS ? 0 : Math.floor(this.ns / SHRINK);
    } else if (sleptNs > this.ns) {
      this.ns = Math.min(this.maxNs, this.ns === 0 ? Math.min(INITIAL_NS, this.maxNs) : this.ns * GROW);
    }
  }

  private readonly pass = (): void => {
    this.scheduled = false;
    if (this.stopped) return;
    this.polling = true;
    let found: number;
    try {
      found = this.poll(this.ns);
    } finally {
      this.polling = false;
    }
    if (found > 0) {
      this.scheduled = true;
      setImmediate(this.pass);
    } else {
      this.sleptAt = process.hrtime.bigint();
    }
  };
}
