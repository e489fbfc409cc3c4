// RequestStats: the completion funnel's per-queue tallies that the metrics
// endpoint reads (types, statuses, bytes, latency buckets).

import t from 'tap';
import { LATENCY_BOUNDS, LATENCY_BUCKETS, REQUEST_TYPES, RequestStats, requestBytes, typeIndex } from '../../src/blk/request-stats';
import { SegmentList } from '../../src/blk/discard-zeroes';

const T = (name: string): number => REQUEST_TYPES.indexOf(name as (typeof REQUEST_TYPES)[number]);

t.test('types map to their labels; unnamed types are "unknown"', async (t) => {
  const named: Array<[number, string]> = [
    [0, 'in'],
    [1, 'out'],
    [4, 'flush'],
    [8, 'get_id'],
    [10, 'get_lifetime'],
    [11, 'discard'],
    [13, 'write_zeroes'],
    [14, 'secure_erase'],
  ];
  for (const [type, name] of named) t.equal(REQUEST_TYPES[typeIndex(type)], name, `type ${type}`);
  for (const type of [2, 3, 5, 9, 12, 15, 0x7777, 0xffffffff]) t.equal(REQUEST_TYPES[typeIndex(type)], 'unknown', `type ${type}`);
});

t.test('a latency lands in the first bucket whose bound it does not exceed', async (t) => {
  const s = new RequestStats();
  const first = LATENCY_BOUNDS[0];
  s.record(0, 0, 4096, 0);
  s.record(0, 0, 4096, first);
  s.record(0, 0, 4096, first * 1.01);
  s.record(0, 0, 4096, 1e6);
  const row = Array.from(s.buckets.subarray(0, LATENCY_BUCKETS));
  t.equal(row[0], 2, '0 and exactly the first bound: first bucket');
  t.equal(row[1], 1, 'just past it: the second');
  t.equal(row[LATENCY_BUCKETS - 1], 1, 'past the last bound: +Inf');
  t.equal(s.count(T('in'), 0), 4, 'four OK reads');
  t.equal(s.bytes[T('in')], 4 * 4096, 'their bytes');
  t.equal(s.seconds[T('in')], first + first * 1.01 + 1e6, 'latency sum');
});

t.test('statuses, merging, and the bytes each type moves', async (t) => {
  const a = new RequestStats();
  const b = new RequestStats();
  a.record(1, 1, 0, 0.001);
  b.record(1, 2, 0, 0.001);
  b.record(1, 7, 0, 0.001); // not a status the handler writes: counted as an error
  a.add(b);
  t.same([a.count(T('out'), 0), a.count(T('out'), 1), a.count(T('out'), 2)], [0, 2, 1], 'ok, ioerr, unsupp after add');
  const list = new SegmentList(4);
  list.count = 2;
  list.sectors.set([8, 16]);
  t.equal(requestBytes({ type: 11, dataLen: 32, writableLen: 0, segments: list }), 24 * 512, 'DISCARD: the sectors of its segments');
  t.equal(requestBytes({ type: 8, dataLen: 20, writableLen: 21, segments: undefined }), 20, 'GET_ID: the id bytes written');
  t.equal(requestBytes({ type: 0, dataLen: 8192, writableLen: 8193, segments: undefined }), 8192, 'IN: its data');
  t.equal(requestBytes({ type: 4, dataLen: 0, writableLen: 1, segments: undefined }), 0, 'FLUSH: none');
});
