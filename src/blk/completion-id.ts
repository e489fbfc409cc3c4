// Completion ids: the userData an io_uring op carries, and how a completion
// finds its request again.
//
//   userData = (generation * slotCount + slotId) * OPS_PER_SLOT + opIndex
//
// A slot (one per queue and chain head) is reused as soon as its request
// finishes, and a request can finish while one of its ops is still with the
// kernel (an op a failed submit did not hand over is failed at once; a
// drain that gave up abandons the rest). The generation, bumped each time
// the slot takes a new request, makes such a late completion name a request
// that is gone, so it can never be taken for the slot's next one. Every id
// stays below 2^53 (exact in a double, as native checks): the generation
// wraps at `generations`, which for the largest device (64 queues x 1024
// heads) is 2^33 requests per slot.

/** A request has at most this many ops at once (op indices 0..15). */
export const OPS_PER_SLOT = 16;

export class CompletionIds {
  /** Generations before one wraps. */
  readonly generations: number;
  /** Set by decode(): the slot, generation and op index of the last id decoded. */
  slotId = 0;
  generation = 0;
  opIdx = 0;

  constructor(private readonly slotCount: number) {
    this.generations = Math.floor(2 ** 53 / (slotCount * OPS_PER_SLOT));
    if (this.generations < 2) throw new RangeError(`${slotCount} request slots leave no room for generations`);
  }

  /** The generation after `gen`. */
  next(gen: number): number {
    return gen + 1 >= this.generations ? 0 : gen + 1;
  }

  encode(slotId: number, generation: number, opIdx: number): number {
    return (generation * this.slotCount + slotId) * OPS_PER_SLOT + opIdx;
  }

  /** Splits an id into slotId, generation, opIdx (no allocation). */
  decode(userData: number): void {
    const slotAndGen = Math.floor(userData / OPS_PER_SLOT);
    this.opIdx = userData - slotAndGen * OPS_PER_SLOT;
    this.generation = Math.floor(slotAndGen / this.slotCount);
    this.slotId = slotAndGen - this.generation * this.slotCount;
  }
}
