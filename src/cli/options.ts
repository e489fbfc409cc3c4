// Command line parsing. Pure: reads nothing from disk, creates nothing. Every
// problem is a UsageError whose message is one line naming the option.

import os from 'node:os';
import { MAX_QUEUES } from '../blk/features';
import { MAX_WORKERS } from '../device/shared-disk-state';
import { UsageError } from '../errors';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel, isLogFormat, isLogLevel } from '../log';
import { VIRTIO_BLK_ID_BYTES } from '../virtio/constants';
import { MAX_RING_SIZE } from '../vhost-user/vring-rules';
import { parseMetricsAddress, type MetricsAddress } from '../metrics/listen-address';
import { isRbdDisk, parseRbdSpec, type RbdSpec } from '../disk/rbd-spec';

export const DEFAULT_DISK_PATH = './vublk-disk.img';
/** Size of the sparse image created when --disk is omitted. */
export const DEFAULT_DISK_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_SOCKET_PATH = './vublk.sock';
export const DEFAULT_QUEUES = 1;
/** Default --poll-max-us: about one disk round trip on fast flash, QEMU's order of magnitude. */
export const DEFAULT_POLL_MAX_US = 50;
export const MAX_POLL_US = 100_000;
/**
 * --queue-size caps the ring size a frontend may ask for (SET_VRING_NUM).
 * By default every size QEMU's vhost-user-blk-pci allows is served; an
 * operator may lower it to bound per-connection memory (request slots and
 * used-entry arrays are sized by it) and seg_max.
 */
export const MAX_QUEUE_SIZE = MAX_RING_SIZE;
export const DEFAULT_QUEUE_SIZE = MAX_QUEUE_SIZE;
export const MIN_QUEUE_SIZE = 2;
export const DEFAULT_SERIAL = 'vublk';
export const DEFAULT_LOGICAL_BLOCK_SIZE = 512;
export const DEFAULT_LOG_LEVEL: LogLevel = 'info';
/** Text on a terminal and in the journal alike; JSON lines only when asked for. */
export const DEFAULT_LOG_FORMAT: LogFormat = 'text';
/** The default state file is the socket path with this suffix. */
export const STATE_FILE_SUFFIX = '.state';
/** --state-file none: keep the write cache mode in memory only. */
export const NO_STATE_FILE = 'none';
/** sizeof(sockaddr_un.sun_path) on Linux is 108, one byte of which is the NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;
/** Largest --socket-fd accepted (INT_MAX, the largest fd number). */
export const MAX_SOCKET_FD = 2147483647;

export interface Options {
  /** Host disk (image file or block device, or rbd:...); undefined when --disk was omitted. */
  disk: string | undefined;
  /** --disk rbd:POOL[/NAMESPACE]/IMAGE: the RBD image; undefined for a path. */
  rbd: RbdSpec | undefined;
  /** --ceph-conf: Ceph configuration file; undefined: Ceph's default search (/etc/ceph/ceph.conf, ...). */
  cephConf: string | undefined;
  /** --ceph-id: Ceph client name without "client."; undefined: Ceph's default (admin). */
  cephId: string | undefined;
  /** True when --disk was omitted: the daemon creates DEFAULT_DISK_PATH, a sparse DEFAULT_DISK_BYTES image. */
  defaultDisk: boolean;
  socket: string;
  /** --socket was given (not the default). */
  socketGiven: boolean;
  /**
   * --socket-fd: serve this inherited listening socket instead of binding
   * --socket (refused together with --socket). Socket activation
   * (LISTEN_FDS) needs no option: see src/daemon/passed-socket.ts.
   */
  socketFd: number | undefined;
  queues: number;
  queueSize: number;
  readOnly: boolean;
  serial: string;
  logicalBlockSize: 512 | 4096;
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** Register guest memory as io_uring fixed buffers (off: --no-fixed-buffers). */
  fixedBuffers: boolean;
  /** --max-pinned-memory in bytes; undefined: DEFAULT_PINNED_FRACTION of the host's RAM (decided at start-up). */
  maxPinnedMemory: number | undefined;
  /**
   * Where the guest's write cache mode is kept across restarts: --state-file,
   * by default the socket path + STATE_FILE_SUFFIX; null for --state-file none.
   */
  stateFile: string | null;
  /** --metrics-listen: where the Prometheus endpoint listens; undefined: no endpoint. */
  metricsListen: MetricsAddress | undefined;
  /** Take QEMU's image locks on the disk (off: --no-image-lock; see src/disk/image-lock.ts). */
  imageLock: boolean;
  /** --workers: data-plane worker threads per connection (0: in-thread; default one per queue up to the cores). */
  workers: number;
  /** --poll-max-us: longest busy-poll pass of a worker after a batch; 0: no polling. */
  pollMaxUs: number;
  /** --help was given: print usageText() and exit 0; other options are not validated. */
  help: boolean;
}

