/**
 * QEMU end-to-end harness helpers.
 *
 * - ensureGuest(): builds/caches a Debian kernel + busybox/fio/e2fsprogs initramfs
 *   via test/e2e/guest/build-guest.sh.
 * - runGuest(): boots that guest under TCG with a vhost-user-blk-pci device on a
 *   given socket (optionally with chardev reconnect=N), runs a per-run /test.sh
 *   (appended to the initramfs as a second cpio archive) and reports PASS/FAIL
 *   from the serial console.
 * - fioVerifyScript() / ext4Script() / roundsScript(): guest test scripts.
 * - startQsd() / startVublk() / stopDaemon(): vhost-user-blk backends.
 * - for the e2e test files: guestTest() (prerequisites: skip, or fail under
 *   CI), guestDisk() (image, optionally on a 4K-native loop device),
 *   runGuestWith() (one boot against a backend, then stop it) and the checks
 *   every boot shares.
 */
import type { Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { attachLoop, loopUnsupported, sysBlock, type LoopDevice } from './loop-device';

export const RESULT_PREFIX = 'VUBLK-E2E-RESULT:';

// ---------------------------------------------------------------- paths ---

let cachedRoot: string | undefined;

function findUp(start: string): string | undefined {
  let dir = path.resolve(start);
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** Repo root: nearest ancestor of this file that holds a package.json
 *  (works from test/helpers/ and from the compiled dist/test/helpers/);
 *  falls back to the cwd's ancestors when compiled outside the repo. */
export function repoRoot(): string {
  cachedRoot ??= findUp(__dirname) ?? findUp(process.cwd());
  if (cachedRoot === undefined) throw new Error(`no package.json above ${__dirname} or ${process.cwd()}`);
  return cachedRoot;
}

export function buildGuestScriptPath(): string {
  return path.join(repoRoot(), 'test', 'e2e', 'guest', 'build-guest.sh');
}

export function guestCacheDir(): string {
  return process.env.VUBLK_GUEST_CACHE ?? path.join(os.homedir(), '.cache', 'vublk', 'guest');
}

/** Absolute path of `cmd` on PATH (or null). */
export function findCommand(cmd: string): string | null {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).concat(['/usr/sbin', '/sbin']);
  for (const d of dirs) {
    if (!d) continue;
    const p = path.join(d, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* next */
    }
  }
  return null;
}

function guestCacheWarm(): boolean {
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

// ------------------------------------------------------- prerequisites ---

/** Can we boot the e2e guest here? Root is not required (TCG, no /dev/kvm,
 *  apt-get download + dpkg-deb -x work unprivileged). */
export function guestPrerequisites(): { ok: boolean; reason?: string } {
  if (process.platform !== 'linux') return { ok: false, reason: `needs Linux (platform ${process.platform})` };
  if (!findCommand('qemu-system-x86_64')) {
    return { ok: false, reason: 'qemu-system-x86_64 not found (apt-get install qemu-system-x86)' };
  }
  if (!fs.existsSync(buildGuestScriptPath())) {
    return { ok: false, reason: `missing ${buildGuestScriptPath()}` };
  }
  if (!findCommand('bash')) return { ok: false, reason: 'bash not found' };
  if (guestCacheWarm()) return { ok: true };
  // The initramfs is made of the host's own binaries, so the host must be x86_64.
  if (process.arch !== 'x64') {
    return { ok: false, reason: `building the guest needs an x86_64 host (arch ${process.arch})` };
  }
  const missing: string[] = [];
  const need: Array<[string, string]> = [
    ['apt-get', 'apt'],
    ['apt-cache', 'apt'],
    ['dpkg-deb', 'dpkg'],
    ['cpio', 'cpio'],
    ['gzip', 'gzip'],
    ['ldd', 'libc-bin'],
    ['busybox', 'busybox-static'],
    ['fio', 'fio'],
    ['mke2fs', 'e2fsprogs'],
    ['e2fsck', 'e2fsprogs'],
    ['blkdiscard', 'util-linux'],
    ['fstrim', 'util-linux'],
  ];
  for (const [cmd, pkg] of need) if (!findCommand(cmd)) missing.push(`${cmd} (${pkg})`);
  if (missing.length > 0) {
    return { ok: false, reason: `guest not cached and cannot build it; missing: ${missing.join(', ')}` };
  }
  return { ok: true };
}

// ------------------------------------------------------ child tracking ---

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // Never leave QEMU / daemons behind if the test process dies.
    process.once('exit', () => {
      for (const c of liveChildren) {
        try {
          c.kill('SIGKILL');
        } catch {
          /* ignore */
        }
      }
    });
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Splits a byte stream into lines (CR and ANSI escapes stripped) for `onLine`. */
function lineSplitter(onLine: (line: string) => void): { push(chunk: Buffer): void; flush(): void } {
  let pending = '';
  return {
    push(chunk: Buffer) {
      pending += chunk.toString('utf8');
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        onLine(cleanLine(pending.slice(0, nl)));
        pending = pending.slice(nl + 1);
      }
    },
    flush() {
      if (pending.length > 0) onLine(cleanLine(pending));
      pending = '';
    },
  };
}

/**
 * Feeds the child's stdout and stderr, line by line, to onLine; returns
 * flush() for the unterminated last lines (call it on 'close').
 */
function captureLines(child: ChildProcess, onLine: (line: string) => void): () => void {
  const out = lineSplitter(onLine);
  const err = lineSplitter(onLine);
  child.stdout?.on('data', (c: Buffer) => out.push(c));
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  return () => {
    out.flush();
    err.flush();
  };
}

function cleanLine(s: string): string {
  // ANSI CSI sequences, ESC c (terminal reset) that SeaBIOS emits, and CRs.
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1bc|\r/g, '');
}

