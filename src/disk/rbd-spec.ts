// `--disk rbd:POOL/IMAGE` and `rbd:POOL/NAMESPACE/IMAGE`, each with an
// optional `@SNAPSHOT`: an RBD image (or one of its snapshots, read-only)
// named by pool, optional namespace and image, in Ceph's own spelling, as
// `rbd` takes it.

import { UsageError } from '../errors';

export const RBD_PREFIX = 'rbd:';

export interface RbdSpec {
  pool: string;
  /** '' for the pool's default namespace. */
  namespace: string;
  image: string;
  /** '' for the image itself; else a snapshot of it, which is read-only. */
  snapshot: string;
}

/** True when --disk names an RBD image rather than a path. */
export function isRbdDisk(disk: string): boolean {
  return disk.startsWith(RBD_PREFIX);
}

// Ceph refuses '/' and '@' in pool, namespace and image names ('@' marks a snapshot).
const NAME = /^[^/@\0\s]+$/;

/** Parses the text after "rbd:"; throws UsageError naming what is wrong. */
export function parseRbdSpec(disk: string): RbdSpec {
  const rest = disk.slice(RBD_PREFIX.length);
  const at = rest.indexOf('@');
  const snapshot = at < 0 ? '' : rest.slice(at + 1);
  const parts = (at < 0 ? rest : rest.slice(0, at)).split('/');
  if (parts.length < 2 || parts.length > 3) {
    throw new UsageError(`--disk ${disk}: expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE, optionally @SNAPSHOT`);
  }
  for (const p of at < 0 ? parts : [...parts, snapshot]) {
    if (!NAME.test(p)) {
      throw new UsageError(`--disk ${disk}: pool, namespace, image and snapshot names must be non-empty, without "/", "@" or spaces`);
    }
  }
  const [pool = '', namespace, image = ''] = parts.length === 3 ? parts : [parts[0], '', parts[1]];
  return { pool, namespace: namespace ?? '', image, snapshot };
}

/** pool[/namespace]/image[@snapshot], as Ceph's tools print it. */
export function rbdSpecText(s: RbdSpec): string {
  const image = s.namespace === '' ? `${s.pool}/${s.image}` : `${s.pool}/${s.namespace}/${s.image}`;
  return s.snapshot === '' ? image : `${image}@${s.snapshot}`;
}
