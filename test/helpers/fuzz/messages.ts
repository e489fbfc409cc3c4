// Vhost-user messages for the fuzzer: plausible payloads for every request
// the daemon handles (and some it does not), and mutations of the encoded
// bytes (bit flips, wrong sizes, flags and versions, other request codes,
// cut or padded payloads).

import { encodeMessage } from '../../../src/vhost-user/encode';
import { Flags, HEADER_SIZE, Request } from '../../../src/vhost-user/protocol';
import type { Rng } from './rng';

/** Every request code the protocol names, and a few it does not. */
export const ALL_REQUESTS: readonly number[] = Object.values(Request);

/** Header flags: mostly a well-formed request, sometimes NEED_REPLY. */
export function requestFlags(rng: Rng): number {
  return Flags.VERSION | (rng.chance(0.3) ? Flags.NEED_REPLY : 0);
}

/** A random payload of a random length (for requests the fuzzer has no model of). */
export function randomPayload(rng: Rng): Buffer {
  return rng.bytes(
    rng.weighted<number>([
      [3, 0],
      [3, 8],
      [1, 40],
      [1, rng.int(0, 300)],
    ]),
  );
}

/**
 * Mutates an encoded message. Returns new bytes (the input is not changed)
 * and what was done, for the replay log.
 */
export function mutate(bytes: Buffer, rng: Rng): { bytes: Buffer; what: string } {
  const b = Buffer.from(bytes);
  const kind = rng.int(0, 7);
  switch (kind) {
    case 0: {
      const flips = rng.int(1, 4);
      for (let i = 0; i < flips; i++) {
        const bit = rng.int(0, b.length * 8 - 1);
        b[bit >> 3]! ^= 1 << (bit & 7);
      }
      return { bytes: b, what: `${flips} bit flips` };
    }
    case 1: {
      const flags = rng.pick([0, 2, 3, Flags.VERSION | Flags.REPLY, Flags.VERSION | 0x10, 0xffffffff, rng.u32()]);
      b.writeUInt32LE(flags >>> 0, 4);
      return { bytes: b, what: `flags 0x${flags.toString(16)}` };
    }
    case 2: {
      const size = b.readUInt32LE(8);
      const lie = rng.pick([0, size + 1, Math.max(0, size - 1), size + 8, 0xffffffff, 268, 269, 4096, rng.u32()]);
      b.writeUInt32LE(lie >>> 0, 8);
      return { bytes: b, what: `size field ${lie} (payload ${size})` };
    }
    case 3: {
      const code = rng.pick([0, 41, 42, 50, 100, 0xffff, 0xffffffff, rng.u32(), rng.pick(ALL_REQUESTS)]);
      b.writeUInt32LE(code >>> 0, 0);
      return { bytes: b, what: `request code ${code}` };
    }
    case 4: {
      // Cut the payload, keeping the size field: the rest of the message is
      // whatever the fuzzer sends next.
      const keep = rng.int(HEADER_SIZE, b.length);
      return { bytes: b.subarray(0, keep), what: `cut to ${keep} bytes` };
    }
    case 5: {
      const extra = rng.bytes(rng.int(1, 64));
      const out = Buffer.concat([b, extra]);
      if (rng.chance(0.5)) out.writeUInt32LE(out.length - HEADER_SIZE, 8);
      return { bytes: out, what: `${extra.length} bytes appended` };
    }
    case 6: {
      // Overwrite an aligned payload word with an interesting value.
      if (b.length < HEADER_SIZE + 4) return { bytes: b, what: 'unchanged (no payload)' };
      const at = HEADER_SIZE + 4 * rng.int(0, Math.floor((b.length - HEADER_SIZE) / 4) - 1);
      const v = rng.u32ish();
      b.writeUInt32LE(v >>> 0, at);
      return { bytes: b, what: `word at ${at} = 0x${v.toString(16)}` };
    }
    default: {
      // The payload of another request under this header.
      const other = encodeMessage(rng.pick(ALL_REQUESTS), Flags.VERSION, randomPayload(rng));
      b.copy(other, 0, 0, 4);
      return { bytes: other, what: "another request's payload" };
    }
  }
}

/**
 * A message cut short, sent just before the frontend closes: part of a
 * header, a header alone, or a header and part of its payload.
 */
export function truncated(bytes: Buffer, rng: Rng): { bytes: Buffer; what: string } {
  const len = rng.weighted<number>([
    [1, rng.int(1, HEADER_SIZE - 1)],
    [2, HEADER_SIZE],
    [2, bytes.length > HEADER_SIZE + 1 ? rng.int(HEADER_SIZE + 1, bytes.length - 1) : HEADER_SIZE],
  ]);
  return { bytes: bytes.subarray(0, Math.min(len, bytes.length)), what: `truncated to ${len} of ${bytes.length} bytes, then close` };
}

/** The header fields of encoded bytes (for the fuzzer's model of the daemon's state). */
export function header(bytes: Buffer): { request: number; flags: number; size: number } | undefined {
  if (bytes.length < HEADER_SIZE) return undefined;
  return { request: bytes.readUInt32LE(0), flags: bytes.readUInt32LE(4), size: bytes.readUInt32LE(8) };
}
