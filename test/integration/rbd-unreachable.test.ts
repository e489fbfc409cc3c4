// vublk on an RBD image of a cluster nobody answers for: it exits non-zero
// within the connect timeout, naming the monitor it tried.

import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { runVublk, tmpDir } from '../helpers/vublk-process';

/** A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

t.test('an unreachable cluster: vublk exits non-zero naming the monitor', async (t) => {
  const dir = tmpDir('vublk-rbd-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await closedPort();
  const conf = path.join(dir, 'ceph.conf');
  fs.writeFileSync(conf, `[global]\nmon_host = 127.0.0.1:${port}\nauth_client_required = none\n`);
  const started = Date.now();
  const r = await runVublk(['--disk', 'rbd:rbd/img', '--ceph-conf', conf, '--socket', path.join(dir, 's.sock')], { timeoutMs: 30_000 });
  const tookMs = Date.now() - started;
  t.equal(r.code, 1, `vublk exits 1:\n${r.stderr}`);
  t.ok(tookMs < 20_000, `within the connect timeout (${tookMs} ms)`);
  t.match(
    r.stderr,
    new RegExp(`cannot open disk rbd:rbd/img: cannot connect to the Ceph cluster \\(monitors 127\\.0\\.0\\.1:${port}\\)`),
    'naming the monitor',
  );
});
