// The fuzzer's random messages: any request the daemon handles (and some it
// does not), with payloads that mostly parse and values drawn from what
// breaks state machines (queue indices one past the end, sizes that are no
// power of two, regions over memfds of other sizes, ring addresses
// misaligned or outside guest memory), and random fds attached.

import { encodeConfigPayload, encodeMessage, encodeU64Payload, encodeVringStatePayload } from '../../../src/vhost-user/encode';
import {
  encodeMemRegPayload,
  encodeMemTablePayload,
  encodeVringAddrPayload,
  encodeVringFilePayload,
  type WireRegion,
} from '../../../src/frontend/encode';
import { Request, requestName } from '../../../src/vhost-user/protocol';
import { DEFAULT_PROTOCOL_FEATURES } from '../../../src/frontend/features';
import type { GuestMemory } from '../../../src/frontend/guest-memory';
import type { FdKind, FuzzFd } from './fds';
import { randomPayload, requestFlags } from './messages';
import { ringBytes, someGpa } from './ring-writer';
import type { Rng } from './rng';

const PAGE = 4096;
const MiB = 1 << 20;

/** What a connection lends the generator. */
export interface MessageSource {
  readonly rng: Rng;
  /** Guest memory of the connection (its regions are the valid table), if it has any yet. */
  readonly mem: GuestMemory | undefined;
  /** Virtio features the daemon offered (or the fuzzer's guess). */
  readonly offered: bigint;
  readonly queues: number;
  /** A new fd of this kind (or of a random kind the run allows). */
  fd(kind?: FdKind): FuzzFd;
  /** Memfds sent in made-up regions (finding 2 shrinks them). */
  readonly foreignMemfds: FuzzFd[];
}

/** Region descriptions: ours (valid), or made up with memfds of random sizes. */
function regions(src: MessageSource, n: number): { regions: WireRegion[]; fds: FuzzFd[] } {
  const rng = src.rng;
  const mem = src.mem;
  if (mem && rng.chance(0.4)) {
    const rs = mem.regions.slice(0, n || mem.regions.length);
    return { regions: rs, fds: rs.map((r) => ({ fd: r.fd, kind: 'memfd' as const })) };
  }
  const regions: WireRegion[] = [];
  const fds: FuzzFd[] = [];
  let gpa = rng.chance(0.7) ? 0x1000_0000 : Number(rng.u64() & 0xffff_ffff_f000n);
  for (let i = 0; i < n; i++) {
    const f = rng.chance(0.8) ? src.fd('memfd') : src.fd();
    const size =
      f.size !== undefined && rng.chance(0.6)
        ? f.size
        : rng.weighted<number | bigint>([
            [3, rng.int(1, 512) * PAGE],
            [1, rng.u64()],
            [1, 0],
          ]);
    const mmapOffset = rng.weighted<number | bigint>([
      [6, 0],
      [1, PAGE],
      [1, rng.u64()],
    ]);
    regions.push({ gpa, size, uva: 0x7e00_0000_0000 + i * 2 ** 32, mmapOffset });
    fds.push(f);
    if (f.kind === 'memfd') src.foreignMemfds.push(f);
    gpa += typeof size === 'number' ? size : 2 * MiB;
  }
  return { regions, fds };
}

function queueIndex(src: MessageSource): number {
  const rng = src.rng;
  return rng.weighted<number>([
    [8, rng.int(0, src.queues - 1)],
    [1, src.queues],
    [1, rng.u32ish()],
  ]);
}

