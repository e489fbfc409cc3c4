// One fuzzed frontend connection: a QEMU-like start-up (done by the in-repo
// frontend, or message by message with steps skipped and mutated), then a
// random mix of messages, mutated messages, fd swaps, ring writes, kicks and
// real I/O, and sometimes a truncated message before the close.
//
// The fuzzer keeps a small model of what it told the daemon (ring sizes,
// which rings run, which memfds are mapped) only to hold back the inputs
// whose finding switch is off (findings.ts); everything else goes out as
// generated.

import fs from 'node:fs';
import { native } from '../../../src/native/binding';
import { encodeConfigPayload, encodeMessage, encodeU64Payload, encodeVringStatePayload } from '../../../src/vhost-user/encode';
import { encodeMemRegPayload, encodeMemTablePayload, encodeVringAddrPayload, encodeVringFilePayload } from '../../../src/frontend/encode';
import { Flags, HEADER_SIZE, ProtocolFeature, Request, featureBit, requestName } from '../../../src/vhost-user/protocol';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../../../src/virtio/constants';
import { BlkDriver } from '../../../src/frontend/blk-driver';
import { DEFAULT_BLK_FEATURES, DEFAULT_PROTOCOL_FEATURES, VirtioFeature } from '../../../src/frontend/features';
import { TestFrontend } from '../../frontend/test-frontend';
import { GuestMemory } from '../../../src/frontend/guest-memory';
import { until } from '../../integration/harness';
import { BLOCKING_KINDS, FD_KINDS, HUNG_UP_KINDS, type FdFactory, type FdKind, type FuzzFd } from './fds';
import type { FindingKey } from './findings';
import { header, mutate, requestFlags, truncated } from './messages';
import { randomMessage, type MessageSource } from './random-message';
import { CANARY_BYTES, RawRing, ringBytes, splitRingTarget, writeRandomChain, type RingTarget } from './ring-writer';
import type { Rng } from './rng';

export interface FuzzTarget {
  socket: string;
  /** The daemon's pid (its /proc/PID/io tells a spinning loop). */
  pid: number;
  queues: number;
  maxQueueSize: number;
  capacitySectors: number;
}

export interface ConnectionReport {
  /** What was sent and done, in order (for replaying a failure). */
  actions: string[];
  /** The most read(2) calls the daemon made in an idle window (measured when a kick fd was set). */
  idleReads: number | undefined;
  /** Raw connections: where the daemon wrote into the canary (guest memory nothing pointed at), if it did. */
  canaryHit: number | undefined;
  /** Finding 1: the SET_VRING_NUM that grew a running ring, when the daemon kept the connection after it. */
  acceptedGrow: string | undefined;
  /** Rounds of real I/O (write, read, flush) that completed. */
  ioDone: number;
  /** Errors of the fuzzer's own steps other than the daemon hanging up (should stay empty). */
  scriptErrors: string[];
}

const PAGE = 4096;
const KiB = 1024;
const MiB = 1 << 20;
/** A read(2) count in the idle window above this means the loop spins (an idle daemon makes none). */
export const SPIN_READS = 500;
const IDLE_WINDOW_MS = 50;

interface QueueModel {
  /** The size the daemon was last told (SET_VRING_NUM). */
  num: number;
  /** The size its ring addresses were last checked for (ring started or re-mapped). */
  mappedNum: number;
  started: boolean;
  /** An eventfd we hold that is this queue's kick fd in the daemon. */
  kick: number | undefined;
}

function regionSizes(rng: Rng): number[] {
  const n = rng.int(1, 3);
  return Array.from({ length: n }, () => rng.pick([64 * KiB, 256 * KiB, MiB, 2 * MiB]));
}