interface OptionSpec {
  name: string;
  /** Placeholder for the value in the usage text; undefined for flags. */
  arg: string | undefined;
  help: string;
}

const SPECS: readonly OptionSpec[] = [
  {
    name: 'disk',
    arg: 'PATH',
    help: `image file or block device to serve, or an RBD image as rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE (default: create ${DEFAULT_DISK_PATH}, a sparse 1 GiB image)`,
  },
  { name: 'ceph-conf', arg: 'PATH', help: "Ceph configuration file for an rbd: disk (default: Ceph's own, /etc/ceph/ceph.conf)" },
  { name: 'ceph-id', arg: 'NAME', help: 'Ceph client name for an rbd: disk, without "client." (default: admin)' },
  { name: 'socket', arg: 'PATH', help: `vhost-user socket to listen on (default ${DEFAULT_SOCKET_PATH})` },
  {
    name: 'socket-fd',
    arg: 'N',
    help: 'serve this inherited listening Unix socket instead of --socket (systemd socket activation needs no option)',
  },
  { name: 'queues', arg: 'N', help: `number of request queues, 1..${MAX_QUEUES} (default ${DEFAULT_QUEUES})` },
  {
    name: 'workers',
    arg: 'N',
    help: `data-plane worker threads, 0..${MAX_WORKERS}; queue q is served by worker q mod N; 0 serves every queue on the main thread (default: one per queue, up to the number of cores)`,
  },
  {
    name: 'poll-max-us',
    arg: 'N',
    help: `longest busy-poll pass of a worker after a batch, adapted to the load, 0..${MAX_POLL_US} microseconds; 0 disables polling (default ${DEFAULT_POLL_MAX_US})`,
  },
  {
    name: 'queue-size',
    arg: 'N',
    help: `largest ring a frontend may ask for, a power of two ${MIN_QUEUE_SIZE}..${MAX_QUEUE_SIZE} (default ${DEFAULT_QUEUE_SIZE})`,
  },
  { name: 'read-only', arg: undefined, help: 'present the disk read-only (writes fail with IOERR)' },
  {
    name: 'serial',
    arg: 'ID',
    help: `serial number reported to the guest, printable ASCII, at most ${VIRTIO_BLK_ID_BYTES} bytes (default "${DEFAULT_SERIAL}")`,
  },
  {
    name: 'logical-block-size',
    arg: '512|4096',
    help: `block size the guest sees (default ${DEFAULT_LOGICAL_BLOCK_SIZE})`,
  },
  { name: 'log-level', arg: LOG_LEVELS.join('|'), help: `log verbosity (default ${DEFAULT_LOG_LEVEL})` },
  {
    name: 'log-format',
    arg: LOG_FORMATS.join('|'),
    help: `log lines as "vublk: level: message key=value" or as JSON objects (default ${DEFAULT_LOG_FORMAT})`,
  },
  {
    name: 'no-fixed-buffers',
    arg: undefined,
    help: 'do not register guest memory with io_uring (plain reads and writes; for comparison)',
  },
  {
    name: 'max-pinned-memory',
    arg: 'SIZE',
    help: 'most guest memory registered (pinned) as io_uring fixed buffers per connection, e.g. 4G; beyond it plain reads and writes (default: a quarter of RAM)',
  },
  {
    name: 'state-file',
    arg: 'PATH|none',
    help: `file that keeps the guest's write cache mode across restarts (default: the socket path + "${STATE_FILE_SUFFIX}"); "${NO_STATE_FILE}": keep it in memory only`,
  },
  {
    name: 'metrics-listen',
    arg: 'PATH|HOST:PORT',
    help: 'serve Prometheus metrics at /metrics on a Unix socket or a TCP address, e.g. 127.0.0.1:9101 (wildcard addresses are refused; port 0 picks a free port, logged)',
  },
  {
    name: 'no-image-lock',
    arg: undefined,
    help: "do not take QEMU's image locks (as QEMU's locking=off): only when another user of the image is known to be safe",
  },
  { name: 'help', arg: undefined, help: 'print this help and exit' },
];

/** The --help text: a usage line, then one line per option. */
export function usageText(): string {
  const lines = [
    'usage: vublk [options]',
    '       vublk install-unit NAME --disk PATH ... (systemd units; see install-unit --help)',
    '       vublk bench --socket PATH ... (load generator for any vhost-user-blk backend; see bench --help)',
    '',
    'Serve a disk to a QEMU guest as a vhost-user-blk device.',
    '',
  ];
  const heads = SPECS.map((s) => (s.arg === undefined ? `--${s.name}` : `--${s.name} ${s.arg}`));
  const width = Math.max(...heads.map((h) => h.length));
  SPECS.forEach((s, i) => {
    lines.push(`  ${(heads[i] ?? '').padEnd(width)}  ${s.help}`);
  });
  return lines.join('\n') + '\n';
}