// --------------------------------------------------------- guest image ---

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
    const header =
      '070701' +
      [ino++, mode, 0, 0, 1, mtime, data.length, 0, 0, 0, 0, nameBuf.length, 0].map(hex8).join('');
    parts.push(Buffer.from(header, 'ascii'), nameBuf, pad4(110 + nameBuf.length), data, pad4(data.length));
  };
  for (const f of files) {
    const data = typeof f.data === 'string' ? Buffer.from(f.data, 'utf8') : f.data;
    entry(f.name.replace(/^\/+/, ''), 0o100000 | (f.mode ?? 0o644), data);
  }
  entry('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

// ------------------------------------------------------------ runGuest ---

export interface RunGuestOptions {
  /** vhost-user-blk unix socket of the backend (must already be listening). */
  socket: string;
  /** num-queues for vhost-user-blk-pci. */
  queues: number;
  /** queue-size for vhost-user-blk-pci (QEMU's default when unset: 128 or 256, by version). */
  queueSize?: number;
  /** Shell script run by the guest as /test.sh (exit 0 = pass). */
  script: string;
  /** Kill QEMU after this long (TCG boot alone takes ~5-10 s). */
  timeoutMs: number;
  /** Guest RAM (default 1024). */
  memMiB?: number;
  /**
   * Back guest RAM with a file in this directory (QEMU's memory-backend-file,
   * e.g. /dev/shm or a hugetlbfs mount) instead of a memfd.
   */
  memPath?: string;
  /** Guest vCPUs (default 2). */
  smp?: number;
  /** Receives every serial/QEMU output line. */
  log?: (line: string) => void;
  /** Extra QEMU arguments (e.g. more -device options). */
  extraQemuArgs?: string[];
  /** Kill QEMU early (e.g. when the backend dies and the guest would hang). */
  signal?: AbortSignal;
  /**
   * Reconnect the vhost-user chardev after the backend goes away:
   * `-chardev socket,...,reconnect=N` (true = 1 s). Default: no reconnect
   * (QEMU gives up on the device when the backend disconnects).
   */
  reconnect?: boolean | number;
}

export interface RunGuestResult {
  /** true iff the guest printed "VUBLK-E2E-RESULT: PASS" and QEMU exited by itself. */
  passed: boolean;
  /** Serial console + QEMU stderr, CRs/ANSI escapes stripped. */
  output: string;
  /** The text after "VUBLK-E2E-RESULT: " (e.g. "PASS", "FAIL fio ..."), if any. */
  result?: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** Killed because `signal` fired. */
  aborted: boolean;
  durationMs: number;
}

export async function runGuest(opts: RunGuestOptions): Promise<RunGuestResult> {
  const { kernel, initramfs } = await ensureGuest(opts.log ? { log: opts.log } : {});
  const mem = opts.memMiB ?? 1024;
  const smp = opts.smp ?? 2;
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vublk-guest-run-'));
  try {
    // Linux unpacks concatenated initramfs archives, but a non-compressed cpio
    // that follows a compressed one is only recognised at a 4-byte aligned
    // offset ("invalid magic at start of compressed archive" otherwise), so
    // zero-pad the gzip part (zeros between archives are skipped).
    const base = await fsp.readFile(initramfs);
    const padLen = (512 - (base.length % 512)) % 512;
    const extra = makeCpio([{ name: 'test.sh', data: opts.script, mode: 0o755 }]);
    const initrd = path.join(tmp, 'initrd.img');
    await fsp.writeFile(initrd, Buffer.concat([base, Buffer.alloc(padLen), extra]));

    const reconnectSecs = opts.reconnect === true ? 1 : opts.reconnect === false ? 0 : Math.trunc(opts.reconnect ?? 0);
    const args = [
      '-accel', 'tcg,thread=multi',
      '-cpu', 'max',
      '-m', `${mem}M`,
      '-smp', String(smp),
      '-nographic',
      '-no-reboot',
      '-kernel', kernel,
      '-initrd', initrd,
      '-append', 'console=ttyS0 panic=-1 quiet',
      '-object', opts.memPath === undefined
        ? `memory-backend-memfd,id=mem,size=${mem}M,share=on`
        : `memory-backend-file,id=mem,size=${mem}M,mem-path=${qemuOptValue(opts.memPath)},share=on`,
      '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c0,path=${qemuOptValue(opts.socket)}${reconnectSecs > 0 ? `,reconnect=${reconnectSecs}` : ''}`,
      '-device', `vhost-user-blk-pci,chardev=c0,num-queues=${opts.queues}${opts.queueSize !== undefined ? `,queue-size=${opts.queueSize}` : ''}`,
      ...(opts.extraQemuArgs ?? []),
    ];
    return await new Promise<RunGuestResult>((resolve, reject) => {
      const started = Date.now();
      const lines: string[] = [];
      const onLine = (l: string): void => {
        lines.push(l);
        opts.log?.(l);
      };
      const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      track(child);
      let timedOut = false;
      let aborted = false;
      const timer = setTimeout(() => {
        timedOut = true;
        onLine(`[harness] guest timed out after ${opts.timeoutMs} ms, killing QEMU`);
        child.kill('SIGKILL');
      }, opts.timeoutMs);
      const onAbort = (): void => {
        if (hasExited(child)) return;
        aborted = true;
        const why: unknown = opts.signal?.reason;
        onLine(`[harness] aborted (${why instanceof Error ? why.message : String(why)}), killing QEMU`);
        child.kill('SIGKILL');
      };
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
      const flush = captureLines(child, onLine);
      child.once('error', (e) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        reject(e);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        flush();
        const output = lines.join('\n');
        let result: string | undefined;
        for (const l of lines) {
          const i = l.indexOf(RESULT_PREFIX);
          if (i >= 0) result = l.slice(i + RESULT_PREFIX.length).trim();
        }
        resolve({
          passed: !timedOut && !aborted && code !== null && result === 'PASS',
          output,
          ...(result !== undefined ? { result } : {}),
          exitCode: code,
          signal,
          timedOut,
          aborted,
          durationMs: Date.now() - started,
        });
      });
    });
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

// ------------------------------------------------------- guest scripts ---

export interface GuestScriptCommon {
  /** If set, the script fails unless /dev/vda has exactly this many blk-mq hw queues. */
  expectQueues?: number;
  /** Expected /dev/vda size in bytes (checked if set). */
  expectSizeBytes?: number;
  /**
   * If set, the script prints a BLOCK_SIZES_MARKER line with /dev/vda's
   * queue/logical_block_size, physical_block_size, minimum_io_size and
   * optimal_io_size, and fails unless the logical block size equals this.
   */
  expectLogicalBlockSize?: number;
  /** Like expectLogicalBlockSize, for queue/physical_block_size (also prints the marker line). */
  expectPhysicalBlockSize?: number;
}

/**
 * Guest console line with /dev/vda's block sizes (see GuestScriptCommon):
 * `VUBLK-E2E-BLOCK-SIZES logical=512 physical=4096 min_io=4096 opt_io=0`.
 */
export const BLOCK_SIZES_MARKER = 'VUBLK-E2E-BLOCK-SIZES';

/** Shell helpers shared by the guest scripts (busybox ash). */
export function guestScriptPreamble(common: GuestScriptCommon = {}): string {
  const lines = [
    '#!/bin/sh',
    '# generated by test/helpers/qemu-guest.ts',
    'REASON_FILE=/run/vublk-e2e-fail-reason',
    'step() { echo "vublk-test: $*" >&2; }',
    'fail() { echo "$*" > "$REASON_FILE"; echo "vublk-test: FAIL: $*" >&2; exit 1; }',
    '# run DESC CMD...: run CMD, fail with DESC on non-zero exit',
    'run() { _d=$1; shift; step "$_d: $*"; "$@" || fail "$_d (exit $?)"; }',
    'check_dmesg() {',
    "  if dmesg | grep -E 'I/O error|blk_update_request|Buffer I/O|EXT4-fs error|JBD2: .*error' > /tmp/dmesg-errors; then",
    '    cat /tmp/dmesg-errors >&2',
    '    fail "kernel I/O errors in dmesg: $(head -n1 /tmp/dmesg-errors)"',
    '  fi',
    '}',
    '[ -b /dev/vda ] || fail "no /dev/vda"',
    'step "/dev/vda: $(cat /sys/block/vda/size) sectors, $(ls /sys/block/vda/mq | wc -l) hw queues"',
  ];
  if (common.expectQueues !== undefined) {
    const q = Math.trunc(common.expectQueues);
    lines.push(
      `[ "$(ls /sys/block/vda/mq | wc -l)" -eq ${q} ] || fail "expected ${q} hw queues, got $(ls /sys/block/vda/mq | wc -l)"`,
    );
  }
  if (common.expectLogicalBlockSize !== undefined || common.expectPhysicalBlockSize !== undefined) {
    const q = '/sys/block/vda/queue';
    lines.push(
      `echo "${BLOCK_SIZES_MARKER} logical=$(cat ${q}/logical_block_size) physical=$(cat ${q}/physical_block_size)` +
        ` min_io=$(cat ${q}/minimum_io_size) opt_io=$(cat ${q}/optimal_io_size)" >&2`,
    );
    for (const [file, want] of [
      ['logical_block_size', common.expectLogicalBlockSize],
      ['physical_block_size', common.expectPhysicalBlockSize],
    ] as const) {
      if (want === undefined) continue;
      const n = Math.trunc(want);
      lines.push(`[ "$(cat ${q}/${file})" -eq ${n} ] || fail "expected ${file} ${n}, got $(cat ${q}/${file})"`);
    }
  }
  if (common.expectSizeBytes !== undefined) {
    const sectors = Math.trunc(common.expectSizeBytes / 512);
    lines.push(
      `[ "$(cat /sys/block/vda/size)" -eq ${sectors} ] || fail "expected ${sectors} sectors, got $(cat /sys/block/vda/size)"`,
    );
  }
  return lines.join('\n') + '\n';
}

export interface FioVerifyOptions extends GuestScriptCommon {
  /** MiB per fio job (default 64). Job i covers [i*size, (i+1)*size). */
  sizeMiB?: number;
  /** Parallel fio jobs (default 2, one per vCPU, so both virtqueues are used). */
  numjobs?: number;
  /** Default 32. */
  iodepth?: number;
  /** Default "512-128k". Sizes are multiples of the minimum. */
  bsrange?: string;
  /** Default 512. */
  blockalign?: number;
  /** fio --randseed (default 0x5eed). */
  seed?: number;
}

/**
 * fio data-integrity script on /dev/vda: random writes of random sizes
 * (512 B - 128 KiB, multiples of 512) at 512-byte-aligned random offsets with
 * crc32c verify headers (libaio, O_DIRECT, iodepth 32, one job per vCPU on
 * disjoint regions), verified right after writing, then verified again by a
 * separate read-only fio run (--verify_only) that replays the same workload.
 * fio's random map guarantees no block is written twice within a pass, so
 * every write is verifiable.
 */
export function fioVerifyScript(opts: FioVerifyOptions = {}): string {
  const size = opts.sizeMiB ?? 64;
  const numjobs = opts.numjobs ?? 2;
  const global = [
    '--filename=/dev/vda',
    '--ioengine=libaio',
    '--direct=1',
    '--rw=randwrite',
    `--bsrange=${opts.bsrange ?? '512-128k'}`,
    `--blockalign=${opts.blockalign ?? 512}`,
    `--iodepth=${opts.iodepth ?? 32}`,
    `--size=${size}M`,
    '--randrepeat=1',
    `--randseed=${opts.seed ?? 0x5eed}`,
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_dump=1',
    '--exitall_on_error=1',
    '--group_reporting=1',
  ];
  // Separate job sections with explicit offsets (rather than numjobs +
  // offset_increment, which makes fio warn about overlapping verify writers).
  const jobs: string[] = [];
  for (let i = 0; i < numjobs; i++) jobs.push(`--name=verify${i}`, `--offset=${i * size}M`);
  return (
    guestScriptPreamble(opts) +
    `FIO_OPTS="${global.join(' ')}"
FIO_JOBS="${jobs.join(' ')}"
need=$(( ${size} * ${numjobs} * 1024 * 1024 / 512 ))
[ "$(cat /sys/block/vda/size)" -ge "$need" ] || fail "/dev/vda too small for fio (${size} MiB x ${numjobs} jobs)"
# shellcheck disable=SC2086
run "fio write + verify" fio $FIO_OPTS --do_verify=1 $FIO_JOBS
check_dmesg
echo 3 > /proc/sys/vm/drop_caches
# shellcheck disable=SC2086
run "fio read-back verify" fio $FIO_OPTS --verify_only=1 $FIO_JOBS
check_dmesg
step "fio verify ok"
exit 0
`
  );
}

export type Ext4Options = GuestScriptCommon;

/**
 * ext4 round trip: mkfs, mount, write files of assorted sizes (random data),
 * checksum, umount, drop caches, mount, compare checksums, umount,
 * `e2fsck -fn` must be clean, no kernel I/O errors in dmesg.
 */
export function ext4Script(opts: Ext4Options = {}): string {
  // name:bytes — a few MiB total, large and small, odd sizes included.
  const files: Array<[string, number]> = [
    ['big1.bin', 3 * 1024 * 1024],
    ['big2.bin', 1024 * 1024 + 4097],
    ['mid.bin', 200 * 1024 + 13],
    ['page.bin', 4096],
    ['small.bin', 511],
    ['tiny.bin', 1],
    ['empty.bin', 0],
  ];
  const writes = files
    .map(([n, b]) => `run "write ${n}" sh -c 'head -c ${b} /dev/urandom > /mnt/t/${n}'`)
    .join('\n');
  return (
    guestScriptPreamble(opts) +
    `mkdir -p /mnt/t
run "mkfs.ext4" mkfs.ext4 -F -q /dev/vda
run "mount" mount -t ext4 /dev/vda /mnt/t
${writes}
run "mkdir" mkdir -p /mnt/t/dir/sub
i=0
while [ $i -lt 40 ]; do
  head -c $(( (i * 997) % 9000 + 1 )) /dev/urandom > /mnt/t/dir/sub/f$i || fail "write dir/sub/f$i"
  i=$((i + 1))
done
(cd /mnt/t && find . -type f | sort | xargs sha256sum) > /tmp/sums || fail "sha256sum (before)"
step "$(wc -l < /tmp/sums) files, $(du -sk /mnt/t | cut -f1) KiB"
run "sync" sync
run "umount" umount /mnt/t
echo 3 > /proc/sys/vm/drop_caches
run "mount again" mount -t ext4 /dev/vda /mnt/t
(cd /mnt/t && find . -type f | sort | xargs sha256sum) > /tmp/sums2 || fail "sha256sum (after)"
if ! cmp -s /tmp/sums /tmp/sums2; then
  diff /tmp/sums /tmp/sums2 >&2
  fail "checksums differ after remount: $(diff /tmp/sums /tmp/sums2 | grep '^[-+][0-9a-f]' | head -n1)"
fi
run "umount" umount /mnt/t
run "e2fsck -fn" e2fsck -fn /dev/vda
check_dmesg
step "ext4 ok"
exit 0
`
  );
}

export const ROUND_MARKER = 'VUBLK-E2E-ROUND';

export interface RoundsOptions extends GuestScriptCommon {
  /** Default 8. */
  rounds?: number;
  /** Bytes written per round (default 8 MiB; a multiple of 64 KiB * writers). */
  regionBytes?: number;
  /** Parallel dd writers per round, each on its own slice (default 4). */
  writers?: number;
  /**
   * dd block size of the writers (default 4 KiB: many small O_DIRECT writes,
   * so requests are in flight for most of the write phase). Reads use 64 KiB.
   */
  writeBlockBytes?: number;
  /** Pause between rounds (default 1 s). */
  sleepSecs?: number;
}

/**
 * Rounds of O_DIRECT write + read-back on /dev/vda, for reconnect tests.
 * Round r writes a fresh /dev/urandom pattern to its own region
 * [(r-1)*regionBytes, r*regionBytes) with `writers` parallel
 * `dd oflag=direct` on disjoint slices (several requests in flight, both
 * queues busy), reads the
 * region back with `dd iflag=direct` and compares sha256 sums, checks dmesg,
 * sleeps. After the last round every region is read back again (the data
 * written before a backend restart must still be there).
 *
 * Progress lines on the console, for the host to time its actions:
 *   VUBLK-E2E-ROUND <r> write | read | ok      and   VUBLK-E2E-ROUND all ok
 */
export function roundsScript(opts: RoundsOptions = {}): string {
  const rounds = Math.trunc(opts.rounds ?? 8);
  const writers = Math.trunc(opts.writers ?? 4);
  const bs = 64 * 1024;
  const wbs = Math.trunc(opts.writeBlockBytes ?? 4096);
  const regionBytes = opts.regionBytes ?? 8 * 1024 * 1024;
  if (wbs < 512 || bs % wbs !== 0) throw new RangeError(`writeBlockBytes must divide ${bs}`);
  if (regionBytes % (bs * writers) !== 0) throw new RangeError(`regionBytes must be a multiple of ${bs * writers}`);
  const blocks = regionBytes / bs;
  const wper = regionBytes / wbs / writers;
  return (
    guestScriptPreamble(opts) +
    `M=${ROUND_MARKER}
ROUNDS=${rounds}; WRITERS=${writers}; BLOCKS=${blocks}; WPER=${wper}; WBLOCKS=$(( ${regionBytes} / ${wbs} ))
need=$(( ROUNDS * BLOCKS * ${bs / 512} ))
[ "$(cat /sys/block/vda/size)" -ge "$need" ] || fail "/dev/vda too small for $ROUNDS rounds of $BLOCKS x ${bs} B"
# region_sum R: got=sha256 of round R's region, read back with O_DIRECT
region_sum() {
  dd if=/dev/vda of=/tmp/readback bs=${bs} skip=$(( ($1 - 1) * BLOCKS )) count=$BLOCKS iflag=direct 2>/tmp/dd-read ||
    fail "round $1: dd read failed: $(tail -n1 /tmp/dd-read)"
  [ "$(stat -c %s /tmp/readback)" -eq ${regionBytes} ] || fail "round $1: short read ($(stat -c %s /tmp/readback) bytes)"
  got=$(sha256sum < /tmp/readback | cut -d' ' -f1)
}
r=1
while [ $r -le $ROUNDS ]; do
  head -c ${regionBytes} /dev/urandom > /tmp/pattern || fail "round $r: no pattern"
  want=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
  echo "$want" > /tmp/want.$r
  base=$(( (r - 1) * WBLOCKS ))
  echo "$M $r write" >&2
  pids=
  w=0
  while [ $w -lt $WRITERS ]; do
    dd if=/tmp/pattern of=/dev/vda bs=${wbs} skip=$(( w * WPER )) seek=$(( base + w * WPER )) count=$WPER \\
      oflag=direct conv=notrunc 2>/tmp/dd-write.$w &
    pids="$pids $!"
    w=$((w + 1))
  done
  w=0
  for p in $pids; do
    wait $p || fail "round $r: dd write $w failed: $(tail -n1 /tmp/dd-write.$w)"
    w=$((w + 1))
  done
  echo "$M $r read" >&2
  region_sum $r
  [ "$got" = "$want" ] || fail "round $r: read-back sha256 $got != written $want"
  check_dmesg
  echo "$M $r ok" >&2
  rm -f /tmp/pattern /tmp/readback
  [ $r -lt $ROUNDS ] && sleep ${opts.sleepSecs ?? 1}
  r=$((r + 1))
done
r=1
while [ $r -le $ROUNDS ]; do
  region_sum $r
  [ "$got" = "$(cat /tmp/want.$r)" ] || fail "final check: round $r region sha256 $got != written $(cat /tmp/want.$r)"
  r=$((r + 1))
done
check_dmesg
echo "$M all ok" >&2
exit 0
`
  );
}

// -------------------------------------------------------------- daemons ---

const daemonOutput = new WeakMap<ChildProcess, string[]>();

/** stdout+stderr lines captured from a daemon started by startDaemon(). */
export function daemonLog(child: ChildProcess): string {
  return (daemonOutput.get(child) ?? []).join('\n');
}

/**
 * vublk's `vublk: warn: ...` / `vublk: error: ...` lines (a protocol violation,
 * an internal error, a failed drain...). A clean run has none.
 */
export function vublkProblemLines(log: string): string[] {
  return log.split('\n').filter((l) => /\bvublk: (warn|error):/.test(l));
}

/**
 * Resolves with the first captured daemon line matching `re` (including lines
 * already captured), or undefined after `timeoutMs` or when the daemon has
 * exited without printing one.
 */
export async function waitForDaemonLine(child: ChildProcess, re: RegExp, timeoutMs: number): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hit = (daemonOutput.get(child) ?? []).find((l) => re.test(l));
    if (hit !== undefined) return hit;
    if (hasExited(child) || Date.now() > deadline) {
      // One more look: the exit may have raced the last lines.
      await new Promise((r) => setTimeout(r, 50));
      return (daemonOutput.get(child) ?? []).find((l) => re.test(l));
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function isSocket(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isSocket();
  } catch {
    return false;
  }
}

export interface StartDaemonOptions {
  /** Unix socket the daemon creates; we wait for it to appear. */
  socket: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Default 15000. */
  readyTimeoutMs?: number;
  log?: (line: string) => void;
  /**
   * Default true: delete whatever is at `socket` first. false leaves a stale
   * socket (e.g. of a SIGKILLed daemon) for the daemon itself to deal with;
   * then give `readyLine`, since the stale socket already "exists".
   */
  removeStaleSocket?: boolean;
  /** Also wait for an output line matching this before calling the daemon ready. */
  readyLine?: RegExp;
}

/** Spawn a daemon with captured stdio; resolve once `socket` exists as a socket. */
export async function startDaemon(cmd: string, args: string[], opts: StartDaemonOptions): Promise<ChildProcess> {
  if (opts.removeStaleSocket ?? true) await fsp.rm(opts.socket, { force: true });
  const child = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    ...(opts.env !== undefined ? { env: opts.env } : {}),
  });
  track(child);
  const lines: string[] = [];
  daemonOutput.set(child, lines);
  const name = path.basename(cmd);
  const onLine = (l: string): void => {
    lines.push(l);
    opts.log?.(`[${name}] ${l}`);
  };
  const flush = captureLines(child, onLine);
  let closed = false;
  child.once('close', () => {
    flush();
    closed = true;
  });
  let spawnError: Error | undefined;
  child.once('error', (e) => {
    spawnError = e;
  });
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 15000);
  for (;;) {
    if (spawnError) throw new Error(`${cmd}: ${spawnError.message}`);
    if ((opts.readyLine === undefined || lines.some((l) => opts.readyLine!.test(l))) && (await isSocket(opts.socket))) {
      return child;
    }
    if (hasExited(child)) {
      // Let the stdio pipes drain so the error carries the daemon's message.
      if (!closed) await new Promise((r) => {
        child.once('close', r);
        setTimeout(r, 1000);
      });
      throw new Error(
        `${name} exited (code ${child.exitCode}, signal ${child.signalCode}) before creating ${opts.socket}:\n` +
          `${[cmd, ...args].join(' ')}\n${lines.join('\n')}`,
      );
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(
        `${name} did not create ${opts.socket}${opts.readyLine ? ` (and print ${opts.readyLine})` : ''} ` +
          `within ${opts.readyTimeoutMs ?? 15000} ms:\n${lines.join('\n')}`,
      );
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Sum over the process's io_uring instances of SqHead - CqTail (SQEs the
 * kernel consumed minus CQEs it posted): disk operations in flight. Best effort.
 */
export function uringInflight(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    let n = 0;
    let rings = 0;
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      let target: string;
      try {
        target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (!target.includes('io_uring')) continue;
      const info = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      const sq = /^SqHead:\s*(\d+)/m.exec(info);
      const cq = /^CqTail:\s*(\d+)/m.exec(info);
      if (!sq || !cq) return undefined;
      n += (Number(sq[1]) - Number(cq[1])) >>> 0;
      rings++;
    }
    return rings > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Polls uringInflight(pid) until it is > 0 or maxMs have passed: the moment
 * to kill a daemon that has disk I/O in flight. `inflight` is the last value
 * read (undefined: not readable), busyWaitMs how long that took.
 */
export async function untilUringBusy(pid: number | undefined, maxMs: number): Promise<{ inflight: number | undefined; busyWaitMs: number }> {
  const t0 = Date.now();
  let inflight = uringInflight(pid);
  while (inflight === 0 && Date.now() - t0 < maxMs) {
    await new Promise((r) => setTimeout(r, 1));
    inflight = uringInflight(pid);
  }
  return { inflight, busyWaitMs: Date.now() - t0 };
}

/** Signal a daemon (SIGTERM by default), SIGKILL after `timeoutMs`; resolves with its exit status. */
export function stopDaemon(
  child: ChildProcess,
  opts: { signal?: NodeJS.Signals; timeoutMs?: number } = {},
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (hasExited(child)) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 10000);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
    child.kill(opts.signal ?? 'SIGTERM');
  });
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
  log?: (line: string) => void;
}

