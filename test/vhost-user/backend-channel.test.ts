// BackendChannel over a real Unix socket: CONFIG_CHANGE_MSG goes out only
// when BACKEND_REQ and CONFIG were acked, without NEED_REPLY; a full socket
// never blocks the caller (the message waits for room, notifications
// coalesce); a channel the frontend closed is logged once, never thrown.

import t, { type Test } from 'tap';
import { native } from '../../src/native/binding';
import { BackendChannel } from '../../src/vhost-user/backend-channel';
import { BackendRequest, Flags, ProtocolFeature, featureBit } from '../../src/vhost-user/protocol';
import { setLogSink } from '../../src/log';
import { connectedPair } from '../helpers/socket-pair';

const ACKED = featureBit(ProtocolFeature.BACKEND_REQ) | featureBit(ProtocolFeature.CONFIG) | featureBit(ProtocolFeature.MQ);

/** A connected pair: `ours` goes to the channel (vublk's end), `peer` plays the frontend. */
async function pair(t: Test): Promise<{ ours: number; peer: number; closePeer(): void }> {
  const { client: ours, server: peer } = await connectedPair();
  let peerOpen = true;
  const closePeer = (): void => {
    if (peerOpen) native.closeFd(peer);
    peerOpen = false;
  };
  t.teardown(closePeer);
  return { ours, peer, closePeer };
}

/** Everything readable on fd now. */
function drain(fd: number): Buffer {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    const r = native.recvMsg(fd, buf, 0, buf.length, 0);
    if (r.bytes <= 0) break;
    chunks.push(Buffer.from(buf.subarray(0, r.bytes)));
  }
  return Buffer.concat(chunks);
}

const CONFIG_CHANGE = Buffer.from(new Uint32Array([BackendRequest.CONFIG_CHANGE_MSG, Flags.VERSION, 0]).buffer);

function captureLog(t: Test): string[] {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  t.teardown(() => setLogSink(undefined));
  return lines;
}

t.test('sends a 12-byte CONFIG_CHANGE_MSG, no NEED_REPLY, only with BACKEND_REQ and CONFIG acked', async (t) => {
  const { ours, peer } = await pair(t);
  const ch = new BackendChannel(1);
  t.teardown(() => ch.close());
  ch.configChanged(ACKED);
  t.equal(drain(peer).length, 0, 'no channel yet: nothing sent');
  ch.attach(ours);
  ch.configChanged(featureBit(ProtocolFeature.BACKEND_REQ));
  ch.configChanged(featureBit(ProtocolFeature.CONFIG));
  t.equal(drain(peer).length, 0, 'one of the two features missing: nothing sent');
  ch.configChanged(ACKED);
  t.same(drain(peer), CONFIG_CHANGE, 'request 2, flags VERSION only, no payload');
  t.equal(ch.delivered, 1);
});

t.test('a full channel never blocks: the message waits for room, later ones coalesce', async (t) => {
  const { ours, peer } = await pair(t);
  // Fill vublk's direction of the socket before the channel gets it.
  const filler = Buffer.alloc(65536, 0xaa);
  let filled = 0;
  for (let n; (n = native.sendSome(ours, filler, 0, filler.length)) > 0;) filled += n;
  const ch = new BackendChannel(1);
  t.teardown(() => ch.close());
  ch.attach(ours);
  const started = process.hrtime.bigint();
  for (let i = 0; i < 5; i++) ch.configChanged(ACKED);
  t.ok(process.hrtime.bigint() - started < 50_000_000n, 'configChanged returned at once on a full socket');
  t.equal(ch.delivered, 0, 'nothing delivered while full');
  // The peer reads: room appears, the pending message goes out (once).
  let got = Buffer.alloc(0);
  const deadline = Date.now() + 3000;
  while (got.length < filled + CONFIG_CHANGE.length && Date.now() < deadline) {
    got = Buffer.concat([got, drain(peer)]);
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 50));
  got = Buffer.concat([got, drain(peer)]);
  t.equal(got.length, filled + CONFIG_CHANGE.length, 'the filler, then exactly one message');
  t.same(got.subarray(filled), CONFIG_CHANGE, 'which is CONFIG_CHANGE_MSG');
  t.equal(ch.delivered, 1, 'five notifications coalesced into one');
  ch.configChanged(ACKED);
  t.same(drain(peer), CONFIG_CHANGE, 'the next one goes out at once');
});

t.test('a closed channel is logged once and dropped, never thrown', async (t) => {
  const lines = captureLog(t);
  const { ours, closePeer } = await pair(t);
  const ch = new BackendChannel(7);
  ch.attach(ours);
  closePeer();
  t.doesNotThrow(() => ch.configChanged(ACKED), 'no throw on a dead channel');
  t.doesNotThrow(() => ch.configChanged(ACKED), 'nor after');
  const warns = lines.filter((l) => /^vublk: warn: /.test(l));
  t.equal(warns.length, 1, `one warn line: ${warns.join('')}`);
  t.match(warns[0] ?? '', /back-end channel is gone.*conn=7/, 'naming the connection');
  t.equal(native.fdTarget(ours), '', 'the channel closed its fd');
  ch.close();
});
