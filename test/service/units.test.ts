// The shipped units pass `systemd-analyze verify` as one instance
// (vublk@data), and keep the settings the service depends on.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_EXEC, UNIT_FILES } from '../../src/cli/install-unit';
import { drainTimeoutMs } from '../../src/device/drain';
import { unitDir, unitValue } from './unit-file';
import { securityReport, stubExecutable, systemdAnalyzeMissing, unitRoot, verifyUnits } from './unit-root';

const skip = systemdAnalyzeMissing();
const UNITS = ['vublk@data.service', 'vublk@data.socket'];

function installShipped(root: string, edit: (text: string) => string = (x) => x): void {
  const dir = path.join(root, 'etc/systemd/system');
  fs.mkdirSync(dir, { recursive: true });
  for (const f of UNIT_FILES) fs.writeFileSync(path.join(dir, f), edit(fs.readFileSync(path.join(unitDir, f), 'utf8')));
}

t.test('systemd-analyze verify passes on vublk@data.service and vublk@data.socket with nothing to say', { skip }, async (t) => {
  const root = unitRoot(t);
  installShipped(root);
  stubExecutable(root, DEFAULT_EXEC);
  const r = verifyUnits(root, UNITS);
  t.equal(r.code, 0, 'exit 0');
  t.same(r.vublkLines, [], 'no warnings about our units', { output: r.output });
});

t.test('the verify check fails on what it should: an unknown key, a missing ExecStart program', { skip }, async (t) => {
  const root = unitRoot(t);
  installShipped(root, (text) => text.replace('[Service]\n', '[Service]\nProtectEverything=yes\n'));
  const r = verifyUnits(root, UNITS);
  t.match(r.vublkLines.join('\n'), /Unknown key 'ProtectEverything'/, 'an unknown key is reported (exit status stays 0)');
  t.match(r.vublkLines.join('\n'), new RegExp(`Command ${DEFAULT_EXEC} is not executable`), 'a missing program is reported');
  t.not(r.code, 0);
});

t.test("systemd-analyze security rates the service's exposure at most 2.0 (of 10)", { skip }, async (t) => {
  const root = unitRoot(t);
  installShipped(root);
  const r = securityReport(root, 'vublk@data.service');
  t.ok(!Number.isNaN(r.exposure), 'an exposure level is printed', { output: r.output });
  t.comment(`exposure level ${r.exposure}`);
  t.ok(r.exposure <= 2.0, `exposure ${r.exposure} <= 2.0`, { allowed: r.failed });
});

t.test('the units keep what the service relies on', async (t) => {
  t.equal(unitValue('vublk@.service', 'Type'), 'notify');
  t.equal(unitValue('vublk@.service', 'NotifyAccess'), 'main');
  t.match(
    unitValue('vublk@.service', 'SystemCallFilter'),
    /^@system-service @pkey io_uring_setup io_uring_enter io_uring_register$/,
    'io_uring is allowed',
  );
  t.equal(unitValue('vublk@.service', 'ProtectSystem'), 'strict');
  t.equal(unitValue('vublk@.service', 'RestrictAddressFamilies'), 'AF_UNIX');
  t.equal(unitValue('vublk@.service', 'DevicePolicy'), 'closed');
  const service = fs.readFileSync(path.join(unitDir, 'vublk@.service'), 'utf8');
  t.notMatch(service, /^MemoryDenyWriteExecute=yes/m, 'V8 needs W+X memory');
  // systemd removes RuntimeDirectory= at stop: it must not hold the socket.
  t.notMatch(service, /^RuntimeDirectory=(%t\/)?vublk$/m, "RuntimeDirectory= is not the socket's directory");
  t.equal(unitValue('vublk@.service', 'RuntimeDirectory'), 'vublk/%i');
  t.notMatch(unitValue('vublk@.service', 'ExecStart'), /--socket/, 'the socket comes from the socket unit');
  const drainSec = drainTimeoutMs({}) / 1000;
  t.ok(
    Number(/^(\d+)s$/.exec(unitValue('vublk@.service', 'TimeoutStopSec'))?.[1]) > drainSec,
    `TimeoutStopSec above the ${drainSec} s drain bound`,
  );
  t.equal(unitValue('vublk@.socket', 'ListenStream'), '%t/vublk/%i.sock');
  t.equal(unitValue('vublk@.socket', 'Accept'), 'no');
});
