// `vublk install-unit NAME --disk PATH|rbd:POOL/IMAGE ...`: installs the
// systemd units of systemd/ and the configuration of one disk, so that
// `systemctl enable --now vublk@NAME.socket` serves it. Writes files only;
// it creates no user and starts nothing (it prints those commands).

import fs from 'node:fs';
import path from 'node:path';
import { parseCephId, parseOptions } from './options';
import { UsageError } from '../errors';
import { parseSubcommandArgs } from './subcommand-args';
import { isRbdDisk, parseRbdSpec } from '../disk/rbd-spec';
import { cephAccess, cephSteps, rbdDropInSettings } from './install-unit-rbd';

/** The unit files shipped in the repository (dist/src/cli -> systemd/). */
export const UNIT_SOURCE_DIR = path.resolve(__dirname, '..', '..', '..', 'systemd');
export const UNIT_FILES = ['vublk@.socket', 'vublk@.service'] as const;
/** What the shipped units name; --exec and --config-dir replace them in the installed copy. */
export const DEFAULT_EXEC = '/usr/local/bin/vublk';
export const DEFAULT_UNIT_DIR = '/etc/systemd/system';
export const DEFAULT_CONFIG_DIR = '/etc/vublk';
/** Options the units set themselves; VUBLK_OPTIONS must not repeat them. */
const UNIT_OWNED_OPTIONS = ['--disk', '--socket', '--socket-fd', '--state-file'];
/** Options install-unit takes itself, to check them against the sandbox. */
const INSTALL_OWNED_OPTIONS = ['--ceph-conf', '--ceph-id'];

/** What the disk is; it decides the drop-in and the next steps. */
export type DiskKind = 'file' | 'block' | 'rbd';

export interface InstallRequest {
  name: string;
  /** An absolute path, or rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT]. */
  disk: string;
  /** --ceph-conf and --ceph-id of an rbd disk, written into VUBLK_OPTIONS. */
  cephConf: string | undefined;
  cephId: string | undefined;
  root: string;
  unitDir: string;
  configDir: string;
  options: string;
  exec: string;
  force: boolean;
}

const USAGE = `usage: vublk install-unit NAME --disk PATH [--options "..."] [--exec PATH]
                          [--root DIR] [--unit-dir DIR] [--config-dir DIR] [--force]
       vublk install-unit NAME --disk rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT]
                          [--ceph-conf PATH] [--ceph-id NAME] [--options "..."] ...

Installs vublk@.socket and vublk@.service (into --unit-dir, default ${DEFAULT_UNIT_DIR}),
the configuration NAME.conf (into --config-dir, default ${DEFAULT_CONFIG_DIR}) and the
drop-in vublk@NAME.service.d/disk.conf that makes the disk writable (for an rbd: disk,
that lets vublk reach the Ceph cluster over the network), all under --root (default /).
--ceph-conf must be outside /home, /root, /run/user, /tmp and /var/tmp, which the unit
hides. --exec: the vublk the service runs (default ${DEFAULT_EXEC}). An existing
NAME.conf with other contents is kept unless --force.
`;

