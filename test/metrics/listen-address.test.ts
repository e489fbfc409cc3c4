// --metrics-listen parsing: Unix paths, HOST:PORT, [IPV6]:PORT, and the
// refusals (wildcards, bad ports, overlong paths), each naming the option.

import t from 'tap';
import { describeAddress, parseMetricsAddress } from '../../src/metrics/listen-address';
import { UsageError } from '../../src/errors';
import { parseOptions } from '../../src/cli/options';

t.test('Unix socket paths', async (t) => {
  for (const p of ['/run/vublk/data.metrics', './m.sock', 'metrics.sock', '../x:1', '/tmp/a:9100']) {
    t.same(parseMetricsAddress(p), { kind: 'unix', path: p }, p);
  }
});

t.test('TCP addresses', async (t) => {
  t.same(parseMetricsAddress('127.0.0.1:9101'), { kind: 'tcp', host: '127.0.0.1', port: 9101 });
  t.same(parseMetricsAddress('127.0.0.1:0'), { kind: 'tcp', host: '127.0.0.1', port: 0 }, 'port 0: the kernel picks');
  t.same(parseMetricsAddress('[::1]:9101'), { kind: 'tcp', host: '::1', port: 9101 });
  t.same(parseMetricsAddress('localhost:65535'), { kind: 'tcp', host: 'localhost', port: 65535 });
  t.same(parseMetricsAddress('10.1.2.3:80'), { kind: 'tcp', host: '10.1.2.3', port: 80 });
  t.equal(describeAddress({ kind: 'tcp', host: '::1', port: 9 }), '[::1]:9');
  t.equal(describeAddress({ kind: 'tcp', host: '127.0.0.1', port: 9 }), '127.0.0.1:9');
});

t.test('refused, with a message naming the option and the value', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['', /--metrics-listen expects .*got ""/],
    ['0.0.0.0:9101', /wildcard address/],
    ['[::]:9101', /wildcard address/],
    ['[0:0::0]:9101', /wildcard address/],
    ['127.0.0.1:65536', /at most 65535/],
    ['127.0.0.1:', /got "127.0.0.1:"/],
    ['127.0.0.1:http', /got "127.0.0.1:http"/],
    ['::1:9101', /\[IPV6\]:PORT/],
    ['[127.0.0.1]:9101', /is not an IPv6 address/],
    ['host name:80', /got "host name:80"/],
    ['/' + 'x'.repeat(107), /at most 107 bytes, this one 108/],
    ['a\0b', /without NUL bytes/],
  ];
  for (const [raw, re] of cases) {
    t.throws(() => parseMetricsAddress(raw), UsageError, `${JSON.stringify(raw)} is a UsageError`);
    t.throws(() => parseMetricsAddress(raw), re, `${JSON.stringify(raw)}: ${re}`);
  }
});

t.test('the option: absent by default, parsed when given', async (t) => {
  t.equal(parseOptions([]).metricsListen, undefined, 'no endpoint unless asked');
  t.same(parseOptions(['--metrics-listen', '127.0.0.1:9101']).metricsListen, { kind: 'tcp', host: '127.0.0.1', port: 9101 });
  t.same(parseOptions(['--metrics-listen=/run/m.sock']).metricsListen, { kind: 'unix', path: '/run/m.sock' });
  t.throws(() => parseOptions(['--metrics-listen', '0.0.0.0:1']), /wildcard/);
});