/** QEMU option syntax: a literal comma in a value is written as ",,". */
function qemuOptValue(v: string): string {
  return v.replace(/,/g, ',,');
}

export function qsdArgs(opts: QsdOptions & { aio: string }): string[] {
  const direct = opts.direct ?? true;
  return [
    '--blockdev',
    `driver=file,node-name=file0,filename=${qemuOptValue(opts.image)},cache.direct=${direct ? 'on' : 'off'},aio=${opts.aio}`,
    '--export',
    `type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=${qemuOptValue(opts.socket)},` +
      `writable=${opts.readOnly ? 'off' : 'on'},num-queues=${opts.queues}`,
  ];
}

/**
 * Start qemu-storage-daemon exporting `image` as vhost-user-blk on `socket`.
 * Resolves once the socket exists. Stop it with stopDaemon().
 */
export async function startQsd(opts: QsdOptions): Promise<ChildProcess> {
  const base = { socket: opts.socket, ...(opts.log ? { log: opts.log } : {}) };
  if (opts.aio !== undefined) {
    return startDaemon('qemu-storage-daemon', qsdArgs({ ...opts, aio: opts.aio }), base);
  }
  try {
    return await startDaemon('qemu-storage-daemon', qsdArgs({ ...opts, aio: 'io_uring' }), base);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    opts.log?.(`[harness] qemu-storage-daemon with aio=io_uring failed, retrying with aio=native: ${msg.split('\n').pop()}`);
    try {
      return await startDaemon('qemu-storage-daemon', qsdArgs({ ...opts, aio: 'native' }), base);
    } catch (e2) {
      const msg2 = e2 instanceof Error ? e2.message : String(e2);
      throw new Error(`qemu-storage-daemon failed with aio=io_uring:\n${msg}\nand with aio=native:\n${msg2}`);
    }
  }
}