// Characters that would need quoting in an EnvironmentFile, ExecStart or ReadWritePaths=.
const UNSAFE = /[\s"'\\$%`]/;

function parseInstallArgs(argv: readonly string[]): InstallRequest | 'help' {
  if (argv.includes('--help') || argv.includes('-h')) return 'help';
  const [name, ...rest] = argv;
  if (name === undefined || name.startsWith('--'))
    throw new UsageError('install-unit expects the disk\'s NAME first (e.g. "vublk install-unit data --disk PATH")');
  if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/.test(name)) {
    throw new UsageError(
      `install-unit NAME expects 1 to 64 letters, digits, "_", ".", ":" or "-" (a systemd instance name), got ${JSON.stringify(name)}`,
    );
  }
  const { values, flags } = parseSubcommandArgs(
    'install-unit',
    rest,
    ['--disk', '--ceph-conf', '--ceph-id', '--root', '--unit-dir', '--config-dir', '--options', '--exec'],
    ['--force'],
  );
  const force = flags.has('--force');
  const absolute = (key: string, fallback?: string): string => {
    const v = values.get(key) ?? fallback;
    if (v === undefined) throw new UsageError(`install-unit: ${key} is required`);
    if (!path.isAbsolute(v) || UNSAFE.test(v)) {
      throw new UsageError(
        `install-unit: ${key} expects an absolute path without spaces, quotes, backslashes, "$" or "%", got ${JSON.stringify(v)}`,
      );
    }
    return path.normalize(v);
  };
  const options = values.get('--options') ?? '';
  if (/["'\\$%`\n]/.test(options)) {
    throw new UsageError(
      'install-unit: --options cannot contain quotes, backslashes, "$", "%" or newlines (set such options in a drop-in)',
    );
  }
  const rbdDisk = isRbdDisk(values.get('--disk') ?? '');
  for (const key of INSTALL_OWNED_OPTIONS) {
    if (values.has(key) && !rbdDisk) throw new UsageError(`install-unit: ${key} applies to an rbd: disk only (--disk rbd:POOL/IMAGE)`);
  }
  const cephId = values.get('--ceph-id');
  return {
    name,
    disk: rbdDisk ? rbdDiskSpec(values.get('--disk')!) : absolute('--disk'),
    cephConf: values.has('--ceph-conf') ? absolute('--ceph-conf') : undefined,
    cephId: cephId === undefined ? undefined : withPrefix(() => parseCephId(cephId)),
    root: path.resolve(values.get('--root') ?? '/'),
    unitDir: absolute('--unit-dir', DEFAULT_UNIT_DIR),
    configDir: absolute('--config-dir', DEFAULT_CONFIG_DIR),
    options: options
      .trim()
      .split(/\s+/)
      .filter((w) => w !== '')
      .join(' '),
    exec: absolute('--exec', DEFAULT_EXEC),
    force,
  };
}

/** Runs parse, prefixing the UsageError it throws with "install-unit: ". */
function withPrefix<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof UsageError) throw new UsageError(`install-unit: ${err.message}`);
    throw err;
  }
}

/** An rbd: --disk as vublk parses it, and writable into the EnvironmentFile as it is. */
function rbdDiskSpec(disk: string): string {
  withPrefix(() => parseRbdSpec(disk));
  if (UNSAFE.test(disk)) {
    throw new UsageError(
      `install-unit: --disk ${JSON.stringify(disk)}: names with quotes, backslashes, "$" or "%" cannot go into the unit's configuration`,
    );
  }
  return disk;
}

/** Everything after --disk in ExecStart=: install-unit's Ceph options, then --options. */
function optionWords(req: InstallRequest): string[] {
  const words: string[] = [];
  if (req.cephConf !== undefined) words.push('--ceph-conf', req.cephConf);
  if (req.cephId !== undefined) words.push('--ceph-id', req.cephId);
  if (req.options !== '') words.push(...req.options.split(' '));
  return words;
}

/** VUBLK_OPTIONS must parse as vublk options and leave the unit's own to the unit. */
function checkVublkOptions(req: InstallRequest): void {
  const words = req.options === '' ? [] : req.options.split(' ');
  const option = (w: string) => w.split('=')[0]!;
  const owned = words.find((w) => UNIT_OWNED_OPTIONS.includes(option(w)));
  if (owned !== undefined) throw new UsageError(`install-unit: --options must not set ${option(owned)}: the unit sets it`);
  const mine = words.find((w) => INSTALL_OWNED_OPTIONS.includes(option(w)));
  if (mine !== undefined) {
    throw new UsageError(
      `install-unit: --options must not set ${option(mine)}: give it to install-unit itself, which checks that the service can use it`,
    );
  }
  try {
    parseOptions(['--disk', req.disk, ...optionWords(req)]);
  } catch (err) {
    throw new UsageError(`install-unit: --options: ${(err as Error).message}`);
  }
}

export function configText(req: InstallRequest): string {
  const disk = isRbdDisk(req.disk) ? 'the RBD image (rbd:POOL/IMAGE)' : 'the image file or block device';
  return [
    `# vublk@${req.name}: read by vublk@.service (EnvironmentFile=).`,
    `# VUBLK_DISK: ${disk}; changing it also needs the`,
    `# drop-in vublk@${req.name}.service.d/disk.conf (run vublk install-unit again).`,
    '# VUBLK_OPTIONS: other vublk options (vublk --help), split on spaces.',
    `VUBLK_DISK=${req.disk}`,
    `VUBLK_OPTIONS="${optionWords(req).join(' ')}"`,
    '',
  ].join('\n');
}

export function dropInText(req: InstallRequest, kind: DiskKind): string {
  const lines =
    kind === 'rbd'
      ? [`# Written by vublk install-unit for disk ${req.name}, an RBD image on a Ceph cluster.`, '[Service]', ...rbdDropInSettings()]
      : [
          `# Written by vublk install-unit for disk ${req.name}: ProtectSystem=strict leaves only the disk writable.`,
          '[Service]',
          `ReadWritePaths=${req.disk}`,
        ];
  if (kind === 'block') lines.push(`DeviceAllow=${req.disk} rw`);
  return lines.join('\n') + '\n';
}

