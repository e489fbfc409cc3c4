// The only module that loads the native addon. Everything else imports the
// typed interface declared here. Native functions take plain positional
// arguments; options are validated and normalised in src/ before they get here.
//
// Native errors have one shape: an Error with {code, errno, syscall}.

import path from 'node:path';
import type { SessionArrays } from '../blk/shared-arrays';

// The arrays' layout is documented where it is defined.
export type { SessionArrays } from '../blk/shared-arrays';

/** Thrown by native calls that fail in a system call. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** Result of recvMsg. bytes: >0 read, 0 end of stream, -1 would block. */
export interface RecvResult {
  bytes: number;
  /** File descriptors received with these bytes. The caller owns them. */
  fds: number[];
  /** True when the sender passed more fds than maxFds: all were closed. */
  fdsTruncated: boolean;
}

/** Watches one fd with uv_poll. The callback may be called spuriously. */
export interface FdWatcher {
  /**
   * Start (or restart) watching: events is a mask of FdWatcher.READABLE,
   * WRITABLE, DISCONNECT (default READABLE | DISCONNECT). The callback gets
   * the events that fired (every bit on a poll error).
   */
  start(events?: number): void;
  stop(): void;
  /** Stop for good; the fd is NOT closed. */
  close(): void;
}

export interface SessionCallbacks {
  /** A batch of chains popped from queue q after a kick: nChains, nSegs in arrays. */
  onChains(q: number, nChains: number, nSegs: number): void;
  /** A batch of io_uring completions: n entries in arrays.cqes. */
  onCompletions(n: number): void;
  /**
   * The guest broke a ring rule on queue q (the queue has stopped itself), or
   * guest memory faulted (its file shrank; q is -1 when no queue was being
   * served): the session then touches no guest memory and takes no more I/O
   * (submit returns 0), and may call this from inside pushUsed, writeGuest,
   * readGuest or copy.
   */
  onViolation(q: number, message: string): void;
}

/**
 * One frontend connection's data plane: its guest memory table, its split
 * virtqueues and its io_uring. Addresses handed to JS are (bufId, offset)
 * pairs; native checks each against the buffer's bounds before use.
 */
export interface Session {
  // --- guest memory (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) ---
  /** Maps fd (always closed by this call) and returns the region's bufId. Throws Error(message) on a bad region. */
  addRegion(fd: number, gpa: number, size: number, uva: number, mmapOffset: number): number;
  /** Unmaps the region with exactly this gpa and size; returns false if none. */
  removeRegion(gpa: number, size: number): boolean;
  /** Unmaps every region. Caller ensures no I/O is in flight on them. */
  clearRegions(): void;
  /** Bytes of guest memory mapped now, over all regions. */
  regionBytes(): number;

  // --- virtqueues (index q < queues given to the constructor) ---
  setVringNum(q: number, num: number): void;
  /** User addresses from SET_VRING_ADDR; translated when the ring starts. */
  setVringAddr(q: number, descUva: number, usedUva: number, availUva: number): void;
  setVringBase(q: number, lastAvailIdx: number): void;
  /** Stops the ring (no more pops), closes its kick and call fds, returns last_avail_idx. */
  stopVring(q: number): number;
  /** fd -1 means none. The session owns fds passed here. */
  setVringKick(q: number, fd: number): void;
  setVringCall(q: number, fd: number): void;
  setVringErr(q: number, fd: number): void;
  setVringEnabled(q: number, enabled: boolean): void;
  setEventIdx(eventIdx: boolean): void;
  /** Whether VIRTIO_RING_F_INDIRECT_DESC was negotiated (indirect tables allowed). */
  setIndirect(indirect: boolean): void;
  /**
   * Starts popping if the ring has a kick fd, is enabled and not paused.
   * Translates ring addresses; throws Error(message) if they do not lie in
   * guest memory, or if the inflight region cannot describe the ring.
   *
   * The first start after setVringBase or setInflight recovers from the
   * inflight region (when one is set for q): it finishes an interrupted
   * publish, sets the avail position to used->idx + heads still in flight,
   * and queues those heads (oldest counter first) to be delivered before new
   * avail entries. Returns how many heads n it will resubmit (0 without a
   * region, or on later starts), or -1 - n when the region's used_idx was
   * behind the ring by more than an interrupted batch explains: then nothing
   * was cleared, used_idx was re-synchronised and the n marked heads are
   * resubmitted (worth a warning: the region was not kept by vublk).
   */
  startVring(q: number): number;
  /** Temporarily stop popping (e.g. while the memory table changes). */
  pauseVring(q: number, paused: boolean): void;
  /** Pops what is available now (after unpause); may call onChains synchronously. */
  pollVring(q: number): void;
  vringStarted(q: number): boolean;

