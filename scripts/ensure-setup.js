#!/usr/bin/env node
'use strict';
// Installs what `npm start` (mode "serve") or `npm test` (mode "test") needs
// when it is missing: Debian packages (as root; otherwise it prints the exact
// apt command and stops), npm dependencies, the native addon, the TypeScript
// build (and for tests the AddressSanitizer build of the addon).
// Uses only Node built-ins: it runs before `npm ci`.

const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const mode = process.argv[2] === 'test' ? 'test' : 'serve';

const PACKAGES = {
  // Building the addon: a C++ toolchain, liburing (linked statically) and
  // librbd/librados (rbd: disks).
  serve: ['g++', 'make', 'python3', 'liburing-dev', 'librbd-dev'],
  // Tests: QEMU and the guest's tools, loop devices, the ASan runtime.
  test: [
    'qemu-system-x86',
    'qemu-utils',
    'fio',
    'busybox-static',
    'e2fsprogs',
    'util-linux',
    'cpio',
    'kmod',
    'xz-utils',
    'libasan8',
    'strace',
    // virt-xml-validate checks examples/libvirt-domain.xml against libvirt's schema.
    'libvirt-clients',
    'libxml2-utils',
    // systemd-analyze verify and systemd-socket-activate check the units in systemd/.
    'systemd',
    // The single-node Ceph cluster of the rbd: tests (scripts/ceph-test-cluster.sh).
    'ceph-mon',
    'ceph-osd',
    'ceph-common',
  ],
};

function say(msg) {
  process.stderr.write(`vublk setup: ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  say(`running: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.status !== 0) {
    say(`failed: ${cmd} ${args.join(' ')} (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

function installed(pkg) {
  try {
    const out = execFileSync('dpkg-query', ['-W', '-f=${Status}', pkg], { stdio: ['ignore', 'pipe', 'ignore'] });
    return out.toString().includes('install ok installed');
  } catch {
    return false;
  }
}

function ensurePackages() {
  const wanted = mode === 'test' ? [...PACKAGES.serve, ...PACKAGES.test] : PACKAGES.serve;
  const missing = wanted.filter((p) => !installed(p));
  if (missing.length === 0) return;
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot) {
    say(`missing Debian packages: ${missing.join(' ')}`);
    say(`install them with: sudo apt-get update && sudo apt-get install -y ${missing.join(' ')}`);
    process.exit(1);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  run('apt-get', ['update', '-q'], { env });
  run('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing], { env });
}

function newestMtime(paths) {
  let newest = 0;
  const visit = (p) => {
    let st;
    try {
      st = fs.statSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(p)) visit(path.join(p, e));
    } else if (st.mtimeMs > newest) {
      newest = st.mtimeMs;
    }
  };
  for (const p of paths) visit(path.join(root, p));
  return newest;
}

function outdated(target, sources) {
  let st;
  try {
    st = fs.statSync(path.join(root, target));
  } catch {
    return true;
  }
  return newestMtime(sources) > st.mtimeMs;
}

function ensureNodeModules() {
  const marker = 'node_modules/.package-lock.json';
  if (outdated(marker, ['package-lock.json'])) run('npm', ['ci']);
}

function ensureNative() {
  if (outdated('build/Release/vublk_native.node', ['native', 'binding.gyp'])) {
    run('npx', ['node-gyp', 'rebuild']);
  }
  if (mode === 'test' && outdated('build-asan/Release/vublk_native.node', ['native', 'binding.gyp'])) {
    run('bash', ['scripts/build-asan.sh']);
  }
}

// Serving compiles the daemon only (src/), so a test file being edited can
// never stop `npm start`; testing compiles everything.
function ensureTypeScript() {
  const [marker, config, sources] =
    mode === 'test'
      ? ['dist/.built-all', 'tsconfig.json', ['src', 'test', 'bench', 'tsconfig.json']]
      : ['dist/.built-src', 'tsconfig.build.json', ['src', 'tsconfig.json', 'tsconfig.build.json']];
  if (outdated(marker, sources)) {
    if (mode === 'test') fs.rmSync(path.join(root, 'dist'), { recursive: true, force: true });
    run('npx', ['tsc', '-p', config]);
    fs.writeFileSync(path.join(root, marker), '');
  }
}

ensurePackages();
ensureNodeModules();
ensureNative();
ensureTypeScript();