function readSyscalls(pid: number): number {
  const m = /syscr:\s*(\d+)/.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

class FuzzConnection implements MessageSource {
  readonly actions: string[] = [];
  readonly scriptErrors: string[] = [];
  mem: GuestMemory | undefined;
  /** Whether we may still touch `mem` (a memfd of it was truncated: we would SIGBUS ourselves). */
  memLive = true;
  mode: 'qemu' | 'raw' = 'raw';
  rings: (RingTarget | undefined)[] = [];
  readonly model: QueueModel[];
  kickSent = false;
  /** Raw connections: the canary's gpa (see CANARY_BYTES); cleared once a mutated message may have pointed anything there. */
  canaryGpa: number | undefined;
  /** A mutated message went out: the model of the daemon's rings may be wrong from here on. */
  modelUnsure = false;
  /** The random phase is over (the last step needs nothing after it). */
  done = false;
  /** Set when a running ring was grown (finding 1): the daemon must then hang up. */
  grewRunningRing: string | undefined;
  /** The most read(2) calls seen in one idle window (undefined: never measured). */
  maxIdleReads: number | undefined;
  /** Real requests that completed (the connection got deep enough to serve I/O). */
  ioDone = 0;
  offered =
    DEFAULT_BLK_FEATURES |
    featureBit(VirtioFeature.RING_EVENT_IDX) |
    featureBit(VirtioFeature.RING_INDIRECT_DESC) |
    featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
  /** Memfds the daemon may have mapped that we do not map ourselves (safe to truncate). */
  readonly foreignMemfds: FuzzFd[] = [];

  constructor(
    readonly fe: TestFrontend,
    readonly rng: Rng,
    readonly target: FuzzTarget,
    readonly fds: FdFactory,
    readonly findings: Set<FindingKey>,
  ) {
    this.model = Array.from({ length: target.queues + 1 }, () => ({ num: 0, mappedNum: 0, started: false, kick: undefined }));
  }

  get queues(): number {
    return this.target.queues;
  }

  log(s: string): void {
    this.actions.push(s);
  }

  // ------------------------------------------------------------ sending

  /** fd kinds this run may create (a kind whose finding switch is off is never made). */
  private kinds(): FdKind[] {
    return FD_KINDS.filter(
      (k) =>
        (this.findings.has('blocking-call-fd') || !BLOCKING_KINDS.has(k)) &&
        (this.findings.has('hung-up-kick-fd') || !HUNG_UP_KINDS.has(k)),
    );
  }

  fd(kind?: FdKind): FuzzFd {
    const k =
      kind ??
      this.rng.weighted<FdKind>([
        [6, 'eventfd'],
        [6, this.rng.pick(this.kinds())],
      ]);
    return this.fds.make(k, this.rng);
  }

  /** Sends bytes with fds unless the model says they reach a finding that is switched off. */
  send(bytes: Buffer, fds: FuzzFd[], what: string): void {
    const h = header(bytes);
    const fdNote = fds.length ? ` fds[${fds.map((f) => f.kind + (f.size !== undefined ? `:${f.size}` : '')).join(',')}]` : '';
    if (h && !this.allowed(h, bytes, fds)) {
      this.log(`held back (switch off): ${what}`);
      return;
    }
    this.log(`${what}${fdNote}`);
    this.fe.sendRaw(
      bytes,
      fds.map((f) => f.fd),
    );
  }

  private allowed(h: { request: number; flags: number; size: number }, bytes: Buffer, fds: FuzzFd[]): boolean {
    const wellFormed = (h.flags & Flags.VERSION_MASK) === Flags.VERSION && (h.flags & Flags.REPLY) === 0 && bytes.length >= HEADER_SIZE + 8;
    if (!wellFormed) return true; // the daemon refuses it before acting on it
    const a = bytes.readUInt32LE(HEADER_SIZE);
    const b = bytes.readUInt32LE(HEADER_SIZE + 4);
    const q = h.request === Request.SET_VRING_KICK ? a & 0xff : a;
    const m = q < this.target.queues ? this.model[q] : undefined;
    switch (h.request) {
      case Request.SET_VRING_NUM:
        if (!m || h.size !== 8) break;
        if (m.started && b > m.mappedNum && !this.findings.has('num-on-running-ring')) return false;
        m.num = b;
        break;
      case Request.SET_VRING_KICK:
        if (m && fds.length > 0 && (a & 0x100) === 0) {
          m.started = true;
          m.mappedNum = m.num;
          this.kickSent = true;
          m.kick = fds[0]!.kind === 'eventfd' ? fds[0]!.fd : undefined;
        }
        break;
      case Request.SET_VRING_ADDR:
        if (m?.started) m.mappedNum = m.num;
        break;
      case Request.GET_VRING_BASE:
        if (m) m.started = false;
        break;
      case Request.RESET_OWNER:
        for (const x of this.model) x.started = false;
        break;
      case Request.SET_MEM_TABLE:
      case Request.ADD_MEM_REG:
      case Request.REM_MEM_REG:
        for (const x of this.model) if (x.started) x.mappedNum = Math.min(x.mappedNum, x.num);
        break;
    }
    return true;
  }

  async reply(timeoutMs = 1000): Promise<Buffer | undefined> {
    try {
      return (await this.fe.recvReply(undefined, timeoutMs)).payload;
    } catch {
      return undefined;
    }
  }

  // ------------------------------------------------------------ start-up

  /** The in-repo frontend's QEMU start-up: a valid, running device. */
  async qemuSetup(): Promise<void> {
    this.mode = 'qemu';
    const queues = this.rng.int(1, this.target.queues);
    const queueSize = 1 << this.rng.int(0, Math.log2(this.target.maxQueueSize));
    const opts = {
      queues,
      queueSize,
      memory: { regions: regionSizes(this.rng).map((s) => Math.max(s, MiB)) },
      memTable: this.rng.pick(['set-mem-table', 'add-mem-reg', 'auto'] as const),
      eventIdx: this.rng.pick([true, false, undefined]),
      indirect: this.rng.pick([true, false, undefined]),
      qemuInitNotifiers: this.rng.chance(0.7),
      needReplyAll: this.rng.chance(0.3),
    };
    this.log(`qemu setup ${JSON.stringify(opts)}`);
    await this.fe.setup(opts);
    this.mem = this.fe.mem;
    for (let q = 0; q < queues; q++) {
      this.rings[q] = splitRingTarget(this.fe.queue(q).ring, this.fe.mem!); // set up above
      this.model[q] = { num: queueSize, mappedNum: queueSize, started: true, kick: this.fe.queue(q).kickFd };
    }
    this.kickSent = true;
  }

  /** The same start-up message by message, each step skipped, mutated or preceded by noise now and then. */
  async rawStartup(): Promise<void> {
    const rng = this.rng;
    this.mem = GuestMemory.create({
      regions: regionSizes(rng),
      gap: rng.pick([0, 0, PAGE, MiB]),
      fdLayout: rng.pick(['separate', 'shared-fd'] as const),
    });
    const mem = this.mem;
    // Region 0 is at least 64 KiB and the allocator starts at its base.
    this.canaryGpa = mem.alloc(CANARY_BYTES, PAGE, { region: 0 });
    if (this.canaryGpa !== mem.regions[0]!.gpa) throw new Error('the canary must open region 0');
    const queues = rng.int(1, this.target.queues);
    const num = 1 << rng.int(0, Math.log2(this.target.maxQueueSize));
    const protocol = DEFAULT_PROTOCOL_FEATURES & ~(rng.chance(0.5) ? featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS) : 0n);
    let features = 0n;
    const steps: [string, () => Promise<void> | void][] = [
      [
        'GET_FEATURES',
        async () => {
          this.send(encodeMessage(Request.GET_FEATURES, Flags.VERSION), [], 'GET_FEATURES');
          const r = await this.reply();
          if (r?.length === 8) this.offered = r.readBigUInt64LE(0);
        },
      ],
      ['GET_PROTOCOL_FEATURES', () => this.msg(Request.GET_PROTOCOL_FEATURES)],
      ['SET_PROTOCOL_FEATURES', () => this.msg(Request.SET_PROTOCOL_FEATURES, encodeU64Payload(protocol))],
      ['GET_QUEUE_NUM', () => this.msg(Request.GET_QUEUE_NUM)],
      ['GET_MAX_MEM_SLOTS', () => this.msg(Request.GET_MAX_MEM_SLOTS)],
      ['SET_BACKEND_REQ_FD', () => this.msg(Request.SET_BACKEND_REQ_FD, Buffer.alloc(0), [this.fd()])],
      ['SET_OWNER', () => this.msg(Request.SET_OWNER)],
      ['GET_FEATURES', () => this.msg(Request.GET_FEATURES)],
      [
        'init notifiers',
        () => {
          for (let q = 0; q < queues; q++) {
            this.msg(Request.SET_VRING_CALL, encodeVringFilePayload(q, false), [this.fd()]);
            this.msg(Request.SET_VRING_ERR, encodeVringFilePayload(q, false), [this.fd()]);
          }
        },
      ],
      ['GET_CONFIG', () => this.msg(Request.GET_CONFIG, encodeConfigPayload(0, 0, Buffer.alloc(60)))],
      [
        'SET_FEATURES',
        () => {
          features =
            this.offered &
            (DEFAULT_BLK_FEATURES |
              featureBit(VHOST_USER_F_PROTOCOL_FEATURES) |
              featureBit(VirtioFeature.RING_EVENT_IDX) |
              featureBit(VirtioFeature.RING_INDIRECT_DESC));
          if (rng.chance(0.3)) features &= ~featureBit(VirtioFeature.RING_EVENT_IDX);
          this.msg(Request.SET_FEATURES, encodeU64Payload(features));
        },
      ],
      [
        'memory',
        () => {
          if ((protocol & featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS)) !== 0n && rng.chance(0.5)) {
            for (const r of mem.regions) this.msg(Request.ADD_MEM_REG, encodeMemRegPayload(r), [{ fd: r.fd, kind: 'memfd' }]);
          } else {
            this.msg(
              Request.SET_MEM_TABLE,
              encodeMemTablePayload(mem.regions),
              mem.regions.map((r) => ({ fd: r.fd, kind: 'memfd' as const })),
            );
          }
        },
      ],
      [
        'rings',
        () => {
          for (let q = 0; q < queues; q++) {
            const ring = this.placeRing(num);
            this.rings[q] = ring;
            this.msg(Request.SET_VRING_NUM, encodeVringStatePayload(q, num));
            this.msg(Request.SET_VRING_BASE, encodeVringStatePayload(q, 0));
            this.msg(
              Request.SET_VRING_ADDR,
              encodeVringAddrPayload({
                index: q,
                desc: mem.gpaToUva(ring.descGpa),
                used: mem.gpaToUva(ring.usedGpa),
                avail: mem.gpaToUva(ring.availGpa),
              }),
            );
            this.msg(Request.SET_VRING_KICK, encodeVringFilePayload(q, false), [this.fd()]);
            this.msg(Request.SET_VRING_CALL, encodeVringFilePayload(q, false), [this.fd()]);
          }
        },
      ],
      [
        'enable',
        () => {
          for (let q = 0; q < queues; q++) this.msg(Request.SET_VRING_ENABLE, encodeVringStatePayload(q, 1));
        },
      ],
    ];
    for (const [name, step] of steps) {
      if (!this.fe.isOpen) return;
      if (rng.chance(0.05)) this.randomMessage();
      if (rng.chance(0.05)) {
        this.log(`skip ${name}`);
        continue;
      }
      if (rng.chance(0.06)) this.mutatedMessage();
      else await step();
    }
  }

  /** Places a ring of num entries: from the allocator, or ending exactly at the end of a region. */
  private placeRing(num: number): RingTarget {
    const mem = this.mem!; // rawStartup made it
    const bytes = ringBytes(num);
    if (this.rng.chance(0.5)) {
      const r = this.rng.pick(mem.regions);
      const used = (r.gpa + r.size - bytes.used) & ~3;
      const avail = (used - bytes.avail) & ~1;
      const desc = (avail - bytes.desc) & ~15;
      this.log(`ring of ${num} at the end of region ${r.index}`);
      return new RawRing(mem, num, desc, avail, used);
    }
    return new RawRing(mem, num, mem.alloc(bytes.desc, 16), mem.alloc(bytes.avail, 2), mem.alloc(bytes.used, 4));
  }

  /** A well-formed message of the given request (payload and fds as given). */
  msg(request: number, payload: Buffer = Buffer.alloc(0), fds: FuzzFd[] = []): void {
    this.send(encodeMessage(request, requestFlags(this.rng), payload), fds, requestName(request));
  }

  // ------------------------------------------------------------ random messages

  /** A random, mostly parseable message, sent. */
  randomMessage(): void {
    const m = randomMessage(this);
    this.send(m.bytes, m.fds, m.what);
  }

  /** A random message, mutated on the wire. */
  mutatedMessage(): void {
    const m = randomMessage(this);
    const x = mutate(m.bytes, this.rng);
    this.canaryGpa = undefined; // a mutated address may point anywhere
    this.modelUnsure = true; // a cut or re-typed message: the daemon may read it otherwise
    this.send(x.bytes, m.fds, `mutated (${x.what}) ${m.what}`);
  }

  /** A random message cut short, just before the close. */
  truncatedMessage(): void {
    const m = randomMessage(this);
    const x = truncated(m.bytes, this.rng);
    this.send(x.bytes, this.rng.chance(0.5) ? m.fds : [], `${x.what}: ${m.what}`);
  }

  // ------------------------------------------------------------ rings and I/O

  private kick(q: number): void {
    const k = this.model[q]?.kick;
    if (k === undefined) return;
    try {
      native.eventfdWrite(k, 1);
      this.log(`kick ${q}`);
    } catch {
      // the daemon's copy is what matters; ours may be closed by the frontend
    }
  }

  /** Random chains made available on a ring, published (or not) and kicked. */
  ringActivity(): void {
    const rng = this.rng;
    const q = rng.int(0, this.rings.length - 1);
    const ring = this.rings[q];
    if (!ring || !this.mem || !this.memLive) return;
    const n = rng.int(1, 8);
    const heads: number[] = [];
    for (let i = 0; i < n; i++) {
      heads.push(
        rng.chance(0.95)
          ? writeRandomChain(ring, this.mem, rng, this.target.capacitySectors)
          : rng.pick([ring.size, 0xffff, rng.int(0, 0xffff)]),
      );
    }
    for (const h of heads) ring.pushAvail(h);
    if (rng.chance(0.97)) ring.publish();
    else ring.setAvailIdx(rng.int(0, 0xffff));
    this.log(`ring ${q}: heads ${heads.join(',')} made available`);
    if (rng.chance(0.9)) this.kick(q);
  }

  /** A real write and read through the in-repo driver (QEMU mode only), bounded by polling. */
  async io(): Promise<void> {
    if (this.mode !== 'qemu' || !this.fe.isOpen || !this.memLive) return;
    const rng = this.rng;
    const q = rng.int(0, this.fe.queues.length - 1);
    const drv = new BlkDriver(this.fe);
    const sector = rng.int(0, this.target.capacitySectors - 64);
    const data = rng.bytes(512 * rng.int(1, 32));
    let settled = 0;
    const done = () => settled++;
    try {
      drv.write(q, sector, data).then(done, done);
      drv.read(q, sector, data.length).then(done, done);
      drv.flush(q).then(done, done);
    } catch {
      return; // ring full (the fuzzer's own chains took the descriptors)
    }
    this.log(`io q${q} sector ${sector} len ${data.length}`);
    await until(() => {
      try {
        if (this.fe.isOpen) this.fe.poll(q);
      } catch {
        // the device returned a head the driver did not make available: our raw chains
      }
      return settled === 3 || !this.fe.isOpen;
    }, 1000);
    if (settled === 3 && this.fe.isOpen) this.ioDone++;
  }

  /** Finding 2: shrinks a mapped memfd (mostly the one holding a running ring), then kicks. */
  truncateMemfd(): void {
    if (!this.findings.has('shrinking-memfd')) return;
    const rng = this.rng;
    const mem = this.mem;
    let f: { fd: number } | undefined;
    let ours = false;
    if (mem && this.memLive && rng.chance(0.8)) {
      const ring = this.rings.find((r) => r !== undefined);
      const gpa = ring ? ring.availGpa : mem.regions[0]!.gpa;
      f = mem.regions.find((r) => gpa >= r.gpa && gpa < r.gpa + r.size) ?? mem.regions[0]!;
      ours = true;
    } else if (this.foreignMemfds.length) {
      f = rng.pick(this.foreignMemfds);
    }
    if (!f) return;
    if (ours) {
      // Our own mapping of it would fault too: never touch guest memory
      // again, and stop the frontend draining used rings on calls.
      this.memLive = false;
      for (const q of this.fe.queues) q.watcher?.stop();
    }
    const size = rng.pick([0, PAGE]);
    fs.ftruncateSync(f.fd, size);
    this.log(`ftruncate ${ours ? 'guest RAM' : 'a sent'} memfd to ${size}`);
    for (let q = 0; q < this.rings.length; q++) this.kick(q);
  }

  /** Finding 1: a started ring grows (SET_VRING_NUM to the maximum), heads past the old size made available. */
  growRunningRing(): void {
    if (!this.findings.has('num-on-running-ring')) return;
    const q = this.model.findIndex((m, i) => m.started && this.rings[i] !== undefined);
    const ring = this.rings[q];
    if (q < 0 || !ring || !this.memLive) return;
    const max = this.target.maxQueueSize;
    if (!this.fe.isOpen || max <= this.model[q]!.mappedNum) return;
    this.log(`grow running ring ${q} from ${ring.size} to ${max}`);
    this.msg(Request.SET_VRING_NUM, encodeVringStatePayload(q, max));
    // The daemon must refuse it (finding 1's rule): its damage (reads and
    // writes past the ring's checked size) is silent unless it faults, so
    // the refusal itself is what the fuzzer checks.
    this.grewRunningRing ??= `SET_VRING_NUM ${max} on running ring ${q} of size ${this.model[q]!.mappedNum}`;
    if (this.rng.chance(0.5)) {
      // Nothing more: a daemon that took it keeps the connection open (the
      // ring is not popped, so no other rule ends it first).
      this.done = true;
      return;
    }
    // Or make heads past the old size available and kick: the daemon reads
    // and writes past what it checked, which faults if nothing is mapped there.
    for (let i = 0; i < 16; i++) {
      try {
        ring.pushAvail(this.rng.int(ring.size, max - 1));
      } catch {
        // past the end of our memory: the daemon reads there anyway
      }
    }
    try {
      ring.setAvailIdx(16);
    } catch {
      // as above
    }
    this.kick(q);
  }

  /**
   * Replaces a queue's kick, call or err fd with a random one. With a
   * finding-3 switch on, a third of the swaps aim at it (a hung-up pipe as
   * kick fd, a full blocking pipe as call fd), followed by I/O that makes
   * the daemon use it.
   */
  async swapFd(): Promise<void> {
    const rng = this.rng;
    const q = rng.int(0, this.target.queues - 1);
    const aim: [number, FdKind][] = [];
    if (this.findings.has('hung-up-kick-fd')) aim.push([Request.SET_VRING_KICK, rng.pick([...HUNG_UP_KINDS])]);
    if (this.findings.has('blocking-call-fd')) aim.push([Request.SET_VRING_CALL, rng.pick([...BLOCKING_KINDS])]);
    if (aim.length && rng.chance(0.33)) {
      const [req, kind] = rng.pick(aim);
      this.msg(req, encodeVringFilePayload(q, false), [this.fd(kind)]);
      if (req === Request.SET_VRING_KICK && this.model[q]) this.model[q]!.kick = undefined;
      await this.io();
      if (req === Request.SET_VRING_KICK && this.fe.isOpen) this.noteIdleReads(await this.idleReads());
      return;
    }
    const req = rng.pick([Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR]);
    this.msg(req, encodeVringFilePayload(q, false), [this.fd(rng.pick(this.kinds()))]);
  }

  /**
   * One step of the random phase. A gentle connection mostly drives its
   * rings (so it lives long enough to reach deep states); a hostile one
   * mostly sends messages, valid or not.
   */
  async randomAction(gentle: boolean): Promise<void> {
    const rng = this.rng;
    const action = rng.weighted<string>([
      [gentle ? 1 : 5, 'message'],
      [gentle ? 0.2 : 3, 'mutated'],
      [gentle ? 1 : 5, 'ring'],
      [gentle ? 6 : 3, 'io'],
      [gentle ? 1 : 3, 'swap'],
      [2, 'yield'],
      [1, 'truncate'],
      [1, 'grow'],
    ]);
    switch (action) {
      case 'message':
        return this.randomMessage();
      case 'mutated':
        return this.mutatedMessage();
      case 'ring':
        return this.ringActivity();
      case 'io':
        return this.io();
      case 'swap':
        return this.swapFd();
      case 'truncate':
        return this.truncateMemfd();
      case 'grow':
        return this.growRunningRing();
      default: {
        const ms = rng.int(0, 10);
        this.log(`sleep ${ms} ms`);
        await new Promise((r) => setTimeout(r, ms));
      }
    }
  }

  /** The first byte of the canary the daemon wrote (offset), if any. */
  canaryHit(): number | undefined {
    if (this.canaryGpa === undefined || !this.memLive || !this.mem) return undefined;
    const bytes = this.mem.read(this.canaryGpa, CANARY_BYTES);
    const at = bytes.findIndex((b) => b !== 0);
    return at < 0 ? undefined : at;
  }

  noteIdleReads(n: number): void {
    this.maxIdleReads = Math.max(this.maxIdleReads ?? 0, n);
    this.log(`idle window: ${n} read(2) calls`);
  }

  /**
   * read(2) calls in an idle window: an event loop spinning on a kick fd
   * makes thousands in every window. On a loaded machine the daemon may
   * still be finishing what we sent in the first one, so a count above
   * SPIN_READS is measured again (up to three windows) and the least kept.
   */
  async idleReads(): Promise<number> {
    await new Promise((r) => setTimeout(r, 10)); // let the daemon finish what we sent
    let least = Infinity;
    for (let i = 0; i < 3 && least > SPIN_READS; i++) {
      const a = readSyscalls(this.target.pid);
      await new Promise((r) => setTimeout(r, IDLE_WINDOW_MS));
      least = Math.min(least, readSyscalls(this.target.pid) - a);
    }
    return least;
  }
}