export interface VublkOptions {
  image: string;
  socket: string;
  queues: number;
  extraArgs?: string[];
  log?: (line: string) => void;
  /**
   * Default true. false leaves a stale socket (of a killed vublk) in place, so
   * vublk's own stale-socket check is exercised; readiness is then its
   * `vublk: info: serving` line plus the socket.
   */
  removeStaleSocket?: boolean;
}

/** Start `node bin/vublk.js --disk IMG --socket SOCK --queues N` from the repo root. */
export function startVublk(opts: VublkOptions): Promise<ChildProcess> {
  const root = repoRoot();
  return startDaemon(
    process.execPath,
    [
      path.join(root, 'bin', 'vublk.js'),
      '--disk', opts.image,
      '--socket', opts.socket,
      '--queues', String(opts.queues),
      ...(opts.extraArgs ?? []),
    ],
    {
      socket: opts.socket,
      cwd: root,
      ...(opts.log ? { log: opts.log } : {}),
      ...(opts.removeStaleSocket === false ? { removeStaleSocket: false, readyLine: /\bvublk: info: serving\b/ } : {}),
    },
  );
}

/** One of the vublk processes that replace each other on one image and socket in a restart test. */
export interface VublkGeneration {
  /** 1 for the first vublk of the run, then 2, 3... */
  n: number;
  child: ChildProcess;
  /** Stops treating its exit as a failure: call before stopping it on purpose. */
  expectExit(): void;
}

