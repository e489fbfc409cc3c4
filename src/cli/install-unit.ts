// `vublk install-unit NAME --disk PATH ...`: installs the systemd units of
// systemd/ and the configuration of one disk, so that
// `systemctl enable --now vublk@NAME.socket` serves it. Writes files only;
// it creates no user and starts nothing (it prints those commands).

import fs from 'node:fs';
import path from 'node:path';
import { parseOptions } from './options';
import { UsageError } from '../errors';
import { parseSubcommandArgs } from './subcommand-args';

/** The unit files shipped in the repository (dist/src/cli -> systemd/). */
export const UNIT_SOURCE_DIR = path.resolve(__dirname, '..', '..', '..', 'systemd');
export const UNIT_FILES = ['vublk@.socket', 'vublk@.service'] as const;
/** What the shipped units name; --exec and --config-dir replace them in the installed copy. */
export const DEFAULT_EXEC = '/usr/local/bin/vublk';
export const DEFAULT_UNIT_DIR = '/etc/systemd/system';
export const DEFAULT_CONFIG_DIR = '/etc/vublk';
/** Options the units set themselves; VUBLK_OPTIONS must not repeat them. */
const UNIT_OWNED_OPTIONS = ['--disk', '--socket', '--socket-fd', '--state-file'];

export interface InstallRequest {
  name: string;
  disk: string;
  root: string;
  unitDir: string;
  configDir: string;
  options: string;
  exec: string;
  force: boolean;
}

const USAGE = `usage: vublk install-unit NAME --disk PATH [--options "..."] [--exec PATH]
                          [--root DIR] [--unit-dir DIR] [--config-dir DIR] [--force]

Installs vublk@.socket and vublk@.service (into --unit-dir, default ${DEFAULT_UNIT_DIR}),
the configuration NAME.conf (into --config-dir, default ${DEFAULT_CONFIG_DIR}) and the
drop-in vublk@NAME.service.d/disk.conf that makes the disk writable, all under --root
(default /). --exec: the vublk the service runs (default ${DEFAULT_EXEC}). An existing
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
    ['--disk', '--root', '--unit-dir', '--config-dir', '--options', '--exec'],
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
  return {
    name,
    disk: absolute('--disk'),
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

/** VUBLK_OPTIONS must parse as vublk options and leave the unit's own to the unit. */
function checkVublkOptions(options: string): void {
  const words = options === '' ? [] : options.split(' ');
  const owned = words.find((w) => UNIT_OWNED_OPTIONS.includes(w.split('=')[0]!));
  if (owned !== undefined) throw new UsageError(`install-unit: --options must not set ${owned.split('=')[0]}: the unit sets it`);
  try {
    parseOptions(words);
  } catch (err) {
    throw new UsageError(`install-unit: --options: ${(err as Error).message}`);
  }
}

export function configText(req: InstallRequest): string {
  return [
    `# vublk@${req.name}: read by vublk@.service (EnvironmentFile=).`,
    '# VUBLK_DISK: the image file or block device; changing it also needs the',
    `# drop-in vublk@${req.name}.service.d/disk.conf (run vublk install-unit again).`,
    '# VUBLK_OPTIONS: other vublk options (vublk --help), split on spaces.',
    `VUBLK_DISK=${req.disk}`,
    `VUBLK_OPTIONS="${req.options}"`,
    '',
  ].join('\n');
}

export function dropInText(req: InstallRequest, blockDevice: boolean): string {
  const lines = [
    `# Written by vublk install-unit for disk ${req.name}: ProtectSystem=strict leaves only the disk writable.`,
    '[Service]',
    `ReadWritePaths=${req.disk}`,
  ];
  if (blockDevice) lines.push(`DeviceAllow=${req.disk} rw`);
  return lines.join('\n') + '\n';
}

/** The shipped unit with the installation's vublk and configuration directory. */
export function unitText(file: string, req: InstallRequest): string {
  const text = fs.readFileSync(path.join(UNIT_SOURCE_DIR, file), 'utf8');
  return text
    .replace(`ExecStart=${DEFAULT_EXEC} `, `ExecStart=${req.exec} `)
    .replace(`EnvironmentFile=${DEFAULT_CONFIG_DIR}/`, `EnvironmentFile=${req.configDir}/`);
}

/** Writes the files; returns the paths written (as seen from inside root). Throws UsageError naming a conflict. */
export function installUnit(req: InstallRequest): string[] {
  checkVublkOptions(req.options);
  const inRoot = (p: string) => path.join(req.root, p);
  let st: fs.Stats;
  try {
    st = fs.statSync(inRoot(req.disk));
  } catch {
    throw new UsageError(`install-unit: disk ${req.disk} does not exist${req.root === '/' ? '' : ` under ${req.root}`}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`install-unit: disk ${req.disk} is not a regular file or block device`);
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
  files.set(path.join(req.unitDir, `vublk@${req.name}.service.d`, 'disk.conf'), dropInText(req, st.isBlockDevice()));
  for (const [p, text] of files) {
    fs.mkdirSync(path.dirname(inRoot(p)), { recursive: true, mode: 0o755 });
    fs.writeFileSync(inRoot(p), text, { mode: 0o644 });
  }
  return [...files.keys()];
}

/** The commands the operator runs next (printed after installing). */
export function nextSteps(req: InstallRequest, blockDevice: boolean): string {
  const lines = [
    'getent passwd vublk || useradd --system --home-dir /var/lib/vublk --no-create-home --shell /usr/sbin/nologin vublk',
    blockDevice
      ? `# ${req.disk} is a block device: user vublk reaches it through group disk (SupplementaryGroups=disk)`
      : `chown vublk:vublk ${req.disk}`,
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
    const written = installUnit(req);
    const blockDevice = fs.statSync(path.join(req.root, req.disk)).isBlockDevice();
    const where = req.root === '/' ? '' : ` under ${req.root}`;
    process.stdout.write(`Installed vublk@${req.name}${where}:\n${written.map((p) => `  ${p}\n`).join('')}`);
    process.stdout.write(`Next, as root:\n${nextSteps(req, blockDevice)}`);
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