/** The disk's kind; throws UsageError when the units could not serve it. An rbd: disk is not looked up. */
function diskKind(req: InstallRequest): DiskKind {
  if (isRbdDisk(req.disk)) {
    cephAccess(req.root, req.cephConf, req.cephId);
    return 'rbd';
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(path.join(req.root, req.disk));
  } catch {
    throw new UsageError(`install-unit: disk ${req.disk} does not exist${req.root === '/' ? '' : ` under ${req.root}`}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`install-unit: disk ${req.disk} is not a regular file or block device`);
  return st.isBlockDevice() ? 'block' : 'file';
}

/** The shipped unit with the installation's vublk and configuration directory. */
export function unitText(file: string, req: InstallRequest): string {
  const text = fs.readFileSync(path.join(UNIT_SOURCE_DIR, file), 'utf8');
  return text
    .replace(`ExecStart=${DEFAULT_EXEC} `, `ExecStart=${req.exec} `)
    .replace(`EnvironmentFile=${DEFAULT_CONFIG_DIR}/`, `EnvironmentFile=${req.configDir}/`);
}

/** Writes the files; returns the paths written (as seen from inside root) and the disk's kind. Throws UsageError naming a conflict. */
export function installUnit(req: InstallRequest): { written: string[]; kind: DiskKind } {
  checkVublkOptions(req);
  const inRoot = (p: string) => path.join(req.root, p);
  const kind = diskKind(req);
  const confPath = path.join(req.configDir, `${req.name}.conf`);
  const conf = configText(req);
  let existing: string | undefined;
  try {
    existing = fs.readFileSync(inRoot(confPath), 'utf8');
  } catch {
    existing = undefined;
  }
  if (existing !== undefined && existing !== conf && !req.force) {
    throw new UsageError(`install-unit: ${confPath} exists with other contents; keep it, or replace it with --force`);
  }
  const files = new Map<string, string>();
  for (const f of UNIT_FILES) files.set(path.join(req.unitDir, f), unitText(f, req));
  files.set(confPath, conf);
  files.set(path.join(req.unitDir, `vublk@${req.name}.service.d`, 'disk.conf'), dropInText(req, kind));
  for (const [p, text] of files) {
    fs.mkdirSync(path.dirname(inRoot(p)), { recursive: true, mode: 0o755 });
    fs.writeFileSync(inRoot(p), text, { mode: 0o644 });
  }
  return { written: [...files.keys()], kind };
}

/** The commands the operator runs next (printed after installing). */
export function nextSteps(req: InstallRequest, kind: DiskKind): string {
  const disk = {
    file: () => [`chown vublk:vublk ${req.disk}`],
    block: () => [`# ${req.disk} is a block device: user vublk reaches it through group disk (SupplementaryGroups=disk)`],
    rbd: () => cephSteps(cephAccess(req.root, req.cephConf, req.cephId)),
  }[kind];
  const lines = [
    'getent passwd vublk || useradd --system --home-dir /var/lib/vublk --no-create-home --shell /usr/sbin/nologin vublk',
    ...disk(),
    'systemctl daemon-reload',
    `systemctl enable --now vublk@${req.name}.socket`,
  ];
  if (!fs.existsSync(path.join(req.root, req.exec)))
    lines.unshift(`# ${req.exec} does not exist yet: install vublk there (npm install -g) or pass --exec`);
  return lines.map((l) => `  ${l}\n`).join('');
}

/** `vublk install-unit ...`: returns the exit status. */
export function installUnitMain(argv: readonly string[]): number {
  let req: InstallRequest | 'help';
  try {
    req = parseInstallArgs(argv);
    if (req === 'help') {
      process.stdout.write(USAGE);
      return 0;
    }
    const { written, kind } = installUnit(req);
    const where = req.root === '/' ? '' : ` under ${req.root}`;
    process.stdout.write(`Installed vublk@${req.name}${where}:\n${written.map((p) => `  ${p}\n`).join('')}`);
    process.stdout.write(`Next, as root:\n${nextSteps(req, kind)}`);
    process.stdout.write(`Then attach QEMU to /run/vublk/${req.name}.sock (see README.md, "Running as a systemd service").\n`);
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`vublk: error: ${err.message}\n`);
      return 2;
    }
    // A file that cannot be written: node's message names the call and path.
    if ((err as NodeJS.ErrnoException).syscall === undefined) throw err;
    process.stderr.write(`vublk: error: install-unit: ${(err as Error).message}\n`);
    return 1;
  }
}