/**
 * Starts vublk #n on image and socket, over the stale socket a killed one
 * left (vublk must replace it itself); onUnexpectedExit gets an error if it
 * exits before expectExit() (a dead backend leaves the guest hanging).
 * VUBLK_E2E_VERBOSE=1 streams its output tagged [vublk#n].
 */
export async function startVublkGeneration(o: {
  image: string;
  socket: string;
  queues: number;
  n: number;
  onUnexpectedExit: (err: Error) => void;
}): Promise<VublkGeneration> {
  const child = await startVublk({
    image: o.image,
    socket: o.socket,
    queues: o.queues,
    removeStaleSocket: false,
    ...(e2eLog ? { log: (l: string) => e2eLog?.(`[vublk#${o.n}] ${l}`) } : {}),
  });
  const onExit = (code: number | null, sig: NodeJS.Signals | null): void =>
    o.onUnexpectedExit(new Error(`vublk #${o.n} exited on its own (code ${code}, signal ${sig})`));
  child.once('exit', onExit);
  return { n: o.n, child, expectExit: () => void child.off('exit', onExit) };
}

/** Create a sparse raw image of `bytes`. */
export async function createSparseImage(file: string, bytes: number): Promise<void> {
  const fh = await fsp.open(file, 'w');
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
}

// ------------------------------------------------------------ e2e tests ---

