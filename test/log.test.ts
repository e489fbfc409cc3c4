import t from 'tap';
import { formatLine, getLogLevel, isLevelEnabled, log, setLogLevel, setLogSink } from '../src/log';

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
