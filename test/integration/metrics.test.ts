// The Prometheus endpoint (--metrics-listen) against the real daemon: a
// known mix of I/O from the in-repo frontend, scraped during the I/O and
// after, and every request counter checked exactly against what was done;
// totals survive a reconnect, a protocol violation is counted, and the
// endpoint's failures at start-up are start-up errors.

import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { BlkStatus, BlkType, type BlkResult, type BlkDriver } from '../../src/frontend/blk-driver';
import { encodeVringStatePayload } from '../../src/vhost-user/encode';
import { Request } from '../../src/vhost-user/protocol';
import { connect, connIdSince, pattern, startDaemon, waitConnClosed, type Daemon } from './harness';
import { makeImage, runVublk, startVublk, teardownDaemon, tmpDir, type VublkProcess } from '../helpers/vublk-process';
import { httpGet, scrape, select, sum, value, type Exposition, type HttpTarget } from '../helpers/prometheus-text';
import { countersOf, total } from '../helpers/counters';

const IMAGE_BYTES = 16 << 20;
const CAP = IMAGE_BYTES / 512;
const STATUS = ['ok', 'ioerr', 'unsupp'] as const;

/** What the test did, per queue: requests by "type/status", OK bytes by type. */
class Tally {
  readonly requests = new Map<string, number>();
  readonly bytes = new Map<string, number>();

  constructor(readonly queue: number) {}

