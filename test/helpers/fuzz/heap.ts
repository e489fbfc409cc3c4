// Counts live objects in a daemon started with
// --heapsnapshot-signal=SIGUSR2 --diagnostic-dir=DIR: the signal makes V8
// run a full garbage collection and write a heap snapshot into DIR, which
// tells what survives it (and RSS read right after is free of the garbage
// V8 had not yet collected).

import fs from 'node:fs';
import path from 'node:path';
import { until } from '../../integration/harness';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

/** Node flags for heapSnapshotCounts. */
export function heapSnapshotArgs(dir: string): string[] {
  return ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${dir}`];
}

/** Forces a full GC in pid (SIGUSR2) and counts the objects of each class name in `names` that survived it. */
export async function heapSnapshotCounts(pid: number, dir: string, names: readonly string[]): Promise<Record<string, number>> {
  const before = new Set(fs.readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  let snap: Snapshot | undefined;
  const ok = await until(() => {
    const file = fs.readdirSync(dir).find((f) => f.endsWith('.heapsnapshot') && !before.has(f));
    if (file === undefined) return false;
    try {
      snap = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as Snapshot;
      fs.rmSync(path.join(dir, file));
      return true;
    } catch {
      return false; // still being written
    }
  }, 60_000);
  if (!ok || snap === undefined) throw new Error(`no heap snapshot from ${pid} in ${dir}`);
  const fields = snap.snapshot.meta.node_fields;
  const stride = fields.length;
  const nameAt = fields.indexOf('name');
  const typeAt = fields.indexOf('type');
  const objectType = snap.snapshot.meta.node_types[0].indexOf('object');
  const counts: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  for (let i = 0; i < snap.nodes.length; i += stride) {
    if (snap.nodes[i + typeAt] !== objectType) continue;
    const name = snap.strings[snap.nodes[i + nameAt]!]!;
    if (name in counts) counts[name]!++;
  }
  return counts;
}