function show(value: string): string {
  return JSON.stringify(value);
}

export function parseInteger(name: string, raw: string, min: number, max: number, what: string): number {
  const n = /^[0-9]{1,10}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= min && n <= max)) {
    throw new UsageError(`--${name} expects ${what}, got ${show(raw)}`);
  }
  return n;
}

function parseQueueSize(raw: string): number {
  const what = `a power of two between ${MIN_QUEUE_SIZE} and ${MAX_QUEUE_SIZE}`;
  const n = parseInteger('queue-size', raw, MIN_QUEUE_SIZE, MAX_QUEUE_SIZE, what);
  if ((n & (n - 1)) !== 0) throw new UsageError(`--queue-size expects ${what}, got ${show(raw)}`);
  return n;
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** A byte count: digits with an optional binary suffix K, M, G or T (e.g. 512M). */
export function parseSize(name: string, raw: string): number {
  const m = /^([0-9]{1,15})([KMGT]?)$/i.exec(raw);
  const n = m ? Number(m[1]) * (SIZE_UNITS[m[2]!.toUpperCase()] ?? NaN) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new UsageError(`--${name} expects a size in bytes with an optional K, M, G or T suffix (e.g. 4G), got ${show(raw)}`);
  }
  return n;
}

function parseSerial(raw: string): string {
  if (raw.length > VIRTIO_BLK_ID_BYTES || !/^[\x20-\x7e]*$/.test(raw)) {
    throw new UsageError(`--serial expects at most ${VIRTIO_BLK_ID_BYTES} printable ASCII characters, got ${show(raw)}`);
  }
  return raw;
}

function parseLogicalBlockSize(raw: string): 512 | 4096 {
  if (raw === '512') return 512;
  if (raw === '4096') return 4096;
  throw new UsageError(`--logical-block-size expects 512 or 4096, got ${show(raw)}`);
}

function parseLogLevel(raw: string): LogLevel {
  if (isLogLevel(raw)) return raw;
  throw new UsageError(`--log-level expects one of ${LOG_LEVELS.join(', ')}, got ${show(raw)}`);
}

function parseLogFormat(raw: string): LogFormat {
  if (isLogFormat(raw)) return raw;
  throw new UsageError(`--log-format expects one of ${LOG_FORMATS.join(', ')}, got ${show(raw)}`);
}

function parsePath(name: string, raw: string): string {
  if (raw === '') throw new UsageError(`--${name} expects a path, got ""`);
  if (raw.includes('\0')) throw new UsageError(`--${name} expects a path without NUL bytes, got ${show(raw)}`);
  return raw;
}

export function parseCephId(raw: string): string {
  if (raw.startsWith('client.')) throw new UsageError(`--ceph-id expects the name without "client.", e.g. ${show(raw.slice(7))}`);
  if (!/^[A-Za-z0-9_.-]+$/.test(raw))
    throw new UsageError(`--ceph-id expects a Ceph client name (letters, digits, "_", ".", "-"), got ${show(raw)}`);
  return raw;
}

function parseSocketPath(raw: string): string {
  const path = parsePath('socket', raw);
  const bytes = Buffer.byteLength(path, 'utf8');
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new UsageError(
      `--socket expects a path of at most ${MAX_SOCKET_PATH_BYTES} bytes (a Unix socket address limit), got ${bytes} bytes`,
    );
  }
  return path;
}

/**
 * Parse the arguments after the program name (process.argv.slice(2)).
 * Accepts `--opt value` and `--opt=value`. Unknown options, stray
 * arguments, missing values and repeated options are errors. When --help
 * (or -h) appears anywhere as an argument, the rest is not validated and
 * the defaults are returned with help set.
 */