  /** Records r (of virtio type name `type`, moving `bytes` if OK) after checking its status is `expect`. */
  note(t: Test, r: BlkResult, type: string, expect: number, bytes: number): void {
    t.equal(r.status, expect, `${type} on queue ${this.queue}: status ${STATUS[expect]}`);
    const key = `${type}/${STATUS[r.status] ?? 'bad'}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
    if (r.status === BlkStatus.OK) this.bytes.set(type, (this.bytes.get(type) ?? 0) + bytes);
  }

  get completions(): number {
    return [...this.requests.values()].reduce((a, b) => a + b, 0);
  }
}

/** Every request series of the queue matches the tally exactly, and each histogram counts what requests_total does. */
function checkRequests(t: Test, e: Exposition, tally: Tally, what: string): void {
  const queue = String(tally.queue);
  const seen = select(e, 'vublk_requests_total', { queue }).filter((s) => s.value > 0);
  const got = new Map(seen.map((s) => [`${s.labels.type}/${s.labels.status}`, s.value]));
  t.same(Object.fromEntries(got), Object.fromEntries(tally.requests), `${what}: queue ${queue} requests_total by type/status`);
  for (const type of new Set([...tally.requests.keys()].map((k) => k.split('/')[0]!))) {
    const requests = sum(e, 'vublk_requests_total', { queue, type });
    t.equal(value(e, 'vublk_request_bytes_total', { queue, type }), tally.bytes.get(type) ?? 0, `${what}: queue ${queue} ${type} bytes`);
    t.equal(
      value(e, 'vublk_request_duration_seconds_count', { queue, type }),
      requests,
      `${what}: queue ${queue} ${type} histogram count = requests`,
    );
    const buckets = select(e, 'vublk_request_duration_seconds_bucket', { queue, type });
    const inf = buckets.find((b) => b.labels.le === '+Inf');
    t.equal(inf?.value, requests, `${what}: ${type} +Inf bucket = requests`);
    t.ok(
      buckets.every((b, i) => i === 0 || b.value >= buckets[i - 1]!.value),
      `${what}: ${type} buckets are cumulative`,
    );
    t.ok(value(e, 'vublk_request_duration_seconds_sum', { queue, type }) >= 0, `${what}: ${type} latency sum`);
  }
}

/** Counters never go down between two scrapes. */
function checkMonotonic(t: Test, before: Exposition, after: Exposition, what: string): void {
  const key = (s: { name: string; labels: Record<string, string> }) => `${s.name}${JSON.stringify(s.labels)}`;
  const later = new Map(after.samples.map((s) => [key(s), s.value]));
  const counters = before.samples.filter(
    (s) =>
      s.name.startsWith('vublk_') &&
      /_total$|_count$|_bucket$|_sum$/.test(s.name) &&
      !s.name.startsWith('vublk_process') &&
      !s.name.startsWith('vublk_nodejs'),
  );
  const down = counters.filter((s) => !((later.get(key(s)) ?? -1) >= s.value));
  t.same(down.map(key), [], `${what}: no vublk counter went down or vanished`);
}

/** The known mix on queue 0: reads, writes, a flush, GET_ID, an IOERR and an UNSUPP. */
async function knownMix(t: Test, drv: BlkDriver, tally: Tally, reads: number, writes: number): Promise<void> {
  for (let i = 0; i < writes; i++) {
    tally.note(t, await drv.write(tally.queue, 64 + 8 * i, pattern(4096, i)), 'out', BlkStatus.OK, 4096);
  }
  for (let i = 0; i < reads; i++) tally.note(t, await drv.read(tally.queue, 8 * i, 4096), 'in', BlkStatus.OK, 4096);
  tally.note(t, await drv.flush(tally.queue), 'flush', BlkStatus.OK, 0);
  tally.note(t, await drv.getId(tally.queue), 'get_id', BlkStatus.OK, 20);
  tally.note(t, await drv.read(tally.queue, CAP, 4096), 'in', BlkStatus.IOERR, 0);
  tally.note(t, await drv.raw(tally.queue, 0x7777, 0, []), 'unknown', BlkStatus.UNSUPP, 0);
  tally.note(t, await drv.raw(tally.queue, BlkType.GET_LIFETIME, 0, [{ len: 8, write: true }]), 'get_lifetime', BlkStatus.UNSUPP, 0);
}

t.test('a Unix-socket endpoint counts a known mix of I/O exactly, during the I/O and after, across reconnects', async (t) => {
  const mdir = tmpDir('vublk-metrics-');
  t.teardown(() => fs.rmSync(mdir, { recursive: true, force: true }));
  const target: HttpTarget = { socketPath: path.join(mdir, 'metrics.sock') };
  const d = await startDaemon(t, { imageBytes: IMAGE_BYTES, queues: 2, extraArgs: ['--metrics-listen', target.socketPath!] });
  await d.v.waitForLog(/metrics endpoint listening address=\S*metrics\.sock/);

  const idle = await scrape(target);
  t.equal(value(idle, 'vublk_connections_total'), 0, 'no connection yet');
  t.equal(value(idle, 'vublk_connected'), 0, 'not connected');
  t.equal(value(idle, 'vublk_disk_capacity_bytes'), IMAGE_BYTES, 'capacity');
  t.equal(select(idle, 'vublk_requests_total').length, 0, 'no request series before any request');
  t.equal(idle.types.get('vublk_request_duration_seconds'), 'histogram', 'latency is a histogram');
  t.ok(select(idle, 'vublk_process_cpu_seconds_total').length === 1, 'process metrics carry the vublk_ prefix');
  t.equal((await httpGet(target, '/')).status, 404, 'other paths: 404');
  t.equal((await httpGet(target, '/metrics', 'POST')).status, 405, 'other methods: 405');
  t.match((await httpGet(target, '/metrics')).type, /^text\/plain; version=0\.0\.4/, 'text exposition format');

  const q0 = new Tally(0);
  const q1 = new Tally(1);
  const { fe, drv } = await connect(t, d, { queues: 2 });
  await knownMix(t, drv, q0, 6, 5);
  for (let i = 0; i < 4; i++) q1.note(t, await drv.read(1, 8 * i, 8192), 'in', BlkStatus.OK, 8192);

  // During I/O: a batch of 16 reads is in flight while the endpoint is scraped.
  const before = await scrape(target);
  const batch = drv.submitBatch(Array.from({ length: 16 }, (_, i) => ({ q: 0, type: BlkType.IN, sector: 8 * i, len: 4096 })));
  const during = await scrape(target);
  for (const r of await Promise.all(batch)) q0.note(t, r, 'in', BlkStatus.OK, 4096);
  const inflightDuring = value(during, 'vublk_inflight_requests', { queue: '0' });
  t.ok(inflightDuring >= 0 && inflightDuring <= 16, `in flight during the batch: ${inflightDuring}`);
  checkMonotonic(t, before, during, 'before -> during');

  const after = await scrape(target);
  checkMonotonic(t, during, after, 'during -> after');
  checkRequests(t, after, q0, 'after');
  checkRequests(t, after, q1, 'after');
  t.equal(value(after, 'vublk_inflight_requests', { queue: '0' }), 0, 'nothing in flight after');
  t.equal(value(after, 'vublk_connections_total'), 1, 'one connection');
  t.equal(value(after, 'vublk_connected'), 1, 'connected');
  t.equal(value(after, 'vublk_protocol_violations_total'), 0, 'no violation');
  for (const q of [q0, q1]) {
    const queue = String(q.queue);
    const kicks = value(after, 'vublk_kicks_total', { queue });
    const calls = value(after, 'vublk_calls_total', { queue });
    t.ok(kicks > 0, `queue ${queue}: kicks ${kicks} > 0`);
    t.ok(calls > 0 && calls <= q.completions, `queue ${queue}: calls ${calls} in 1..${q.completions} (completions)`);
  }
  // Reads and writes are one op each here (aligned 4 KiB, no splits), flush one more.
  const q0Ops = sum(after, 'vublk_disk_ops_total', { queue: '0' });
  t.equal(q0Ops, (q0.requests.get('in/ok') ?? 0) + (q0.requests.get('out/ok') ?? 0) + 1, 'queue 0 disk ops: one per read, write and flush');
  t.equal(sum(after, 'vublk_disk_ops_total', { queue: '1' }), 4, 'queue 1 disk ops: its four reads');

  // The daemon's own counters line (SIGUSR1) agrees with the endpoint.
  const mark = d.v.stderr().length;
  d.v.child.kill('SIGUSR1');
  await d.v.waitForLog(/counters conn=1 queue=1 reason=SIGUSR1/);
  const logged = total(countersOf(d.v.stderr().slice(mark), 1, 'SIGUSR1'));
  t.equal(sum(after, 'vublk_requests_total'), logged.requests, 'requests_total = the counters line');
  t.equal(
    sum(after, 'vublk_requests_total', { status: 'ioerr' }) + sum(after, 'vublk_requests_total', { status: 'unsupp' }),
    logged.errors,
    'error statuses = the counters line',
  );
  t.equal(sum(after, 'vublk_bounced_bytes_total'), logged.bytesBounced, 'bounced bytes = the counters line');
  t.equal(sum(after, 'vublk_rmw_cycles_total'), logged.rmwCycles, 'RMW cycles = the counters line');

  // Reconnect: the closed connection's counts stay in the totals.
  const closeMark = d.v.stderr().length;
  fe.close();
  await waitConnClosed(d, closeMark, 1);
  const closed = await scrape(target);
  t.equal(value(closed, 'vublk_connected'), 0, 'not connected after close');
  checkMonotonic(t, after, closed, 'after -> closed');
  checkRequests(t, closed, q0, 'after close');
  checkRequests(t, closed, q1, 'after close');
  const second = await connect(t, d, { queues: 2 });
  await knownMix(t, second.drv, q0, 3, 2);
  const again = await scrape(target);
  t.equal(value(again, 'vublk_connections_total'), 2, 'two connections');
  t.equal(value(again, 'vublk_connected'), 1, 'connected again');
  checkMonotonic(t, closed, again, 'closed -> second connection');
  checkRequests(t, again, q0, 'second connection');
  checkRequests(t, again, q1, 'second connection');

  // A malformed message: counted as a violation, totals kept.
  const vMark = d.v.stderr().length;
  second.fe.send(Request.SET_VRING_NUM, encodeVringStatePayload(99, 128));
  await t.resolves(second.fe.waitClosed(5000), 'the violating frontend is disconnected');
  await waitConnClosed(d, vMark, 2);
  const broken = await scrape(target);
  t.equal(value(broken, 'vublk_protocol_violations_total'), 1, 'one protocol violation');
  t.equal(value(broken, 'vublk_connected'), 0, 'not connected');
  checkRequests(t, broken, q0, 'after the violation');
  const third = await connect(t, d, { queues: 1 });
  t.equal(await connIdSince(d, vMark), 3, 'a third frontend is served');
  q0.note(t, await third.drv.read(0, 0, 4096), 'in', BlkStatus.OK, 4096);
  const last = await scrape(target);
  t.equal(value(last, 'vublk_connections_total'), 3, 'three connections');
  checkRequests(t, last, q0, 'third connection');

  await d.stop();
  t.notOk(fs.existsSync(target.socketPath!), 'the metrics socket is removed on stop');
});

t.test('127.0.0.1:0: the daemon logs the port it got and serves /metrics there', async (t) => {
  const d: Daemon = await startDaemon(t, { imageBytes: IMAGE_BYTES, extraArgs: ['--metrics-listen', '127.0.0.1:0'] });
  const line = await d.v.waitForLog(/metrics endpoint listening address=127\.0\.0\.1:\d+/);
  const port = Number(/address=127\.0\.0\.1:(\d+)/.exec(line)![1]);
  t.ok(port > 0, `bound port ${port}`);
  const { drv } = await connect(t, d, { queues: 1 });
  const tally = new Tally(0);
  tally.note(t, await drv.write(0, 0, pattern(8192, 3)), 'out', BlkStatus.OK, 8192);
  checkRequests(t, await scrape({ host: '127.0.0.1', port }), tally, 'over TCP');
});

t.test('start-up errors: a live metrics socket is refused, a stale one replaced', async (t) => {
  const dir = tmpDir('vublk-metrics-start-');
  let second: VublkProcess | undefined;
  teardownDaemon(t, dir, () => second);
  // Each daemon gets its own image: a shared one would be refused by the
  // image lock before the metrics socket is even looked at.
  const msock = path.join(dir, 'm.sock');
  const args = (name: string) => {
    const image = makeImage(dir, IMAGE_BYTES, `${name}.img`);
    return ['--disk', image, '--socket', path.join(dir, name), '--state-file', 'none', '--metrics-listen', msock];
  };
  const first = await startVublk(args('a.sock'));
  t.teardown(() => first.stop('SIGKILL'));
  await first.waitForLog(/metrics endpoint listening/);
  const r = await runVublk(args('b.sock'));
  t.equal(r.code, 1, 'exit 1');
  t.match(r.stderr, /vublk: error: socket path \S*m\.sock is in use by another process/, 'names the socket in use');
  t.notOk(fs.existsSync(path.join(dir, 'b.sock')), 'the failed daemon removed its vhost-user socket');
  // SIGKILL leaves the socket file behind: the next daemon replaces it.
  await first.stop('SIGKILL');
  t.ok(fs.existsSync(msock), 'a stale socket file is left');
  second = await startVublk(args('c.sock'));
  await second.waitForLog(/metrics endpoint listening/);
  t.equal(value(await scrape({ socketPath: msock }), 'vublk_connections_total'), 0, 'the new daemon serves the path');
});
