// A throw-away single-node Ceph cluster per test file (scripts/ceph-test-cluster.sh
// in a temp dir under /tmp/rbd-ct*), RBD images on it and reads of them
// through the `rbd` tool, independently of vublk.

import type { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { repoRoot } from './vublk-process';
import { requirements } from '../integration/align-helpers';

export interface CephCluster {
  dir: string;
  conf: string;
}

const SCRIPT = path.join(repoRoot, 'scripts', 'ceph-test-cluster.sh');

/** A skip reason (false: all there); under CI a missing prerequisite throws. */
export function cephUnsupported(): string | false {
  return requirements({ root: true, commands: ['ceph-mon', 'ceph-osd', 'ceph-authtool', 'monmaptool', 'ceph', 'rbd'] });
}

/** Starts a cluster (about 11 s); teardown stops it and removes its directory. */
export function startCephCluster(t: Test): CephCluster {
  const dir = fs.mkdtempSync('/tmp/rbd-ct');
  const stop = () => {
    try {
      execFileSync('bash', [SCRIPT, 'stop', dir], { stdio: 'ignore' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    execFileSync('bash', [SCRIPT, 'start', dir], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
  } catch (err) {
    stop();
    throw err;
  }
  t.teardown(stop);
  return { dir, conf: path.join(dir, 'ceph.conf') };
}

/** Creates image rbd/name of `size` (rbd's spelling, e.g. "64M"). */
export function createImage(c: CephCluster, name: string, size = '64M'): void {
  execFileSync('rbd', ['--conf', c.conf, 'create', '--size', size, `rbd/${name}`]);
}

/** The whole image rbd/name, read by `rbd export` (not through vublk). */
export function exportImage(c: CephCluster, name: string): Buffer {
  return execFileSync('rbd', ['--conf', c.conf, 'export', `rbd/${name}`, '-'], {
    maxBuffer: 256 << 20,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
}

/** Stops the cluster's only OSD (its data stays) or starts it again. */
export function osdStop(c: CephCluster): void {
  execFileSync('bash', [SCRIPT, 'osd-stop', c.dir], { stdio: 'ignore' });
}

export function osdStart(c: CephCluster): void {
  execFileSync('bash', [SCRIPT, 'osd-start', c.dir], { stdio: 'ignore', timeout: 60_000 });
}

/**
 * A client `name` with read-only caps on pool rbd (profile rbd-read-only)
 * and a conf file that uses its keyring; returns that conf's path.
 */
export function readOnlyClient(c: CephCluster, name: string): string {
  const keyring = path.join(c.dir, `${name}.keyring`);
  const key = execFileSync(
    'ceph',
    ['--conf', c.conf, 'auth', 'get-or-create', `client.${name}`, 'mon', 'profile rbd', 'osd', 'profile rbd-read-only pool=rbd'],
    {
      stdio: ['ignore', 'pipe', 'ignore'],
    },
  );
  fs.writeFileSync(keyring, key);
  const conf = path.join(c.dir, `${name}.conf`);
  fs.writeFileSync(conf, fs.readFileSync(c.conf, 'utf8').replace(/^keyring = .*$/m, `keyring = ${keyring}`));
  return conf;
}