export function parseOptions(argv: readonly string[]): Options {
  const opts: Options = {
    disk: undefined,
    rbd: undefined,
    cephConf: undefined,
    cephId: undefined,
    defaultDisk: true,
    socket: DEFAULT_SOCKET_PATH,
    socketGiven: false,
    socketFd: undefined,
    queues: DEFAULT_QUEUES,
    queueSize: DEFAULT_QUEUE_SIZE,
    readOnly: false,
    serial: DEFAULT_SERIAL,
    logicalBlockSize: DEFAULT_LOGICAL_BLOCK_SIZE,
    logLevel: DEFAULT_LOG_LEVEL,
    logFormat: DEFAULT_LOG_FORMAT,
    fixedBuffers: true,
    maxPinnedMemory: undefined,
    stateFile: DEFAULT_SOCKET_PATH + STATE_FILE_SUFFIX,
    metricsListen: undefined,
    imageLock: true,
    workers: 0,
    pollMaxUs: DEFAULT_POLL_MAX_US,
    help: false,
  };
  if (argv.some((a) => a === '--help' || a === '-h')) {
    opts.help = true;
    return opts;
  }

  let stateFile: string | undefined;
  let workers: number | undefined;
  const seen = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    if (!arg.startsWith('--') || arg === '--') {
      throw new UsageError(`unexpected argument ${show(arg)} (options start with "--"; see --help)`);
    }
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const spec = SPECS.find((s) => s.name === name);
    if (spec === undefined) throw new UsageError(`unknown option ${show(`--${name}`)} (see --help)`);
    if (seen.has(name)) throw new UsageError(`--${name} given more than once`);
    seen.add(name);

    let value = '';
    if (spec.arg === undefined) {
      if (eq >= 0) throw new UsageError(`--${name} takes no value, got ${show(arg.slice(eq + 1))}`);
    } else if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      const next = argv[i + 1];
      if (next === undefined) throw new UsageError(`--${name} expects a value (${spec.arg})`);
      if (next.startsWith('--')) {
        throw new UsageError(
          `--${name} expects a value (${spec.arg}), got option ${show(next)}; write --${name}=VALUE for a value starting with "--"`,
        );
      }
      value = next;
      i++;
    }

    switch (name) {
      case 'disk':
        opts.disk = parsePath('disk', value);
        opts.rbd = isRbdDisk(value) ? parseRbdSpec(value) : undefined;
        opts.defaultDisk = false;
        break;
      case 'ceph-conf':
        opts.cephConf = parsePath('ceph-conf', value);
        break;
      case 'ceph-id':
        opts.cephId = parseCephId(value);
        break;
      case 'socket':
        opts.socket = parseSocketPath(value);
        opts.socketGiven = true;
        break;
      case 'socket-fd':
        opts.socketFd = parseInteger('socket-fd', value, 0, MAX_SOCKET_FD, `a file descriptor number between 0 and ${MAX_SOCKET_FD}`);
        break;
      case 'queues':
        opts.queues = parseInteger('queues', value, 1, MAX_QUEUES, `an integer between 1 and ${MAX_QUEUES}`);
        break;
      case 'workers':
        workers = parseInteger('workers', value, 0, MAX_WORKERS, `an integer between 0 and ${MAX_WORKERS}`);
        break;
      case 'poll-max-us':
        opts.pollMaxUs = parseInteger('poll-max-us', value, 0, MAX_POLL_US, `an integer between 0 and ${MAX_POLL_US}`);
        break;
      case 'queue-size':
        opts.queueSize = parseQueueSize(value);
        break;
      case 'read-only':
        opts.readOnly = true;
        break;
      case 'serial':
        opts.serial = parseSerial(value);
        break;
      case 'logical-block-size':
        opts.logicalBlockSize = parseLogicalBlockSize(value);
        break;
      case 'log-level':
        opts.logLevel = parseLogLevel(value);
        break;
      case 'log-format':
        opts.logFormat = parseLogFormat(value);
        break;
      case 'no-fixed-buffers':
        opts.fixedBuffers = false;
        break;
      case 'max-pinned-memory':
        opts.maxPinnedMemory = parseSize('max-pinned-memory', value);
        break;
      case 'state-file':
        stateFile = parsePath('state-file', value);
        break;
      case 'metrics-listen':
        opts.metricsListen = parseMetricsAddress(value);
        break;
      case 'no-image-lock':
        opts.imageLock = false;
        break;
      default:
        // SPECS and this switch list the same names; reaching here is a bug.
        throw new Error(`option --${name} has no parser`);
    }
  }
  if (opts.rbd === undefined && (opts.cephConf !== undefined || opts.cephId !== undefined)) {
    throw new UsageError(`--${opts.cephConf !== undefined ? 'ceph-conf' : 'ceph-id'} applies to an rbd: disk only (--disk rbd:POOL/IMAGE)`);
  }
  if (opts.socketGiven && opts.socketFd !== undefined) {
    throw new UsageError('--socket and --socket-fd both name the socket to serve; give one of them');
  }
  opts.workers = workers ?? Math.min(opts.queues, os.availableParallelism());
  // A file named "none" is still reachable as ./none.
  opts.stateFile = stateFile === NO_STATE_FILE ? null : (stateFile ?? opts.socket + STATE_FILE_SUFFIX);
  return opts;
}