  // --- inflight region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) ---
  /**
   * Maps the frontend's inflight region (SET_INFLIGHT_FD). fd is always
   * closed by this call (the mapping keeps the memory). Throws Error(message)
   * naming the field that is wrong: mmapSize not what numQueues x queueSize
   * needs, an offset not page aligned or past the file, numQueues outside
   * 1..queues, queueSize outside 1..maxQueueSize, a file that is not sealed
   * against shrinking, a queue region whose version is neither 0 nor 1 or
   * whose desc_num is not queueSize. Replaces an earlier region; every ring
   * must be stopped. Queues below numQueues track requests in it.
   */
  setInflight(fd: number, mmapSize: number, mmapOffset: number, numQueues: number, queueSize: number): void;
  /** Unmaps the inflight region (RESET_DEVICE); rings must be stopped. */
  clearInflight(): void;

  /** Writes status bytes, fills used entries and notifies the guest: n entries in arrays.used. */
  pushUsed(q: number, n: number): void;
  /** Copies bytes into guest memory at (bufId, offset); throws if out of bounds. */
  writeGuest(bufId: number, offset: number, data: Uint8Array): void;
  /** Copies dst.length bytes of guest memory at (bufId, offset) into dst; throws if out of bounds. */
  readGuest(bufId: number, offset: number, dst: Uint8Array): void;

  // --- io_uring ---
  /**
   * Submits n ops from arrays.sqOps/sqIovs; returns how many were taken (the
   * first ones; the rest found no room). Throws RangeError, taking none, on a
   * bad op (an iovec outside guest memory and the arenas, a file range
   * outside the disk, ...). When io_uring_submit itself fails it throws
   * {code, errno, syscall, taken}: the first `taken` ops reached the kernel
   * and will complete; the others never will.
   */
  submit(n: number): number;
  /**
   * Native work still outstanding: ops the kernel holds (ioUring),
   * BLKDISCARDs on libuv's thread pool (threadPool) and ops librbd holds
   * (rbd). destroy() must wait for 0 (it blocks until rbd is 0 anyway: those
   * ops write into guest memory).
   */
  outstanding(): { ioUring: number; threadPool: number; rbd: number };
  /** Raises the disk size ops are checked against (online resize); a smaller value is ignored. */
  growDisk(bytes: number): void;
  /** Asks the kernel to cancel every op in flight (IORING_ASYNC_CANCEL_ANY); they complete as usual. */
  cancelIo(): void;
  /** Performs n copies from arrays.copies (guest memory <-> bounce arena). Throws if any is out of bounds. */
  copy(n: number): void;
  /**
   * Registers every guest region as io_uring fixed buffers (1 GiB chunks)
   * and the bounce arena's first bounceBytes (default 0) as one more;
   * returns how many. Throws {code, errno} when the kernel refuses (RLIMIT_MEMLOCK).
   */
  registerBuffers(bounceBytes?: number): number;
  unregisterBuffers(): void;
  /**
   * Writes [kicks, calls] of each queue into out[2q], out[2q+1] (out holds at
   * least 2 x queues): kick eventfd wake-ups, and guest notifications
   * signalled for published used entries, over the session's life. Still
   * answers after destroy().
   */
  ringCounters(out: Float64Array): void;
  /** The active guest regions (a shared GuestMemory's when made with a token). */
  regions(): { bufId: number; mmapOffset: number }[];
  /**
   * One bounded busy-poll pass of at most maxNs: delivers chains and
   * completions through the callbacks, with ring notifications suppressed
   * while it polls and re-enabled (barrier, re-check) before it returns.
   * Returns how many things it delivered (0: nothing). poll(0) checks once.
   */
  poll(maxNs: number): number;
  /** Closes everything: rings, fds, maps, the uring. Idempotent. */
  destroy(): void;
}

/**
 * A connection's guest memory table, shared by the Sessions of all its
 * data-plane workers (token: process-wide, usable from any thread). Regions
 * change only while every Session using them is quiesced; each must then
 * registerBuffers() again.
 */
