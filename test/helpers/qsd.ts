// qemu-storage-daemon's vhost-user-blk export, the reference back-end: the one
// launcher the e2e guests, the front-end check and the benchmark start it with.
import { spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { daemonLog, startDaemon, stopDaemon } from './daemon';
import { qemuOptValue } from './qemu-opt';

export const QSD = 'qemu-storage-daemon';

/** undefined when qemu-storage-daemon runs; otherwise why it cannot. */
export function qsdMissingReason(): string | undefined {
  const r = spawnSync(QSD, ['--version'], { encoding: 'utf8' });
  if (r.error) return `${QSD} not found (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})`;
  if (r.status !== 0) return `${QSD} --version exited with ${r.status}`;
  return undefined;
}

export interface QsdOptions {
  image: string;
  socket: string;
  queues: number;
  /** Default: io_uring, falling back to native if QEMU/kernel refuses it. */
  aio?: 'io_uring' | 'native' | 'threads';
  /** Default true (cache.direct=on, O_DIRECT; the image must not be on tmpfs). */
  direct?: boolean;
  readOnly?: boolean;
  /** Logical block size the export reports (default: qsd's own, 512). */
  logicalBlockSize?: number;
  log?: (line: string) => void;
  /** Default 15000. */
  readyTimeoutMs?: number;
}

/** The command line; aio undefined leaves qemu's own default (threads). */
export function qsdArgs(opts: Omit<QsdOptions, 'aio'> & { aio: string | undefined }): string[] {
  const direct = opts.direct ?? true;
  return [
    '--blockdev',
    `driver=file,node-name=file0,filename=${qemuOptValue(opts.image)},cache.direct=${direct ? 'on' : 'off'}` +
      (opts.aio !== undefined ? `,aio=${opts.aio}` : ''),
    '--export',
    `type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=${qemuOptValue(opts.socket)},` +
      `writable=${opts.readOnly ? 'off' : 'on'},num-queues=${opts.queues}` +
      (opts.logicalBlockSize ? `,logical-block-size=${opts.logicalBlockSize}` : ''),
  ];
}

function launch(opts: QsdOptions, aio: string | undefined): Promise<ChildProcess> {
  return startDaemon(QSD, qsdArgs({ ...opts, aio }), {
    socket: opts.socket,
    ...(opts.log ? { log: opts.log } : {}),
    ...(opts.readyTimeoutMs !== undefined ? { readyTimeoutMs: opts.readyTimeoutMs } : {}),
  });
}

/**
 * Start qemu-storage-daemon exporting `image` as vhost-user-blk on `socket`.
 * Resolves once the socket exists. Stop it with stopDaemon().
 */
export async function startQsd(opts: QsdOptions): Promise<ChildProcess> {
  if (opts.aio !== undefined) return launch(opts, opts.aio);
  try {
    return await launch(opts, 'io_uring');
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    opts.log?.(`[harness] qemu-storage-daemon with aio=io_uring failed, retrying with aio=native: ${msg.split('\n').pop()}`);
    try {
      return await launch(opts, 'native');
    } catch (e2) {
      const msg2 = e2 instanceof Error ? e2.message : String(e2);
      throw new Error(`qemu-storage-daemon failed with aio=io_uring:\n${msg}\nand with aio=native:\n${msg2}`);
    }
  }
}

export interface QsdStartOptions {
  /** Image size in bytes (default 64 MiB). */
  size?: number;
  queues?: number;
  writable?: boolean;
  /** Logical block size the export reports (default 512). */
  logicalBlockSize?: number;
  /** Serve this existing image instead of creating a sparse one. */
  image?: string;
  /** qemu's aio engine for the file (default: qemu's own, threads). */
  aio?: 'threads' | 'native' | 'io_uring';
}

/** qsd in a directory of its own (socket, and a sparse image unless given one), removed by stop(). */
export class Qsd {
  readonly dir: string;
  readonly image: string;
  readonly socket: string;
  private proc: ChildProcess | undefined;
  /** The process, kept after stop() for its log. */
  private started: ChildProcess | undefined;

  private constructor(dir: string, image?: string) {
    this.dir = dir;
    this.image = image ?? path.join(dir, 'disk.img');
    this.socket = path.join(dir, 'vhost.sock');
  }

  /** Creates a sparse image and starts the export; resolves once the socket exists. */
  static async start(opts: QsdStartOptions = {}): Promise<Qsd> {
    const q = new Qsd(fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-qsd-')), opts.image);
    if (opts.image === undefined) {
      fs.writeFileSync(q.image, '');
      fs.truncateSync(q.image, opts.size ?? 64 << 20);
    }
    const run: QsdOptions = {
      image: q.image,
      socket: q.socket,
      queues: opts.queues ?? 2,
      readOnly: opts.writable === false,
      readyTimeoutMs: 5000,
      ...(opts.logicalBlockSize ? { logicalBlockSize: opts.logicalBlockSize } : {}),
    };
    try {
      q.proc = await launch(run, opts.aio);
      q.started = q.proc;
    } catch (e) {
      fs.rmSync(q.dir, { recursive: true, force: true });
      throw e;
    }
    return q;
  }

  /** What qsd printed. */
  get log(): string {
    return this.started === undefined ? '' : daemonLog(this.started);
  }

  /** Reads bytes of the image directly (to check what reached the disk). */
  readImage(offset: number, len: number): Buffer {
    const fd = fs.openSync(this.image, 'r');
    try {
      const b = Buffer.alloc(len);
      fs.readSync(fd, b, 0, len, offset);
      return b;
    } finally {
      fs.closeSync(fd);
    }
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (p) await stopDaemon(p, { timeoutMs: 3000 });
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