/**
 * Runs one fuzzed connection. Resolves when the frontend has closed its end
 * (whether or not the daemon hung up first); the caller waits for the
 * daemon to log the close.
 */
export async function fuzzConnection(target: FuzzTarget, rng: Rng, fds: FdFactory, findings: Set<FindingKey>): Promise<ConnectionReport> {
  const fe = await TestFrontend.connect(target.socket, { timeoutMs: 2000 });
  const c = new FuzzConnection(fe, rng, target, fds, findings);
  let canaryHit: number | undefined;
  let acceptedGrow: string | undefined;
  const note = (err: unknown) => {
    const m = (err as Error).message ?? String(err);
    // The daemon hanging up on us is the expected end of most connections.
    if (!fe.isOpen || /EPIPE|ECONNRESET|Broken pipe|Connection reset|closed/.test(m)) return;
    c.scriptErrors.push(m);
    c.log(`script error: ${m}`);
  };
  try {
    if (rng.chance(0.5)) await c.qemuSetup();
    else await c.rawStartup();
  } catch (err) {
    note(err);
  }
  try {
    const gentle = rng.chance(0.5);
    c.log(gentle ? 'gentle' : 'hostile');
    const steps = rng.int(0, gentle ? 40 : 20);
    for (let i = 0; i < steps && fe.isOpen && !c.done; i++) await c.randomAction(gentle);
    if (fe.isOpen && c.kickSent) c.noteIdleReads(await c.idleReads());
    canaryHit = c.canaryHit();
    if (c.grewRunningRing !== undefined && !c.modelUnsure && !(await until(() => !fe.isOpen, 2000))) acceptedGrow = c.grewRunningRing;
    if (canaryHit !== undefined)
      c.log(`canary written at offset ${canaryHit}: ${c.mem!.read(c.canaryGpa! + canaryHit, 16).toString('hex')}`);
    if (fe.isOpen && !c.done && rng.chance(0.25)) c.truncatedMessage();
  } catch (err) {
    note(err);
  } finally {
    fe.close();
    if (c.mode === 'raw') c.mem?.close();
  }
  return { actions: c.actions, idleReads: c.maxIdleReads, canaryHit, acceptedGrow, scriptErrors: c.scriptErrors, ioDone: c.ioDone };
}
