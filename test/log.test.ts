import t, { type Test } from 'tap';
import { formatLine, getLogLevel, isLevelEnabled, log, setLogFormat, setLogLevel, setLogSink, type LogFormat } from '../src/log';
import { isJournalStream } from '../src/log-format';

t.test('format', (t) => {
  t.equal(formatLine('info', 'listening'), 'vublk: info: listening');
  t.equal(
    formatLine('warn', 'queue stalled', { q: 2, head: 17, path: '/run/x.sock', ok: false, big: 1n << 60n }),
    `vublk: warn: queue stalled q=2 head=17 path=/run/x.sock ok=false big=${1n << 60n}`,
  );
  t.equal(formatLine('error', 'x', { msg: 'two words', empty: '' }), 'vublk: error: x msg="two words" empty=""');
  t.equal(formatLine('error', 'x', { a: null, b: undefined }), 'vublk: error: x a=null b=undefined');
  t.equal(formatLine('info', 'x', { o: { n: 1, b: 2n } }), 'vublk: info: x o={"n":1,"b":"2"}');
  const err = Object.assign(new Error('open failed'), { code: 'E_DISK' });
  t.equal(formatLine('error', 'disk', { err }), 'vublk: error: disk err="E_DISK: open failed"');
  t.equal(formatLine('info', 'a\nb', { v: 'c\nd' }), 'vublk: info: a\\nb v="c\\nd"', 'one line');
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  t.match(formatLine('info', 'x', { cyclic }), /^vublk: info: x cyclic=/);
  t.end();
});

t.test('levels filter and the sink receives whole lines', (t) => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  t.teardown(() => {
    setLogSink(undefined);
    setLogLevel('info');
  });
  t.equal(getLogLevel(), 'info');
  log.debug('hidden');
  log.info('shown', { n: 1 });
  log.warn('w');
  log.error('e');
  t.same(lines, ['vublk: info: shown n=1\n', 'vublk: warn: w\n', 'vublk: error: e\n']);
  lines.length = 0;
  setLogLevel('error');
  t.equal(isLevelEnabled('warn'), false);
  t.equal(isLevelEnabled('error'), true);
  log.warn('w');
  log.info('i');
  log.error('e');
  t.same(lines, ['vublk: error: e\n']);
  lines.length = 0;
  setLogLevel('debug');
  log.debug('d');
  t.same(lines, ['vublk: debug: d\n']);
  t.throws(() => setLogLevel('loud' as never), RangeError);
  t.end();
});

/** Lines the logger writes while `fn` runs, with `format` (and journald or not); restores text/info/stderr after. */
function capture(t: Test, format: LogFormat, journald: boolean, fn: () => void): string[] {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  t.teardown(() => {
    setLogSink(undefined);
    setLogFormat('text', false);
    setLogLevel('info');
  });
  setLogFormat(format, journald);
  fn();
  return lines;
}

function parsed(lines: string[]): Array<Record<string, unknown>> {
  return lines.map((l) => {
    if (!l.endsWith('\n') || l.indexOf('\n') !== l.length - 1) throw new Error(`not one line: ${JSON.stringify(l)}`);
    return JSON.parse(l) as Record<string, unknown>;
  });
}

t.test('text through pino is what formatLine renders, field values included', (t) => {
  const err = Object.assign(new Error('open failed'), { code: 'E_DISK' });
  const fields = { q: 2, big: 1n << 60n, err, u: undefined, n: null, s: 'two words', nan: NaN, o: { b: 2n } };
  const lines = capture(t, 'text', false, () => {
    log.info('a\nb %s %d', fields);
    log.info('bare');
  });
  t.same(lines, [formatLine('info', 'a\nb %s %d', fields) + '\n', 'vublk: info: bare\n']);
  t.equal(
    lines[0],
    `vublk: info: a\\nb %s %d q=2 big=${1n << 60n} err="E_DISK: open failed" u=undefined n=null s="two words" nan=NaN o={"b":"2"}\n`,
  );
  t.end();
});