/** A random request with a payload that mostly parses (the daemon's state machine is the target), not yet sent. */
export function randomMessage(src: MessageSource): { bytes: Buffer; fds: FuzzFd[]; what: string } {
  const rng = src.rng;
  const mem = src.mem;
  const req = rng.weighted<number>([
    [2, Request.GET_FEATURES],
    [2, Request.SET_FEATURES],
    [1, Request.SET_OWNER],
    [1, Request.RESET_OWNER],
    [2, Request.GET_PROTOCOL_FEATURES],
    [2, Request.SET_PROTOCOL_FEATURES],
    [3, Request.SET_MEM_TABLE],
    [3, Request.SET_VRING_NUM],
    [3, Request.SET_VRING_ADDR],
    [2, Request.SET_VRING_BASE],
    [3, Request.GET_VRING_BASE],
    [4, Request.SET_VRING_KICK],
    [4, Request.SET_VRING_CALL],
    [2, Request.SET_VRING_ERR],
    [3, Request.SET_VRING_ENABLE],
    [1, Request.GET_QUEUE_NUM],
    [2, Request.GET_CONFIG],
    [2, Request.SET_CONFIG],
    [1, Request.SET_BACKEND_REQ_FD],
    [1, Request.GET_MAX_MEM_SLOTS],
    [3, Request.ADD_MEM_REG],
    [2, Request.REM_MEM_REG],
    [2, rng.int(0, 60)],
  ]);
  let payload: Buffer;
  let fds: FuzzFd[] = [];
  switch (req) {
    case Request.SET_FEATURES:
      payload = encodeU64Payload(rng.chance(0.6) ? src.offered & rng.u64() : rng.u64());
      break;
    case Request.SET_PROTOCOL_FEATURES:
      payload = encodeU64Payload(rng.chance(0.6) ? DEFAULT_PROTOCOL_FEATURES & rng.u64() : rng.u64());
      break;
    case Request.SET_MEM_TABLE: {
      const n = rng.weighted<number>([
        [6, mem?.regions.length ?? 1],
        [2, rng.int(0, 8)],
        [1, 9],
      ]);
      const r = regions(src, Math.min(n, 8));
      payload = encodeMemTablePayload(r.regions, rng.chance(0.9) ? r.regions.length : rng.int(0, 12));
      fds = rng.chance(0.9) ? r.fds : r.fds.slice(0, rng.int(0, r.fds.length));
      break;
    }
    case Request.ADD_MEM_REG:
    case Request.REM_MEM_REG: {
      const r = regions(src, 1);
      payload = encodeMemRegPayload(r.regions[0]!); // one asked for
      fds = req === Request.ADD_MEM_REG || rng.chance(0.3) ? r.fds : [];
      break;
    }
    case Request.SET_VRING_NUM:
      payload = encodeVringStatePayload(
        queueIndex(src),
        rng.weighted<number>([
          [6, 1 << rng.int(0, 10)],
          [1, 0],
          [1, rng.u32ish()],
        ]),
      );
      break;
    case Request.SET_VRING_BASE:
    case Request.SET_VRING_ENABLE:
    case Request.GET_VRING_BASE:
      payload = encodeVringStatePayload(
        queueIndex(src),
        rng.weighted<number>([
          [4, rng.int(0, 1)],
          [2, rng.int(0, 0xffff)],
          [1, rng.u32ish()],
        ]),
      );
      break;
    case Request.SET_VRING_ADDR: {
      const gpaToUva = (len: number): number | bigint => {
        if (!mem || rng.chance(0.15)) return rng.u64();
        const gpa = someGpa(mem, rng, len);
        // Misaligned now and then; in guest memory, translated to its uva.
        return typeof gpa === 'bigint' ? gpa : mem.gpaToUva(gpa) + (rng.chance(0.1) ? rng.int(1, 15) : 0);
      };
      const num = 256;
      const b = ringBytes(num);
      payload = encodeVringAddrPayload({
        index: queueIndex(src),
        flags: rng.chance(0.9) ? 0 : rng.u32ish(),
        desc: gpaToUva(b.desc),
        used: gpaToUva(b.used),
        avail: gpaToUva(b.avail),
        log: rng.u64(),
      });
      break;
    }
    case Request.SET_VRING_KICK:
    case Request.SET_VRING_CALL:
    case Request.SET_VRING_ERR: {
      const noFd = rng.chance(0.1);
      payload = encodeVringFilePayload(queueIndex(src), noFd);
      if (rng.chance(0.05)) payload = encodeU64Payload(rng.u64());
      fds = rng.weighted<FuzzFd[]>([
        [8, noFd ? [] : [src.fd()]],
        [1, []],
        [1, [src.fd(), src.fd()]],
      ]);
      break;
    }
    case Request.GET_CONFIG:
    case Request.SET_CONFIG: {
      const size = rng.weighted<number>([
        [4, 60],
        [2, rng.int(0, 256)],
        [1, rng.int(257, 400)],
      ]);
      const offset = rng.weighted<number>([
        [4, 0],
        [2, rng.int(0, 256)],
        [1, rng.u32ish()],
      ]);
      payload = encodeConfigPayload(
        offset,
        rng.weighted<number>([
          [4, 0],
          [1, 1],
          [1, rng.u32ish()],
        ]),
        rng.bytes(Math.min(size, 300)),
        rng.chance(0.9) ? undefined : rng.u32ish(),
      );
      break;
    }
    case Request.SET_BACKEND_REQ_FD:
      payload = Buffer.alloc(0);
      fds = [src.fd()];
      break;
    case Request.GET_FEATURES:
    case Request.GET_PROTOCOL_FEATURES:
    case Request.SET_OWNER:
    case Request.RESET_OWNER:
    case Request.GET_QUEUE_NUM:
    case Request.GET_MAX_MEM_SLOTS:
      payload = Buffer.alloc(0);
      break;
    default:
      payload = randomPayload(rng);
  }
  if (fds.length === 0 && rng.chance(0.05)) fds = Array.from({ length: rng.int(1, 10) }, () => src.fd());
  return {
    bytes: encodeMessage(req, requestFlags(rng), payload),
    fds,
    what: `${requestName(req)} ${payload.toString('hex').slice(0, 96)}`,
  };
}