export type Prerequisites = { ok: boolean; reason?: string };
export type Exit = { code: number | null; signal: NodeJS.Signals | null };

/** With VUBLK_E2E_VERBOSE=1: streams guest and backend output lines to stderr. */
export const e2eLog: ((line: string) => void) | undefined = process.env.VUBLK_E2E_VERBOSE
  ? (l: string): void => void process.stderr.write(`${l}\n`)
  : undefined;

/** The last n lines of s (diagnostics of a failed assertion). */
export function tail(s: string, n = 60): string {
  return s.split('\n').slice(-n).join('\n');
}

/** vublk can be started: bin/vublk.js exists (with `built`, its compiled entry point too). */
export function vublkPrerequisites(opts: { built?: boolean } = {}): Prerequisites {
  const root = repoRoot();
  const files = [path.join(root, 'bin', 'vublk.js'), ...(opts.built ? [path.join(root, 'dist', 'src', 'cli', 'main.js')] : [])];
  for (const f of files) {
    if (!fs.existsSync(f)) return { ok: false, reason: `${f} not found${opts.built ? ' (npm run build)' : ''}` };
  }
  return { ok: true };
}

/** Loop devices with a chosen sector size can be made here (root, losetup, the loop module). */
export function loopPrerequisites(): Prerequisites {
  const reason = loopUnsupported();
  return reason === undefined ? { ok: true } : { ok: false, reason };
}

