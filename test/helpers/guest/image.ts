// The e2e guest's kernel and initramfs: built once by test/e2e/guest/build-guest.sh
// into a cache, and the small cpio archive that adds a per-run /test.sh to it.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { captureLines, track } from '../daemon';
import { repoRoot } from '../repo-root';

export function buildGuestScriptPath(): string {
  return path.join(repoRoot(), 'test', 'e2e', 'guest', 'build-guest.sh');
}

export function guestCacheDir(): string {
  return process.env.VUBLK_GUEST_CACHE ?? path.join(os.homedir(), '.cache', 'vublk', 'guest');
}

/** The cache holds a guest built by the current build-guest.sh. */
export function guestCacheWarm(): boolean {
  const dir = guestCacheDir();
  try {
    const sha = createHash('sha256').update(fs.readFileSync(buildGuestScriptPath())).digest('hex');
    return (
      fs.statSync(path.join(dir, 'vmlinuz')).size > 0 &&
      fs.statSync(path.join(dir, 'initramfs.cpio.gz')).size > 0 &&
      fs.readFileSync(path.join(dir, 'stamp'), 'utf8').trim() === sha
    );
  } catch {
    return false;
  }
}

let ensurePromise: Promise<{ kernel: string; initramfs: string }> | undefined;

/** Build (or reuse) the cached guest kernel + initramfs. Memoised per process. */
export function ensureGuest(opts: { log?: (line: string) => void } = {}): Promise<{ kernel: string; initramfs: string }> {
  ensurePromise ??= new Promise<{ kernel: string; initramfs: string }>((resolve, reject) => {
    const script = buildGuestScriptPath();
    const child = spawn('bash', [script], { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    track(child);
    const lines: string[] = [];
    const flush = captureLines(child, (l) => {
      lines.push(l);
      opts.log?.(l);
    });
    child.once('error', reject);
    child.once('close', (code, signal) => {
      flush();
      if (code !== 0) {
        reject(new Error(`build-guest.sh failed (code ${code}, signal ${signal}):\n${lines.slice(-40).join('\n')}`));
        return;
      }
      const dir = guestCacheDir();
      resolve({ kernel: path.join(dir, 'vmlinuz'), initramfs: path.join(dir, 'initramfs.cpio.gz') });
    });
  });
  // Allow a retry after failure.
  ensurePromise.catch(() => {
    ensurePromise = undefined;
  });
  return ensurePromise;
}

// ------------------------------------------------------------ cpio ---

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

/** A minimal "newc" cpio archive (regular files only) + trailer. */
export function makeCpio(files: Array<{ name: string; data: Buffer | string; mode?: number }>): Buffer {
  const parts: Buffer[] = [];
  const mtime = Math.floor(Date.now() / 1000);
  let ino = 1;
  const entry = (name: string, mode: number, data: Buffer): void => {
    const nameBuf = Buffer.from(`${name}\0`, 'utf8');
    const header = '070701' + [ino++, mode, 0, 0, 1, mtime, data.length, 0, 0, 0, 0, nameBuf.length, 0].map(hex8).join('');
    parts.push(Buffer.from(header, 'ascii'), nameBuf, pad4(110 + nameBuf.length), data, pad4(data.length));
  };
  for (const f of files) {
    const data = typeof f.data === 'string' ? Buffer.from(f.data, 'utf8') : f.data;
    entry(f.name.replace(/^\/+/, ''), 0o100000 | (f.mode ?? 0o644), data);
  }
  entry('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}