export interface GuestMemory {
  /** Maps fd (always closed by this call) and returns the region's bufId. */
  addRegion(fd: number, gpa: number, size: number, uva: number, mmapOffset: number): number;
  removeRegion(gpa: number, size: number): boolean;
  clearRegions(): void;
  regionBytes(): number;
  regions(): { bufId: number; mmapOffset: number }[];
  readonly token: number;
  destroy(): void;
}

export interface SessionConstructor {
  new (
    queues: number,
    maxQueueSize: number,
    diskFd: number,
    uringEntries: number,
    /** Size of the bounce arena (multiple of 4096); reserved, not touched. */
    bounceBytes: number,
    arrays: SessionArrays,
    callbacks: SessionCallbacks,
    /** Size of the disk: every op's file range must lie inside it. */
    diskBytes: number,
    /** The disk is a block device (BLKDISCARD is allowed). */
    blockDevice: boolean,
    /** A GuestMemory token: use that memory (addRegion and co. then throw). */
    memoryToken?: number,
    /** An RbdImage token: ops go to that image through librbd (diskFd unused). */
    rbdToken?: number,
  ): Session;
}

/**
 * An open RBD image (librados + librbd), shared by token with the Sessions
 * of every thread. The constructor connects (blocking, at most about 10 s)
 * and throws Error{message, errno} naming the monitors, pool or image.
 */
export interface RbdImage {
  size(): number;
  /** Bytes per RADOS object (rbd_stat obj_size). */
  objectSize(): number;
  /** RBD_FEATURE_* bits. */
  features(): number;
  /** Takes the exclusive lock for good; false if the image has no exclusive-lock feature; throws if another client holds it. */
  acquireExclusiveLock(): boolean;
  /** fn() on this thread after changes of the image's header (resize, lock, snapshot); several may share a call. */
  watchUpdates(fn: () => void): void;
  readonly readOnly: boolean;
  readonly token: number;
  /** Unregisters the token; Sessions holding the image keep it open until destroyed. */
  destroy(): void;
}

/** What the kernel says about a disk fd (statx STATX_DIOALIGN, block ioctls). */
export interface DiskProbe {
  dioMemAlign: number;
  dioOffsetAlign: number;
  blockDevice: boolean;
  logicalBlock: number;
  physicalBlock: number;
  ioMin: number;
  ioOpt: number;
  sizeBytes: number;
}

export interface NativeBinding {
  // sockets (all fds non-blocking, close-on-exec)
  listenUnix(path: string, backlog: number): number;
  connectUnix(path: string): number;
  /** Returns the new fd, or -1 if no connection is pending. */
  acceptUnix(listenFd: number): number;
  recvMsg(fd: number, buf: Uint8Array, offset: number, length: number, maxFds: number): RecvResult;
  /** Sends all bytes with fds attached to the first byte; waits at most timeoutMs. */
  sendMsg(fd: number, buf: Uint8Array, fds: number[], timeoutMs: number): void;
  /**
   * Sends what fits now of buf[offset, offset+length) without waiting; returns
   * the bytes sent (0: socket full). fds (at most 8) go with the first byte
   * sent; the caller keeps them and passes them only until a send took bytes.
   */
  sendSome(fd: number, buf: Uint8Array, offset: number, length: number, fds?: number[]): number;
  closeFd(fd: number): void;
  /**
   * What a socket handed over by a supervisor is; address is its bound path,
   * "@name" for an abstract name, "" when unbound. Throws ENOTSOCK or EBADF.
   */
  socketInfo(fd: number): { unix: boolean; stream: boolean; listening: boolean; address: string };
  /** Makes an inherited fd non-blocking and close-on-exec. */
  adoptFd(fd: number): void;
  /** Sends one sd_notify datagram to address (a path, or "@name" for an abstract socket). */
  sdNotify(address: string, message: string): void;
  /**
   * Ends the process at the latest ms from now: a native thread then writes
   * message to stderr and calls _exit(1), whatever the other threads are
   * blocked in. Cannot be disarmed: for a process that is exiting anyway.
   */
  exitDeadline(ms: number, message: string): void;
  /** What /proc/self/fd/N links to ("anon_inode:[eventfd]", "pipe:[123]", ...); "" if not open. */
  fdTarget(fd: number): string;
  /** snapshot: '' for the image itself; a snapshot is always opened read-only. */
  RbdImage: new (
    pool: string,
    namespace: string,
    image: string,
    confPath: string,
    id: string,
    readOnly: boolean,
    snapshot?: string,
  ) => RbdImage;
  FdWatcher: {
    new (fd: number, onEvents: (events: number) => void): FdWatcher;
    readonly READABLE: number;
    readonly WRITABLE: number;
    readonly DISCONNECT: number;
  };

