// examples/libvirt-domain.xml: valid for libvirt's schema, and its vhost-user
// parts are what vublk needs: shared memfd guest memory and a vhostuser disk
// on the socket of the systemd unit vublk@NAME.socket.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { MAX_QUEUES } from '../../src/blk/features';
import { findCommand } from '../helpers/find-command';
import { repoRoot } from '../helpers/repo-root';

const xmlFile = path.join(repoRoot(), 'examples', 'libvirt-domain.xml');
const socketUnit = path.join(repoRoot(), 'systemd', 'vublk@.socket');

/** Attributes of the elements the test looks at, read by python3's XML parser (which also rejects malformed XML). */
const EXTRACT = `
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
def attrs(e): return None if e is None else dict(e.attrib)
disks = []
for d in root.findall('./devices/disk'):
    disks.append({
        'disk': attrs(d), 'driver': attrs(d.find('driver')), 'source': attrs(d.find('source')),
        'reconnect': attrs(d.find('source/reconnect')), 'target': attrs(d.find('target')),
    })
print(json.dumps({
    'root': root.tag,
    'memSource': attrs(root.find('./memoryBacking/source')),
    'memAccess': attrs(root.find('./memoryBacking/access')),
    'disks': disks,
}))
`;

interface Extract {
  root: string;
  memSource: Record<string, string> | null;
  memAccess: Record<string, string> | null;
  disks: Array<Record<'disk' | 'driver' | 'source' | 'reconnect' | 'target', Record<string, string> | null>>;
}

function extract(): Extract {
  const r = spawnSync('python3', ['-c', EXTRACT, xmlFile], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python3 could not parse ${xmlFile}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Extract;
}

/** The vhostuser disk's socket, /run/vublk/NAME.sock, as [path, NAME]. */
const SOCKET_PATH = /^\/run\/vublk\/([A-Za-z0-9_.-]+)\.sock$/;

t.test('the vhost-user parts of the domain', async (t) => {
  const x = extract();
  t.equal(x.root, 'domain');
  t.same(x.memSource, { type: 'memfd' }, 'guest RAM in a memfd');
  t.same(x.memAccess, { mode: 'shared' }, 'mapped shared, so QEMU can pass it to vublk');
  const vu = x.disks.filter((d) => d.disk?.type === 'vhostuser');
  t.equal(vu.length, 1, 'one vhostuser disk');
  const d = vu[0]!;
  t.same(d.disk, { type: 'vhostuser', device: 'disk' });
  t.same(d.driver, { name: 'qemu', type: 'raw', queues: '2' });
  t.ok(Number(d.driver?.queues) <= MAX_QUEUES, `queues within vublk's limit of ${MAX_QUEUES}`);
  t.equal(d.source?.type, 'unix');
  t.match(d.source?.path ?? '', SOCKET_PATH, 'the socket is /run/vublk/NAME.sock');
  t.same(d.reconnect, { enabled: 'yes', timeout: '1' }, 'QEMU reconnects every second while vublk restarts');
  t.same(d.target, { dev: 'vdb', bus: 'virtio' });
  const name = SOCKET_PATH.exec(d.source?.path ?? '')?.[1];
  t.match(fs.readFileSync(xmlFile, 'utf8'), `vublk@${name}.socket`, 'the comments name the socket unit of that path');
});

const unitMissing = fs.existsSync(socketUnit) ? false : `${socketUnit} is not in this tree`;
t.test('the socket path is the one the systemd socket unit listens on', { skip: unitMissing }, async (t) => {
  const listen = /^ListenStream=(.*)$/m.exec(fs.readFileSync(socketUnit, 'utf8'))?.[1]?.trim();
  t.ok(listen !== undefined, `${socketUnit} has a ListenStream= line`);
  const x = extract();
  const sock = x.disks.find((d) => d.disk?.type === 'vhostuser')?.source?.path ?? '';
  const name = SOCKET_PATH.exec(sock)?.[1] ?? '';
  // %t is the system manager's runtime directory, /run (systemd.unit(5), "Specifiers").
  t.equal(listen?.replace(/%t/g, '/run').replace(/%i/g, name), sock, `ListenStream=${listen} with %t=/run, %i=${name}`);
});

const validatorMissing =
  findCommand('virt-xml-validate') !== null && findCommand('xmllint') !== null
    ? false
    : 'virt-xml-validate or xmllint missing (apt-get install libvirt-clients libxml2-utils)';
if (validatorMissing && process.env.CI) t.fail(`prerequisites missing in CI: ${validatorMissing}`);
t.test("libvirt's own schema accepts the domain (virt-xml-validate)", { skip: validatorMissing }, async (t) => {
  const r = spawnSync('virt-xml-validate', [xmlFile, 'domain'], { encoding: 'utf8' });
  t.equal(r.status, 0, 'validates', { output: r.stdout + r.stderr });
});