/** The first of these prerequisites that is missing, else ok. */
export function allPrerequisites(...checks: Array<() => Prerequisites>): Prerequisites {
  for (const check of checks) {
    const p = check();
    if (!p.ok) return p;
  }
  return { ok: true };
}

/**
 * t.test(name, extra, fn) when the prerequisites are there. Without them the
 * test is skipped (named skipName) with the reason, except under CI (env CI
 * set), where that is a failure: "<ciWhat> prerequisites missing in CI: <reason>".
 */
export function testWithPrerequisites(
  t: Test,
  prereq: Prerequisites,
  ciWhat: string,
  name: string,
  extra: { timeout?: number },
  fn: (tt: Test) => Promise<void>,
  skipName = name,
): Promise<unknown> {
  if (prereq.ok) return t.test(name, extra, fn);
  if (process.env.CI) {
    t.fail(`${ciWhat} prerequisites missing in CI: ${prereq.reason}`);
    return Promise.resolve();
  }
  return t.test(skipName, { skip: prereq.reason ?? 'prerequisites missing' }, async () => {});
}

/**
 * A file's QEMU e2e test (see testWithPrerequisites): builds or reuses the
 * guest (ensureGuest), then runs fn. Plain `node file.test.js` gives the
 * whole file tap's 30 s default: it gets fileTimeoutMs (the tap runner's own
 * limit comes from package.json "tap.timeout").
 */
