// `vublk` entry point: options, disk, device, server, signals.

import path from 'node:path';
import { parseOptions, usageText, DEFAULT_DISK_BYTES, DEFAULT_DISK_PATH, type Options } from './options';
import { ensureDefaultImage, openHostDisk, closeHostDisk, currentSizeBytes } from '../disk/host-disk';
import { openRbdDisk } from '../disk/rbd-disk';
import { CapacityWatch, type ResizeTrigger } from '../device/capacity-watch';
import { BlkDevice } from '../device/blk-device';
import { BlkBackend } from '../device/blk-backend';
import { WriteCacheStateFile, diskIdentity } from '../device/write-cache-state';
import { VhostUserServer } from '../daemon/server';
import { passedSocket } from '../daemon/passed-socket';
import { notifyService, type ServiceNotifier } from '../daemon/service-notify';
import { armExitDeadline } from '../daemon/exit-deadline';
import { isVublkError } from '../errors';
import { log, setLogFormat, setLogLevel } from '../log';
import { featureNames } from '../virtio/constants';
import { qemuCommandLine } from './qemu-command';
import { installUnitMain } from './install-unit';
import { benchMain } from './bench';
import { checkNativeLayout } from '../native/layout-check';
import { MetricsEndpoint } from '../metrics/endpoint';

export interface Running {
  server: VhostUserServer;
  device: BlkDevice;
  /** The --metrics-listen endpoint, not yet listening: main() starts it. */
  metrics: MetricsEndpoint | undefined;
  /** Looks at the disk's size now (online resize). */
  checkSize(trigger: ResizeTrigger): void;
  stop(): Promise<void>;
}

/** Starts serving; throws a VublkError naming the problem. */
export function startDaemon(opts: Options): Running {
  setLogFormat(opts.logFormat);
  setLogLevel(opts.logLevel);
  checkNativeLayout();
  const passed = passedSocket(opts.socketFd, opts.socketGiven);
  let diskPath = opts.disk;
  if (diskPath === undefined) {
    diskPath = DEFAULT_DISK_PATH;
    if (ensureDefaultImage(diskPath, DEFAULT_DISK_BYTES)) {
      log.info('created default disk image', { path: path.resolve(diskPath), bytes: DEFAULT_DISK_BYTES });
    }
  }
  // An RBD image has no image locks: its exclusive lock keeps other writers out.
  const disk =
    opts.rbd !== undefined
      ? openRbdDisk(opts.rbd, { conf: opts.cephConf, id: opts.cephId }, opts.readOnly)
      : openHostDisk(diskPath, opts.readOnly, opts.imageLock);
  let device: BlkDevice;
  const server = (() => {
    try {
      const writeCacheState =
        opts.stateFile === null
          ? undefined
          : new WriteCacheStateFile(
              path.resolve(opts.stateFile),
              disk.kind === 'rbd' ? { path: disk.path, kind: 'rbd' } : diskIdentity(disk.path, disk.fd),
            );
      device = new BlkDevice(disk, { ...opts, writeCacheState });
      const s = new VhostUserServer(passed?.name ?? path.resolve(opts.socket), new BlkBackend(device), passed);
      s.start();
      return s;
    } catch (err) {
      closeHostDisk(disk);
      throw err;
    }
  })();
  const r = disk.rules;
  log.info('host disk direct I/O', {
    offsetAlign: r.offsetAlign,
    memAlign: r.memAlign,
    lenAlign: r.lenAlign,
    physicalBlock: r.physicalBlock,
    ioMin: r.ioMin,
    ioOpt: r.ioOpt,
    source: r.source,
  });
  log.info('serving', {
    disk: disk.path,
    kind: disk.kind,
    bytes: disk.sizeBytes,
    socket: server.socketPath,
    ...(passed === undefined ? {} : { socketPassedBy: passed.source }),
    queues: opts.queues,
    queueSize: opts.queueSize,
    logicalBlockSize: opts.logicalBlockSize,
    readOnly: device!.blkDisk.readOnly,
    features: featureNames(device!.features).join(','),
    stateFile: opts.stateFile === null ? 'none' : path.resolve(opts.stateFile),
  });
  const watch = new CapacityWatch(device!, () => currentSizeBytes(disk));
  watch.start();
  // librbd announces a resize by another client at once: no need to wait for the poll.
  disk.rbd?.watchUpdates(() => watch.check('rbd-update'));
  let stopping: Promise<void> | undefined;
  const metrics = opts.metricsListen === undefined ? undefined : new MetricsEndpoint(opts.metricsListen, device!);
  return {
    server,
    device: device!,
    metrics,
    checkSize: (trigger) => watch.check(trigger),
    stop() {
      watch.stop();
      stopping ??= Promise.all([server.stop(), metrics?.stop()]).then(() => closeHostDisk(disk));
      return stopping;
    },
  };
}

export function main(argv: string[]): void {
  if (argv[0] === 'install-unit') {
    process.exitCode = installUnitMain(argv.slice(1));
    return;
  }
  if (argv[0] === 'bench') {
    benchMain(argv.slice(1)).then(
      (code) => process.exit(code),
      (err: unknown) => {
        process.stderr.write(`vublk: error: bench: ${(err as Error).stack ?? String(err)}\n`);
        process.exit(1);
      },
    );
    return;
  }
  let opts: Options;
  try {
    opts = parseOptions(argv);
  } catch (err) {
    log.error((err as Error).message);
    process.stderr.write('Try "vublk --help".\n');
    process.exit(2);
  }
  if (opts.help) {
    process.stdout.write(usageText());
    return;
  }
  // Handlers go in before the daemon announces itself: a signal sent as soon
  // as the "serving" line appears must find them (the default action would
  // kill the process without draining).
  let running: Running | undefined;
  let notifier: ServiceNotifier | undefined;
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    notifier?.stopping();
    armExitDeadline();
    (running?.stop() ?? Promise.resolve()).then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('shutdown failed', { error: err as Error });
        process.exit(1);
      },
    );
  };
  // SIGUSR1: log the current connection's counters (bounces, RMW cycles, ...).
  process.on('SIGUSR1', () => running?.server.connection?.logCounters('SIGUSR1'));
  // SIGHUP: the disk may have changed size (online resize).
  process.on('SIGHUP', () => running?.checkSize('SIGHUP'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  try {
    running = startDaemon(opts);
  } catch (err) {
    if (isVublkError(err)) {
      log.error(err.message);
      process.exit(1);
    }
    throw err;
  }
  const r = running;
  // A metrics endpoint that cannot listen is a start-up error like any other;
  // systemd hears READY=1 only once everything is served.
  Promise.resolve()
    .then(() => r.metrics?.start())
    .then(
      () => {
        process.stdout.write(`Attach a QEMU guest with:
  ${qemuCommandLine(r.server.socketPath, opts.queues)}
`);
        if (!stopping) notifier = notifyService(r.server);
      },
      (err: unknown) => {
        log.error((err as Error).message);
        stopping = true;
        const exit = () => process.exit(1);
        r.stop().then(exit, exit);
      },
    );
}