t.test('json: one object per line with level name, msg and flat fields', (t) => {
  const err = Object.assign(new Error('bad\nthing'), { code: 'E_NATIVE', errno: -5, syscall: 'pread' });
  const before = Date.now();
  const lines = capture(t, 'json', false, () => {
    log.info('serving', { disk: '/srv/a.img', queues: 2, readOnly: false });
    log.error('read failed\nbadly', { err, offset: (1n << 60n) + 1n, u: undefined, o: { x: 1n, e: new Error('inner') } });
    log.warn('clash', { msg: 'field', level: 7, time: 'noon' });
  });
  const [serving, failed, clash] = parsed(lines);
  t.match(serving, { level: 'info', msg: 'serving', disk: '/srv/a.img', queues: 2, readOnly: false });
  t.equal(Object.keys(serving!).sort().join(','), 'disk,level,msg,queues,readOnly,time', 'no pid or hostname');
  t.ok(typeof serving!.time === 'number' && serving!.time >= before && serving!.time <= Date.now(), 'epoch ms time');
  t.same(failed, {
    level: 'error',
    time: failed!.time,
    msg: 'read failed\nbadly',
    err: { message: 'bad\nthing', code: 'E_NATIVE', errno: -5, syscall: 'pread' },
    offset: '1152921504606846977',
    o: { x: '1', e: { message: 'inner' } },
  });
  t.notOk(lines[1]!.slice(0, -1).includes('\n'), 'newlines stay escaped');
  t.match(clash, { level: 'warn', msg: 'clash', msg_: 'field', level_: 7, time_: 'noon' });
  t.type(clash!.time, 'number');
  t.end();
});

t.test('json survives a cyclic field', (t) => {
  const cyclic: Record<string, unknown> = { n: 1 };
  cyclic.self = cyclic;
  const [line] = parsed(capture(t, 'json', false, () => log.info('x', { cyclic })));
  t.match(line, { msg: 'x', cyclic: { n: 1, self: '[Circular]' } });
  t.end();
});

t.test('journald: priority prefixes, no JSON time', (t) => {
  const text = capture(t, 'text', true, () => {
    setLogLevel('debug');
    log.error('e');
    log.warn('w');
    log.info('i', { k: 1 });
    log.debug('d');
  });
  t.same(text, ['<3>vublk: error: e\n', '<4>vublk: warn: w\n', '<6>vublk: info: i k=1\n', '<7>vublk: debug: d\n']);
  const json = capture(t, 'json', true, () => {
    setLogLevel('debug');
    log.error('e');
    log.debug('d', { k: 1 });
  });
  t.same(json, ['<3>{"level":"error","msg":"e"}\n', '<7>{"level":"debug","k":1,"msg":"d"}\n']);
  t.end();
});

t.test('level filtering and the level survive a format change', (t) => {
  const lines = capture(t, 'json', false, () => {
    log.debug('hidden');
    setLogLevel('warn');
    setLogFormat('json', false);
    t.equal(getLogLevel(), 'warn');
    t.equal(isLevelEnabled('info'), false);
    log.info('hidden');
    log.warn('shown');
  });
  t.same(
    parsed(lines).map((r) => r.msg),
    ['shown'],
  );
  t.throws(() => setLogFormat('yaml' as never), RangeError);
  t.end();
});

t.test('JOURNAL_STREAM names stderr only when device and inode both match', (t) => {
  const st = { dev: 2049n, ino: 123456789012n };
  t.ok(isJournalStream('2049:123456789012', st));
  t.notOk(isJournalStream('2049:123456789013', st));
  t.notOk(isJournalStream('2050:123456789012', st));
  t.notOk(isJournalStream(undefined, st));
  t.notOk(isJournalStream('', st));
  t.notOk(isJournalStream('2049:123456789012:1', st));
  t.notOk(isJournalStream(' 2049:123456789012', st));
  t.end();
});
