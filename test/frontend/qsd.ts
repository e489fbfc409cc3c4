// Starts qemu-storage-daemon's vhost-user-blk export: the reference back-end
// the in-repo front-end is checked against (and a baseline for benchmarks).

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const QSD = 'qemu-storage-daemon';

/** undefined when qemu-storage-daemon runs; otherwise why it cannot. */
export function qsdMissingReason(): string | undefined {
  const r = spawnSync(QSD, ['--version'], { encoding: 'utf8' });
  if (r.error) return `${QSD} not found (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})`;
  if (r.status !== 0) return `${QSD} --version exited with ${r.status}`;
  return undefined;
}

export interface QsdOptions {
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

export class Qsd {
  readonly dir: string;
  readonly image: string;
  readonly socket: string;
  private proc: ChildProcess | undefined;
  private stderr = '';

  private constructor(dir: string, image?: string) {
    this.dir = dir;
    this.image = image ?? path.join(dir, 'disk.img');
    this.socket = path.join(dir, 'vhost.sock');
  }

  /** Creates a sparse image and starts the export; resolves once the socket exists. */
  static async start(opts: QsdOptions = {}): Promise<Qsd> {
    const q = new Qsd(fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-qsd-')), opts.image);
    if (opts.image === undefined) {
      fs.writeFileSync(q.image, '');
      fs.truncateSync(q.image, opts.size ?? 64 << 20);
    }
    const exportOpts = [
      'type=vhost-user-blk',
      'id=e0',
      'node-name=f0',
      'addr.type=unix',
      `addr.path=${q.socket}`,
      `writable=${opts.writable === false ? 'off' : 'on'}`,
      `num-queues=${opts.queues ?? 2}`,
    ];
    if (opts.logicalBlockSize) exportOpts.push(`logical-block-size=${opts.logicalBlockSize}`);
    q.proc = spawn(
      QSD,
      [
        '--blockdev',
        `driver=file,node-name=f0,filename=${q.image},cache.direct=on${opts.aio ? `,aio=${opts.aio}` : ''}`,
        '--export',
        exportOpts.join(','),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    q.proc.stderr?.on('data', (d: Buffer) => (q.stderr += d.toString()));
    const deadline = Date.now() + 5000;
    while (!fs.existsSync(q.socket)) {
      if (q.proc.exitCode !== null) throw new Error(`${QSD} exited with ${q.proc.exitCode}: ${q.stderr}`);
      if (Date.now() > deadline) {
        await q.stop();
        throw new Error(`${QSD} did not create ${q.socket} within 5 s: ${q.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return q;
  }

  get log(): string {
    return this.stderr;
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
    if (p && p.exitCode === null && p.signalCode === null) {
      const exited = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      const timer = setTimeout(() => p.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
