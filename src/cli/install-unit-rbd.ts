// What `vublk install-unit` does differently for an RBD disk (--disk rbd:...):
// the Ceph conf and keyring must be where the unit's sandbox lets vublk read
// them, the drop-in opens the network the unit otherwise denies (librbd talks
// to the monitors and OSDs over TCP), and the operator is told which keyring
// user vublk must be able to read.

import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../errors';

/** The conf librados reads when none is named (in the service: no $CEPH_CONF, no home). */
export const DEFAULT_CEPH_CONF = '/etc/ceph/ceph.conf';
/** Ceph's client when --ceph-id is not given. */
const DEFAULT_CEPH_ID = 'admin';
/** Ceph's own default for `keyring` ($cluster is always "ceph" for vublk). */
const DEFAULT_KEYRING = '/etc/ceph/$cluster.$name.keyring,/etc/ceph/$cluster.keyring,/etc/ceph/keyring,/etc/ceph/keyring.bin';

/**
 * Directories vublk@.service cannot see, and the setting that hides them
 * (test/service/install-unit.test.ts checks the unit still sets them).
 */
export const HIDDEN_FROM_SERVICE: ReadonlyArray<readonly [dir: string, setting: string]> = [
  ['/home', 'ProtectHome=yes'],
  ['/root', 'ProtectHome=yes'],
  ['/run/user', 'ProtectHome=yes'],
  ['/tmp', 'PrivateTmp=yes'],
  ['/var/tmp', 'PrivateTmp=yes'],
];

/** "under /root, which ProtectHome=yes hides from the service", or undefined when the service sees p. */
function hiddenWhy(p: string): string | undefined {
  const hit = HIDDEN_FROM_SERVICE.find(([dir]) => p === dir || p.startsWith(`${dir}/`));
  return hit && `under ${hit[0]}, which ${hit[1]} hides from the service`;
}

/** The lines of the drop-in vublk@NAME.service.d/disk.conf below [Service] for an RBD disk. */
export function rbdDropInSettings(): string[] {
  return [
    '# librbd reaches the monitors and OSDs over TCP: the network the unit denies is opened.',
    'PrivateNetwork=no',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6',
    '# Reset: the OSDs are wherever the cluster map puts them.',
    'IPAddressDeny=',
  ];
}

/** The `keyring` setting for client.ID in a Ceph conf: [client.ID] over [client] over [global], the last line of each. */
function confKeyring(confText: string, id: string): string | undefined {
  const bySection = new Map<string, string>();
  let section = '';
  for (const raw of confText.split('\n')) {
    const line = raw.replace(/(^|\s)[#;].*$/, '').trim();
    const header = /^\[\s*(.+?)\s*\]$/.exec(line);
    if (header) {
      section = header[1]!;
      continue;
    }
    // Ceph treats spaces, "_" and "-" in a key alike; only `keyring` matters here.
    const kv = /^keyring\s*=\s*(.*)$/.exec(line);
    if (kv) bySection.set(section, kv[1]!.replace(/^"(.*)"$/, '$1'));
  }
  return bySection.get(`client.${id}`) ?? bySection.get('client') ?? bySection.get('global');
}

export interface CephAccess {
  /** The conf the service reads (--ceph-conf or Ceph's default). */
  conf: string;
  /** Whether that conf exists under root. */
  confExists: boolean;
  /** The conf exists but only its owner and group may read it. */
  confPrivate: boolean;
  id: string;
  /** Where Ceph looks for client.ID's keyring, in its order ($-variables expanded). */
  keyrings: string[];
  /** The first of keyrings that exists under root. */
  keyring: string | undefined;
}

/**
 * The Ceph files the service will read, checked against the sandbox:
 * throws UsageError when --ceph-conf is missing or hidden from the service,
 * or when every keyring the conf names is hidden.
 */
export function cephAccess(root: string, cephConf: string | undefined, cephId: string | undefined): CephAccess {
  const conf = cephConf ?? DEFAULT_CEPH_CONF;
  const id = cephId ?? DEFAULT_CEPH_ID;
  const hidden = hiddenWhy(conf);
  if (hidden !== undefined) throw new UsageError(`install-unit: --ceph-conf ${conf} is ${hidden}; put it under /etc/ceph`);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(path.join(root, conf));
  } catch {
    st = undefined;
  }
  if (cephConf !== undefined && st === undefined) {
    throw new UsageError(`install-unit: --ceph-conf ${conf} does not exist${root === '/' ? '' : ` under ${root}`}`);
  }
  if (st !== undefined && !st.isFile()) throw new UsageError(`install-unit: --ceph-conf ${conf} is not a regular file`);
  const setting = st === undefined ? undefined : confKeyring(fs.readFileSync(path.join(root, conf), 'utf8'), id);
  const keyrings = (setting ?? DEFAULT_KEYRING)
    .split(/[,;\s]+/)
    .filter((k) => k !== '')
    .map((k) =>
      k
        .replace(/\$cluster/g, 'ceph')
        .replace(/\$name/g, `client.${id}`)
        .replace(/\$id/g, id)
        .replace(/\$type/g, 'client'),
    );
  const visible = keyrings.filter((k) => hiddenWhy(k) === undefined);
  if (visible.length === 0) {
    throw new UsageError(
      `install-unit: the keyring of client.${id} in ${conf}, ${keyrings[0]}, is ${hiddenWhy(keyrings[0]!)}; put it under /etc/ceph`,
    );
  }
  return {
    conf,
    confExists: st !== undefined,
    confPrivate: st !== undefined && (st.mode & 0o004) === 0,
    id,
    keyrings,
    keyring: visible.find((k) => fs.existsSync(path.join(root, k))),
  };
}

/** The operator's steps about the Ceph files, between creating the user and starting the socket. */
export function cephSteps(a: CephAccess): string[] {
  const readable = (file: string) => `chgrp vublk ${file} && chmod g+r ${file}`;
  const lines: string[] = [];
  if (!a.confExists) lines.push(`# ${a.conf} does not exist yet: write it (the monitors and client.${a.id}'s keyring) or pass --ceph-conf`);
  if (a.confPrivate) lines.push(`# user vublk must read ${a.conf}:`, readable(a.conf));
  if (a.keyring === undefined) {
    lines.push(`# no keyring of client.${a.id} found (Ceph looks in ${a.keyrings.join(', ')}): put it there, readable by user vublk`);
  } else if (a.id === DEFAULT_CEPH_ID) {
    // Handing client.admin's keyring to the service gives it the whole cluster: say so, run nothing.
    lines.push(
      `# user vublk must read the keyring of client.admin, ${a.keyring}, which can do anything on the cluster:`,
      '# better a client of its own with profile rbd (--ceph-id, README.md "Disks on a Ceph cluster")',
      `# ${readable(a.keyring)}`,
    );
  } else {
    lines.push(`# user vublk must read the keyring of client.${a.id}:`, readable(a.keyring));
  }
  return lines;
}