export function guestTest(
  t: Test,
  opts: { prereq: Prerequisites; ciWhat: string; name: string; skipName: string; timeoutMs: number; fileTimeoutMs: number },
  fn: (tt: Test) => Promise<void>,
): void {
  if (opts.prereq.ok) t.setTimeout(opts.fileTimeoutMs);
  void testWithPrerequisites(
    t,
    opts.prereq,
    opts.ciWhat,
    opts.name,
    { timeout: opts.timeoutMs },
    async (tt) => {
      const t0 = Date.now();
      await ensureGuest(e2eLog ? { log: e2eLog } : {});
      tt.comment(`guest ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      await fn(tt);
      tt.comment(`total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    },
    opts.skipName,
  );
}

export interface GuestDisk {
  dir: string;
  /** The sparse image file. */
  image: string;
  /** Where the backend is to listen. */
  socket: string;
  /** With loop4k: the 4K-native direct-I/O loop device over the image. */
  loop: LoopDevice | undefined;
  /** What the backend serves: the loop device, else the image. */
  disk: string;
}

/**
 * A sparse image of imageBytes (named imageName, default disk.img) in a fresh
 * directory under VUBLK_E2E_TMPDIR (default the OS tmpdir; the backend opens
 * it with O_DIRECT, so it must be a file system that supports that, not
 * tmpfs). With loop4k, behind a loop device with 4096-byte logical sectors
 * and direct I/O, which must really have both (comments its sysfs limits).
 * One teardown undoes it all, in this order: the backend daemon() (if still
 * running), the loop device, the directory.
 */
export async function guestDisk(
  tt: Test,
  opts: { prefix: string; imageBytes: number; imageName?: string; loop4k?: boolean; what?: string; daemon?: () => ChildProcess | undefined },
): Promise<GuestDisk> {
  const dir = await fsp.mkdtemp(path.join(process.env.VUBLK_E2E_TMPDIR ?? os.tmpdir(), opts.prefix));
  const image = path.join(dir, opts.imageName ?? 'disk.img');
  let loop: LoopDevice | undefined;
  tt.teardown(async () => {
    const child = opts.daemon?.();
    if (child !== undefined) await stopDaemon(child, { timeoutMs: 10000 });
    if (loop !== undefined) {
      try {
        loop.detach({ delayMs: 250 });
        tt.comment(`teardown: ${loop.dev} detached`);
      } catch (err) {
        tt.comment(`teardown: ${loop.dev} NOT detached: ${(err as Error).message}`);
      }
    }
    await fsp.rm(dir, { recursive: true, force: true });
  });
  await createSparseImage(image, opts.imageBytes);
  if (opts.loop4k) {
    loop = attachLoop(image, 4096);
    const dev = loop.dev;
    const lbs = sysBlock(dev, 'queue/logical_block_size');
    const dio = sysBlock(dev, 'loop/dio');
    const attrs = ['physical_block_size', 'dma_alignment', 'discard_max_bytes', 'discard_granularity'];
    tt.comment(`${opts.what !== undefined ? `${opts.what}: ` : ''}${dev} -> ${image}: logical_block_size=${lbs} dio=${dio} ` +
      attrs.map((a) => `${a}=${sysBlock(dev, `queue/${a}`)}`).join(' '));
    // The host setup itself must be what the test is about.
    if (lbs !== '4096' || dio !== '1') {
      throw new Error(`${dev} is not a 4K-native direct-I/O loop device (logical_block_size=${lbs}, dio=${dio}); ` +
        `is ${dir} on a file system with O_DIRECT support? (set VUBLK_E2E_TMPDIR)`);
    }
  }
  return { dir, image, socket: path.join(dir, 'vhost.sock'), loop, disk: loop?.dev ?? image };
}

/** Resolves once the daemon's stdout/stderr have ended (all its lines captured), or after `ms`. */
async function outputDrained(child: ChildProcess, ms = 3000): Promise<void> {
  const ended = (s: NodeJS.ReadableStream | null): boolean => {
    const r = s as unknown as { readableEnded?: boolean; destroyed?: boolean } | null;
    return r === null || r.readableEnded === true || r.destroyed === true;
  };
  const deadline = Date.now() + ms;
  while (!(ended(child.stdout) && ended(child.stderr)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface GuestRun {
  res: RunGuestResult;
  /** How the backend exited when stopped with SIGTERM after the guest. */
  stopped: Exit;
  /** Everything the backend printed (see daemonLog), its output drained. */
  output: string;
  /** runGuestWith(..., waitForClose = true) was asked to wait for closedLine. */
  waitedForClose: boolean;
  /** vublk's "frontend connection closed" line after QEMU went (undefined if none came). */
  closedLine: string | undefined;
}

/**
 * One guest boot (runGuest) against the running backend `daemon` (`name` in
 * messages). If the backend exits during the run the guest's I/O would hang
 * until the timeout: QEMU is stopped early then. With waitForClose, waits
 * (10 s at most) for vublk to notice by itself that QEMU is gone (and log its
 * counters). Then always stops the backend (SIGTERM, SIGKILL after 10 s) and
 * lets its output drain.
 */
export async function runGuestWith(daemon: ChildProcess, name: string, opts: RunGuestOptions, waitForClose = false): Promise<GuestRun> {
  const ac = new AbortController();
  const onExit = (code: number | null, sig: NodeJS.Signals | null): void =>
    ac.abort(new Error(`${name} exited during the run (code ${code}, signal ${sig})`));
  daemon.once('exit', onExit);
  let res: RunGuestResult;
  let closedLine: string | undefined;
  let stopped: Exit;
  try {
    res = await runGuest({ ...opts, signal: ac.signal });
    if (waitForClose) closedLine = await waitForDaemonLine(daemon, /\bvublk: info: frontend connection closed\b/, 10000);
  } finally {
    daemon.off('exit', onExit);
    stopped = await stopDaemon(daemon, { signal: 'SIGTERM', timeoutMs: 10000 });
    await outputDrained(daemon);
  }
  return { res, stopped, output: daemonLog(daemon), waitedForClose: waitForClose, closedLine };
}

/** The guest reported PASS (`message`); on failure with the guest's and the backend's last lines. */
export function expectGuestPass(tt: Test, run: { res: RunGuestResult; output: string }, message: string): void {
  const { res } = run;
  tt.ok(res.passed, message, {
    result: res.result,
    exitCode: res.exitCode,
    signal: res.signal,
    timedOut: res.timedOut,
    backendDied: res.aborted,
    guestOutput: tail(res.output),
    backendOutput: tail(run.output, 30),
  });
}

/**
 * The backend `name` noticed by itself that QEMU went (if the run waited for
 * that), exited 0 on SIGTERM (it drains, cleans up, exits) and, if it is
 * vublk, logged no warn/error line.
 */
export function expectCleanStop(tt: Test, name: string, run: GuestRun): void {
  const backendOutput = tail(run.output, 30);
  if (run.waitedForClose) {
    tt.ok(run.closedLine !== undefined, `${name} noticed the frontend connection close by itself`, { backendOutput });
  }
  tt.same(run.stopped, { code: 0, signal: null }, `${name} exits 0 on SIGTERM`, { backendOutput });
  if (name === 'vublk') tt.same(vublkProblemLines(run.output), [], 'vublk logged no warn/error line', { backendOutput });
}
