import t from 'tap';
import { DiskError, ProtocolViolation, SocketError, UsageError, isVublkError } from '../src/errors';

t.test('codes and fields', (t) => {
  const u = new UsageError('--queues expects an integer');
  t.equal(u.code, 'E_USAGE');
  t.equal(u.name, 'UsageError');
  t.equal(u.message, '--queues expects an integer');
  t.ok(u instanceof Error);

  const d = new DiskError('cannot open disk.img', { errno: 2, syscall: 'open', path: 'disk.img' });
  t.equal(d.code, 'E_DISK');
  t.equal(d.name, 'DiskError');
  t.equal(d.errno, 2);
  t.equal(d.syscall, 'open');
  t.equal(d.path, 'disk.img');

  const cause = new Error('EADDRINUSE');
  const s = new SocketError('cannot bind', { cause });
  t.equal(s.code, 'E_SOCKET');
  t.equal(s.cause, cause);
  t.equal(s.errno, undefined);

  const p = new ProtocolViolation('request header is 12 bytes, needs 16');
  t.equal(p.code, 'E_PROTOCOL');
  t.equal(p.rule, 'request header is 12 bytes, needs 16');
  t.equal(p.message, p.rule);

  t.ok(isVublkError(p));
  t.notOk(isVublkError(new Error('x')));
  t.notOk(isVublkError({ code: 'E_DISK' }));
  t.end();
});