  // memfd / eventfd / mmap (used by the in-repo frontend and tests)
  memfdCreate(name: string, size: number): number;
  /** Maps fd shared read-write; the ArrayBuffer unmaps when collected. */
  mapShared(fd: number, size: number, offset: number): ArrayBuffer;
  /**
   * The inflight region GET_INFLIGHT_FD hands out: a zeroed memfd sized for
   * numQueues x queueSize split-ring queue regions, sealed against growing
   * and shrinking. Returns its fd (the caller's) and mmapSize.
   */
  inflightCreate(numQueues: number, queueSize: number): { fd: number; mmapSize: number };
  /** A non-blocking eventfd (blocking: true for tests that need one that blocks). */
  eventfdCreate(blocking?: boolean): number;
  /** Returns the counter, or 0 if it would block. */
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, value: number): void;

  Session: SessionConstructor;
  GuestMemory: new () => GuestMemory;

  // host disk probing (direct-I/O rules); 0 where the kernel does not say
  probeDisk(fd: number): DiskProbe;
  /** 0 if an O_DIRECT pread(length, offset) into memory memOffset past a 64 KiB boundary works, else -errno. */
  trialRead(fd: number, length: number, offset: number, memOffset: number): number;
  /** 0 if an O_DIRECT preadv at offset 0 of `count` segments of segLen bytes works, else -errno. */
  trialReadv(fd: number, segLen: number, count: number): number;
  /** Synchronous fallocate(2) for probing: 0 or -errno. */
  fallocate(fd: number, mode: number, offset: number, length: number): number;

  // OFD byte-range locks (fcntl F_OFD_SETLK / F_OFD_GETLK); type 0 unlock, 1 read, 2 write
  /** Takes (or drops) a lock without waiting; throws {code: 'EAGAIN'} on a conflict. */
  ofdLock(fd: number, start: number, length: number, type: number): void;
  /** Whether another open file holds a lock that conflicts with one of `type`. */
  ofdConflicts(fd: number, start: number, length: number, type: number): boolean;

  /** Constants shared with native. */
  constants: {
    CHAIN_STRIDE: number;
    SEG_STRIDE: number;
    OP_STRIDE: number;
    IOV_STRIDE: number;
    CQE_STRIDE: number;
    USED_STRIDE: number;
    SEG_WRITE: number;
    OP_READV: number;
    OP_WRITEV: number;
    OP_FSYNC: number;
    OP_FLAG_FIXED: number;
    /** Write with RWF_DSYNC (the guest turned its write cache off). */
    OP_FLAG_DSYNC: number;
    MAX_CHAIN_DESCS: number;
    /** segs must hold at least this many segments: one chain's worst case. */
    MAX_CHAIN_SEGS: number;
    COPY_STRIDE: number;
    BOUNCE_BUF_ID: number;
    /** A read-only buffer of ZERO_BYTES zeroes: a source for writes and copies. */
    ZERO_BUF_ID: number;
    ZERO_BYTES: number;
    /** fallocate op: fileOffset, length in op[3], mode (FALLOC_PUNCH or FALLOC_ZERO) in op[4]. */
    OP_FALLOCATE: number;
    /** BLKDISCARD on a block device (thread pool): fileOffset, length in op[3]. */
    OP_BLKDISCARD: number;
    FALLOC_PUNCH: number;
    FALLOC_ZERO: number;
    /** Bytes of each chain's header copied into arrays.headers. */
    HEADER_BYTES: number;
    /** Largest registered fixed buffer: regions are registered in chunks of this. */
    FIXED_CHUNK: number;
    /** Most iovecs one op may carry. */
    IOV_MAX: number;
    MAX_QUEUES: number;
  };
}

function load(): NativeBinding {
  // dist/src/native/binding.js -> repo root is three levels up.
  const root = path.resolve(__dirname, '..', '..', '..');
  const variant = process.env.VUBLK_NATIVE_BUILD === 'asan' ? 'build-asan' : 'build';
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- a .node addon at a path chosen at run time loads only through require
  return require(path.join(root, variant, 'Release', 'vublk_native.node')) as NativeBinding;
}

export const native: NativeBinding = load();
