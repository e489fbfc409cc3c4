// The message decoders (message.ts) and the reply encoders (encode.ts): exact
// sizes and fd counts, address-range rules, property tests against the encoders.
import t from 'tap';
import fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import {
  type Message,
  decodeAddMemReg,
  decodeBackendReqFd,
  decodeConfig,
  decodeEmpty,
  decodeGetInflight,
  decodeMemTable,
  decodeRemMemReg,
  decodeSetInflight,
  decodeStatus,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
  needsReply,
  rangesOverlap,
} from '../../src/vhost-user/message';
import {
  encodeConfigPayload,
  encodeConfigReply,
  encodeInflightPayload,
  encodeMessage,
  encodeReply,
  encodeU64Payload,
  encodeU64Reply,
  encodeVringStatePayload,
  encodeVringStateReply,
} from '../../src/vhost-user/encode';
import {
  encodeAck,
  encodeMemRegPayload,
  encodeMemTablePayload,
  encodeVringAddrPayload,
  encodeVringFilePayload,
  type WireRegion,
} from '../../src/frontend/encode';
import { decodeRequest } from '../helpers/decode-request';
import { Flags, HEADER_SIZE, MAX_PAYLOAD_SIZE, Request, payloadKind } from '../../src/vhost-user/protocol';
import { ProtocolViolation } from '../../src/vhost-user/violation';

function msg(request: number, payload: Uint8Array = Buffer.alloc(0), fds: number[] = [], flags: number = Flags.VERSION): Message {
  const p = Buffer.from(payload);
  return { request, flags, size: p.length, payload: p, fds };
}

/** Asserts fn throws a ProtocolViolation whose message matches re. */
function violates(tt: Tap, fn: () => unknown, re: RegExp, label?: string): void {
  try {
    fn();
  } catch (err) {
    tt.ok(err instanceof ProtocolViolation, `${label ?? re}: is a ProtocolViolation`);
    tt.match((err as Error).message, re, label ?? `message matches ${re}`);
    tt.equal((err as ProtocolViolation).code, 'E_PROTOCOL');
    return;
  }
  tt.fail(`${label ?? re}: did not throw`);
}
type Tap = tap.Test;

const GIB = 0x4000_0000;
const R0: WireRegion = { gpa: 0, size: GIB, uva: 0x7f00_0000_0000, mmapOffset: 0 };
const R1: WireRegion = { gpa: GIB, size: GIB, uva: 0x7f01_0000_0000, mmapOffset: 4096 };

t.test('empty payload (GET_FEATURES, SET_OWNER, ...)', async (tt) => {
  decodeEmpty(msg(Request.GET_FEATURES));
  violates(tt, () => decodeEmpty(msg(Request.GET_FEATURES, Buffer.alloc(8))), /^GET_FEATURES payload is 8 bytes, expected 0$/);
  violates(tt, () => decodeEmpty(msg(Request.SET_OWNER, Buffer.alloc(0), [5])), /^SET_OWNER carries 1 fds, expected 0/);
});

t.test('u64', async (tt) => {
  tt.equal(decodeU64(msg(Request.SET_FEATURES, encodeU64Payload(0xffff_ffff_ffff_ffffn))), 0xffff_ffff_ffff_ffffn);
  tt.equal(decodeU64(msg(Request.SET_PROTOCOL_FEATURES, encodeU64Payload(0x8209))), 0x8209n);
  violates(tt, () => decodeU64(msg(Request.SET_FEATURES, Buffer.alloc(4))), /^SET_FEATURES payload is 4 bytes, expected 8$/);
  violates(tt, () => decodeU64(msg(Request.SET_FEATURES, Buffer.alloc(0))), /payload is 0 bytes, expected 8/);
  violates(tt, () => decodeU64(msg(Request.SET_FEATURES, Buffer.alloc(8), [3])), /SET_FEATURES carries 1 fds/);
  violates(
    tt,
    () => decodeU64({ request: Request.SET_FEATURES, flags: 1, size: 8, payload: Buffer.alloc(4), fds: [] }),
    /header says 8 payload bytes but 4 were read/,
  );
});

t.test('vring state', async (tt) => {
  tt.same(decodeVringState(msg(Request.SET_VRING_NUM, encodeVringStatePayload(1, 256))), { index: 1, num: 256 });
  tt.same(decodeVringState(msg(Request.GET_VRING_BASE, encodeVringStatePayload(0xffffffff, 0))), { index: 0xffffffff, num: 0 });
  violates(tt, () => decodeVringState(msg(Request.SET_VRING_NUM, Buffer.alloc(4))), /^SET_VRING_NUM payload is 4 bytes, expected 8$/);
  violates(tt, () => decodeVringState(msg(Request.SET_VRING_BASE, Buffer.alloc(16))), /SET_VRING_BASE payload is 16 bytes, expected 8/);
  violates(tt, () => decodeVringState(msg(Request.SET_VRING_ENABLE, Buffer.alloc(8), [7])), /SET_VRING_ENABLE carries 1 fds/);
});

t.test('vring address', async (tt) => {
  const ok = { index: 1, flags: 0, desc: 0x7f00_0000_1000, used: 0x7f00_0000_3000, avail: 0x7f00_0000_2000, log: 0 };
  tt.same(decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload(ok))), { ...ok, log: 0n });
  const logged = decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, flags: 1, log: 0xffff_ffff_ffff_fff0n })));
  tt.equal(logged.flags, 1);
  tt.equal(logged.log, 0xffff_ffff_ffff_fff0n, 'log address stays a bigint');
  // Smallest alignments allowed by the split ring.
  decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, desc: 16, avail: 2, used: 4 })));
  violates(tt, () => decodeVringAddr(msg(Request.SET_VRING_ADDR, Buffer.alloc(32))), /^SET_VRING_ADDR payload is 32 bytes, expected 40$/);
  violates(
    tt,
    () => decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, flags: 2 }))),
    /flags 0x2 has bits other than VHOST_VRING_F_LOG/,
  );
  violates(
    tt,
    () => decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, desc: 8 }))),
    /descriptor table address 0x8 is not 16-byte aligned/,
  );
  violates(
    tt,
    () => decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, avail: 1 }))),
    /available ring address 0x1 is not 2-byte aligned/,
  );
  violates(
    tt,
    () => decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, used: 2 }))),
    /used ring address 0x2 is not 4-byte aligned/,
  );
  violates(
    tt,
    () => decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, desc: 1n << 60n }))),
    /descriptor table address 0x1000000000000000 exceeds 2\^53/,
  );
  violates(
    tt,
    () => decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ ...ok, used: 0xffff_ffff_ffff_fffcn }))),
    /used ring address .* exceeds 2\^53/,
  );
  violates(tt, () => decodeVringAddr(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload(ok), [4])), /carries 1 fds/);
});

t.test('memory table', async (tt) => {
  const one = decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0]), [10]));
  tt.same(one.regions, [{ gpa: 0, size: GIB, uva: 0x7f00_0000_0000, mmapOffset: 0, fd: 10 }]);
  const two = decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0, R1]), [10, 11]));
  tt.same(
    two.regions.map((r) => [r.gpa, r.size, r.mmapOffset, r.fd]),
    [
      [0, GIB, 0, 10],
      [GIB, GIB, 4096, 11],
    ],
    'back-to-back regions, fds in region order',
  );
  const eight = Array.from({ length: 8 }, (_, i) => ({ gpa: i * GIB, size: GIB, uva: 0x7f00_0000_0000 + i * 2 ** 32, mmapOffset: 0 }));
  tt.equal(decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload(eight), [1, 2, 3, 4, 5, 6, 7, 8])).regions.length, 8);

  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0, R1]), [10, 11, 12])),
    /^SET_MEM_TABLE carries 3 fds for 2 regions$/,
  );
  violates(tt, () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0, R1]), [10])), /carries 1 fds for 2 regions/);
  violates(tt, () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([]), [])), /has 0 regions, expected 1\.\.8/);
  const nine = [...eight, { gpa: 8 * GIB, size: GIB, uva: 0x7f10_0000_0000, mmapOffset: 0 }];
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload(nine), [1, 2, 3, 4, 5, 6, 7, 8])),
    /has 9 regions, expected 1\.\.8/,
  );
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0], 2), [1, 2])),
    /^SET_MEM_TABLE payload is 40 bytes, expected 72$/,
  );
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, Buffer.concat([encodeMemTablePayload([R0]), Buffer.alloc(1)]), [1])),
    /payload is 41 bytes, expected 40/,
  );
  violates(tt, () => decodeMemTable(msg(Request.SET_MEM_TABLE, Buffer.alloc(4), [])), /payload is 4 bytes, shorter than the 8-byte header/);
  violates(tt, () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([{ ...R0, size: 0 }]), [1])), /region 0 has size 0/);
  violates(
    tt,
    () =>
      decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0, { ...R1, gpa: 0xffff_ffff_ffff_f000n, size: 0x2000 }]), [1, 2])),
    /^SET_MEM_TABLE region 1 gpa\+size wraps past 2\^64/,
  );
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([{ ...R0, uva: 0xffff_ffff_ffff_ffffn }]), [1])),
    /region 0 uva\+size wraps past 2\^64/,
  );
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([{ ...R0, mmapOffset: 0xffff_ffff_c000_0001n }]), [1])),
    /region 0 mmapOffset\+size wraps past 2\^64/,
  );
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([{ ...R0, size: 0xffff_ffff_ffff_ffffn }]), [1])),
    /region 0 gpa\+size ends beyond 2\^53/,
  );
  // Ends exactly at 2^64: no wrap, but not representable either.
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([{ ...R0, gpa: 0xffff_ffff_c000_0000n }]), [1])),
    /gpa\+size ends beyond 2\^53/,
  );
  // Ends exactly at 2^53-1: every address inside, and the end, are exact.
  decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([{ ...R0, gpa: 2 ** 53 - 1 - GIB }]), [1]));
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([{ ...R0, gpa: 2 ** 53 - GIB }]), [1])),
    /ends beyond 2\^53-1/,
  );
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0, { ...R1, gpa: GIB - 4096 }]), [1, 2])),
    /regions 0 and 1 overlap in guest-physical space/,
  );
  violates(
    tt,
    () => decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0, { ...R1, uva: R0.uva }]), [1, 2])),
    /regions 0 and 1 overlap in user address space/,
  );
});

t.test('ADD_MEM_REG / REM_MEM_REG', async (tt) => {
  tt.same(decodeAddMemReg(msg(Request.ADD_MEM_REG, encodeMemRegPayload(R1), [9])), {
    gpa: GIB,
    size: GIB,
    uva: 0x7f01_0000_0000,
    mmapOffset: 4096,
    fd: 9,
  });
  violates(tt, () => decodeAddMemReg(msg(Request.ADD_MEM_REG, encodeMemRegPayload(R1), [])), /^ADD_MEM_REG carries 0 fds, expected 1/);
  violates(tt, () => decodeAddMemReg(msg(Request.ADD_MEM_REG, encodeMemRegPayload(R1), [1, 2])), /carries 2 fds, expected 1/);
  violates(
    tt,
    () => decodeAddMemReg(msg(Request.ADD_MEM_REG, encodeMemRegPayload(R1).subarray(8), [1])),
    /^ADD_MEM_REG payload is 32 bytes, expected 40$/,
  );
  violates(
    tt,
    () => decodeAddMemReg(msg(Request.ADD_MEM_REG, encodeMemRegPayload({ ...R1, gpa: 0xffff_ffff_ffff_0000n }), [1])),
    /^ADD_MEM_REG region gpa\+size wraps past 2\^64/,
  );
  violates(
    tt,
    () => decodeAddMemReg(msg(Request.ADD_MEM_REG, encodeMemRegPayload({ ...R1, size: 0 }), [1])),
    /ADD_MEM_REG region has size 0/,
  );

  tt.same(decodeRemMemReg(msg(Request.REM_MEM_REG, encodeMemRegPayload(R1), [])), { gpa: GIB, size: GIB, uva: 0x7f01_0000_0000 });
  tt.same(decodeRemMemReg(msg(Request.REM_MEM_REG, encodeMemRegPayload(R1), [3])).gpa, GIB, 'one stray fd accepted (spec: MAY)');
  decodeRemMemReg(msg(Request.REM_MEM_REG, encodeMemRegPayload({ ...R1, mmapOffset: 0xffff_ffff_ffff_ffffn }), []));
  tt.pass('REM_MEM_REG ignores the mmap offset');
  violates(
    tt,
    () => decodeRemMemReg(msg(Request.REM_MEM_REG, encodeMemRegPayload(R1), [3, 4])),
    /^REM_MEM_REG carries 2 fds, expected 0\.\.1/,
  );
  violates(tt, () => decodeRemMemReg(msg(Request.REM_MEM_REG, encodeMemRegPayload({ ...R1, size: 0 }))), /has size 0/);
  violates(
    tt,
    () => decodeRemMemReg(msg(Request.REM_MEM_REG, encodeMemRegPayload({ ...R1, uva: 0xffff_ffff_ffff_f000n }))),
    /uva\+size wraps past 2\^64/,
  );
});

t.test('vring fd (SET_VRING_KICK/CALL/ERR)', async (tt) => {
  tt.same(decodeVringFile(msg(Request.SET_VRING_KICK, encodeVringFilePayload(3, false), [20])), { index: 3, fd: 20 });
  tt.same(decodeVringFile(msg(Request.SET_VRING_CALL, encodeVringFilePayload(0xff, true))), { index: 0xff, fd: -1 });
  violates(
    tt,
    () => decodeVringFile(msg(Request.SET_VRING_KICK, encodeVringFilePayload(0, true), [20])),
    /^SET_VRING_KICK carries 1 fds, expected 0 \(the NOFD flag is set\)$/,
  );
  violates(
    tt,
    () => decodeVringFile(msg(Request.SET_VRING_CALL, encodeVringFilePayload(0, false))),
    /SET_VRING_CALL carries 0 fds, expected 1 \(the NOFD flag is clear\)/,
  );
  violates(tt, () => decodeVringFile(msg(Request.SET_VRING_ERR, encodeVringFilePayload(0, false), [1, 2])), /carries 2 fds, expected 1/);
  violates(
    tt,
    () => decodeVringFile(msg(Request.SET_VRING_KICK, encodeU64Payload(0x200), [1])),
    /payload 0x200 has bits beyond index and NOFD/,
  );
  violates(tt, () => decodeVringFile(msg(Request.SET_VRING_KICK, encodeU64Payload(1n << 63n), [1])), /bits beyond index and NOFD/);
  violates(tt, () => decodeVringFile(msg(Request.SET_VRING_KICK, Buffer.alloc(4), [1])), /SET_VRING_KICK payload is 4 bytes, expected 8/);
});

t.test('config', async (tt) => {
  const data = Buffer.from(Array.from({ length: 60 }, (_, i) => i));
  const c = decodeConfig(msg(Request.SET_CONFIG, encodeConfigPayload(4, 0, data)));
  tt.equal(c.offset, 4);
  tt.equal(c.size, 60);
  tt.equal(c.flags, 0);
  tt.same([...c.data], [...data]);
  // QEMU's GET_CONFIG: offset 0, size = config length, zeroed data.
  tt.equal(decodeConfig(msg(Request.GET_CONFIG, encodeConfigPayload(0, 0, Buffer.alloc(60)))).size, 60);
  tt.equal(decodeConfig(msg(Request.SET_CONFIG, encodeConfigPayload(0, 1, Buffer.alloc(256)))).size, 256, 'whole space, migration flag');
  tt.equal(decodeConfig(msg(Request.GET_CONFIG, encodeConfigPayload(256, 0, Buffer.alloc(0)))).size, 0, 'empty access at the end');
  violates(
    tt,
    () => decodeConfig(msg(Request.SET_CONFIG, encodeConfigPayload(200, 0, Buffer.alloc(60)))),
    /offset 200 \+ size 60 exceeds the 256-byte config space/,
  );
  violates(
    tt,
    () => decodeConfig(msg(Request.SET_CONFIG, encodeConfigPayload(0xffff_ffff, 0, Buffer.alloc(2)))),
    /exceeds the 256-byte config space/,
  );
  violates(
    tt,
    () => decodeConfig(msg(Request.SET_CONFIG, encodeConfigPayload(0, 0, Buffer.alloc(8), 0xffff_fff8))),
    /exceeds the 256-byte config space/,
  );
  violates(
    tt,
    () => decodeConfig(msg(Request.GET_CONFIG, encodeConfigPayload(0, 0, Buffer.alloc(10), 60))),
    /^GET_CONFIG payload is 22 bytes, expected 72$/,
  );
  violates(tt, () => decodeConfig(msg(Request.GET_CONFIG, Buffer.alloc(8))), /shorter than the 12-byte config header/);
  violates(
    tt,
    () => decodeConfig(msg(Request.SET_CONFIG, encodeConfigPayload(0, 2, Buffer.alloc(4)))),
    /flags 2 is neither 0 \(writable\) nor 1 \(migration\)/,
  );
  violates(tt, () => decodeConfig(msg(Request.SET_CONFIG, encodeConfigPayload(0, 0, Buffer.alloc(4)), [1])), /carries 1 fds/);
});

t.test('SET_BACKEND_REQ_FD', async (tt) => {
  tt.equal(decodeBackendReqFd(msg(Request.SET_BACKEND_REQ_FD, Buffer.alloc(0), [12])), 12);
  violates(tt, () => decodeBackendReqFd(msg(Request.SET_BACKEND_REQ_FD)), /SET_BACKEND_REQ_FD carries 0 fds, expected 1/);
  violates(tt, () => decodeBackendReqFd(msg(Request.SET_BACKEND_REQ_FD, Buffer.alloc(8), [12])), /payload is 8 bytes, expected 0/);
});

t.test('GET_INFLIGHT_FD / SET_INFLIGHT_FD', async (tt) => {
  const p = encodeInflightPayload({ mmapSize: 0, mmapOffset: 0, numQueues: 2, queueSize: 256 });
  tt.equal(p.length, 24, 'VhostUserInflight is padded to 24 bytes');
  tt.same(decodeGetInflight(msg(Request.GET_INFLIGHT_FD, p)), { mmapSize: 0, mmapOffset: 0, numQueues: 2, queueSize: 256, fd: -1 });
  violates(tt, () => decodeGetInflight(msg(Request.GET_INFLIGHT_FD, p, [3])), /GET_INFLIGHT_FD carries 1 fds, expected 0/);
  violates(tt, () => decodeGetInflight(msg(Request.GET_INFLIGHT_FD, p.subarray(0, 20))), /payload is 20 bytes, expected 24/);
  const set = encodeInflightPayload({ mmapSize: 4224, mmapOffset: 4096, numQueues: 1, queueSize: 128 });
  tt.same(decodeSetInflight(msg(Request.SET_INFLIGHT_FD, set, [7])), {
    mmapSize: 4224,
    mmapOffset: 4096,
    numQueues: 1,
    queueSize: 128,
    fd: 7,
  });
  violates(tt, () => decodeSetInflight(msg(Request.SET_INFLIGHT_FD, set)), /SET_INFLIGHT_FD carries 0 fds, expected 1/);
  violates(tt, () => decodeSetInflight(msg(Request.SET_INFLIGHT_FD, set, [7, 8])), /carries 2 fds, expected 1/);
  violates(tt, () => decodeSetInflight(msg(Request.SET_INFLIGHT_FD, p, [7])), /mmap_size is 0/);
  const huge = encodeInflightPayload({ mmapSize: 4096, mmapOffset: 2n ** 63n, numQueues: 1, queueSize: 128 });
  violates(tt, () => decodeSetInflight(msg(Request.SET_INFLIGHT_FD, huge, [7])), /mmap_offset 0x8000000000000000 exceeds 2\^53-1/);
  const wraps = encodeInflightPayload({ mmapSize: 2n ** 53n - 1n, mmapOffset: 4096, numQueues: 1, queueSize: 128 });
  violates(tt, () => decodeSetInflight(msg(Request.SET_INFLIGHT_FD, wraps, [7])), /mmap_offset\+size ends beyond 2\^53-1/);
});

t.test('SET_STATUS', async (tt) => {
  tt.equal(decodeStatus(msg(Request.SET_STATUS, encodeU64Payload(0xff))), 0xff);
  tt.equal(decodeStatus(msg(Request.SET_STATUS, encodeU64Payload(0))), 0);
  violates(
    tt,
    () => decodeStatus(msg(Request.SET_STATUS, encodeU64Payload(0x100))),
    /SET_STATUS 0x100 does not fit the 8-bit device status/,
  );
  violates(tt, () => decodeStatus(msg(Request.SET_STATUS, encodeU64Payload(1), [4])), /carries 1 fds, expected 0/);
});

t.test('decodeRequest routes by request code', async (tt) => {
  tt.same(decodeRequest(msg(Request.GET_FEATURES)), { kind: 'none' });
  tt.same(decodeRequest(msg(Request.GET_PROTOCOL_FEATURES)), { kind: 'none' });
  tt.same(decodeRequest(msg(Request.GET_QUEUE_NUM)), { kind: 'none' });
  tt.same(decodeRequest(msg(Request.GET_MAX_MEM_SLOTS)), { kind: 'none' });
  tt.same(decodeRequest(msg(Request.SET_FEATURES, encodeU64Payload(5))), { kind: 'u64', value: 5n });
  tt.same(decodeRequest(msg(Request.GET_VRING_BASE, encodeVringStatePayload(1, 0))), { kind: 'vring-state', state: { index: 1, num: 0 } });
  tt.equal(decodeRequest(msg(Request.SET_VRING_ADDR, encodeVringAddrPayload({ index: 0, desc: 0, used: 0, avail: 0 }))).kind, 'vring-addr');
  tt.equal(decodeRequest(msg(Request.SET_MEM_TABLE, encodeMemTablePayload([R0]), [1])).kind, 'mem-table');
  tt.equal(decodeRequest(msg(Request.ADD_MEM_REG, encodeMemRegPayload(R0), [1])).kind, 'add-mem-reg');
  tt.equal(decodeRequest(msg(Request.REM_MEM_REG, encodeMemRegPayload(R0))).kind, 'rem-mem-reg');
  tt.same(decodeRequest(msg(Request.SET_VRING_CALL, encodeVringFilePayload(1, false), [8])), {
    kind: 'vring-file',
    file: { index: 1, fd: 8 },
  });
  tt.equal(decodeRequest(msg(Request.GET_CONFIG, encodeConfigPayload(0, 0, Buffer.alloc(60)))).kind, 'config');
  tt.same(decodeRequest(msg(Request.SET_BACKEND_REQ_FD, Buffer.alloc(0), [4])), { kind: 'backend-fd', fd: 4 });
  const inflight = encodeInflightPayload({ mmapSize: 8192, mmapOffset: 0, numQueues: 2, queueSize: 128 });
  tt.same(decodeRequest(msg(Request.GET_INFLIGHT_FD, inflight)), {
    kind: 'inflight',
    inflight: { mmapSize: 8192, mmapOffset: 0, numQueues: 2, queueSize: 128, fd: -1 },
  });
  tt.same(decodeRequest(msg(Request.SET_INFLIGHT_FD, inflight, [9])), {
    kind: 'inflight',
    inflight: { mmapSize: 8192, mmapOffset: 0, numQueues: 2, queueSize: 128, fd: 9 },
  });
  for (const code of [Request.SET_LOG_BASE, Request.IOTLB_MSG, 0, 41, 1000]) {
    tt.equal(payloadKind(code), 'unsupported', `code ${code}`);
    tt.same(decodeRequest(msg(code, Buffer.alloc(24), [1])), { kind: 'unsupported' });
  }
  violates(tt, () => decodeRequest(msg(Request.GET_QUEUE_NUM, Buffer.alloc(8))), /^GET_QUEUE_NUM payload is 8 bytes, expected 0$/);
});

t.test('encoders', async (tt) => {
  const r = encodeU64Reply(Request.GET_FEATURES, 0x1_4000_0000n);
  tt.equal(r.length, HEADER_SIZE + 8);
  tt.equal(r.readUInt32LE(0), Request.GET_FEATURES);
  tt.equal(r.readUInt32LE(4), Flags.VERSION | Flags.REPLY);
  tt.equal(r.readUInt32LE(8), 8);
  tt.equal(r.readBigUInt64LE(12), 0x1_4000_0000n);

  const e = encodeReply(Request.SET_OWNER);
  tt.same([e.length, e.readUInt32LE(4), e.readUInt32LE(8)], [12, 5, 0]);

  const s = encodeVringStateReply(Request.GET_VRING_BASE, 1, 77);
  tt.same([s.readUInt32LE(8), s.readUInt32LE(12), s.readUInt32LE(16)], [8, 1, 77]);

  const c = encodeConfigReply(0, 0, Buffer.from([1, 2, 3]));
  tt.same(
    [c.readUInt32LE(0), c.readUInt32LE(8), c.readUInt32LE(12), c.readUInt32LE(16), c.readUInt32LE(20)],
    [Request.GET_CONFIG, 15, 0, 3, 0],
  );
  tt.same([...c.subarray(24)], [1, 2, 3]);
  tt.equal(encodeConfigReply(0, 0, Buffer.alloc(0)).readUInt32LE(8), 0, 'empty config reply signals failure');

  tt.equal(encodeAck(Request.SET_MEM_TABLE, true).readBigUInt64LE(12), 0n);
  tt.equal(encodeAck(Request.SET_MEM_TABLE, false).readBigUInt64LE(12), 1n);
  tt.throws(() => encodeU64Payload(-1), RangeError);
  tt.throws(() => encodeU64Payload(1n << 64n), RangeError);

  const m = encodeMessage(Request.SET_VRING_NUM, Flags.VERSION | Flags.NEED_REPLY, encodeVringStatePayload(0, 128));
  tt.ok(needsReply({ request: 8, flags: m.readUInt32LE(4), size: 8, payload: m.subarray(12), fds: [] }));
  tt.notOk(needsReply(msg(Request.SET_VRING_NUM)));
});

t.test('rangesOverlap', async (tt) => {
  tt.ok(rangesOverlap(0, 10, 9, 1));
  tt.notOk(rangesOverlap(0, 10, 10, 1));
  tt.notOk(rangesOverlap(10, 1, 0, 10));
  tt.ok(rangesOverlap(5, 1, 0, 10));
});

t.test('property: decoders throw nothing but ProtocolViolation on arbitrary input', async (tt) => {
  let accepted = 0;
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 45 }),
      fc.uint8Array({ minLength: 0, maxLength: MAX_PAYLOAD_SIZE }),
      fc.integer({ min: 0, max: 9 }),
      (request, payload, nfds) => {
        const fds = Array.from({ length: nfds }, (_, i) => 100 + i);
        try {
          const d = decodeRequest(msg(request, payload, fds));
          accepted++;
          // Whatever is accepted obeys the invariants the handlers rely on.
          if (d.kind === 'mem-table') {
            for (const r of d.table.regions) {
              if (!(r.size > 0 && Number.isSafeInteger(r.gpa + r.size) && Number.isSafeInteger(r.uva + r.size))) return false;
            }
            if (d.table.regions.length !== nfds) return false;
          }
          if (d.kind === 'vring-file' && d.file.fd !== -1 && nfds !== 1) return false;
          return true;
        } catch (err) {
          return err instanceof ProtocolViolation;
        }
      },
    ),
    { numRuns: 20000 },
  );
  tt.ok(accepted > 0, `some random messages were accepted (${accepted})`);
});

t.test('property: structured messages near the limits', async (tt) => {
  const u64 = fc.oneof(
    fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    fc.constantFrom(0n, 1n, 4096n, (1n << 53n) - 1n, 1n << 53n, (1n << 64n) - 1n, (1n << 64n) - 4096n),
  );
  const region = fc.record({ gpa: u64, size: u64, uva: u64, mmapOffset: u64 });
  fc.assert(
    fc.property(fc.array(region, { minLength: 0, maxLength: 9 }), fc.integer({ min: 0, max: 9 }), (regions, nfds) => {
      const fds = Array.from({ length: nfds }, (_, i) => 100 + i);
      for (const m of [
        msg(Request.SET_MEM_TABLE, encodeMemTablePayload(regions), fds),
        msg(Request.ADD_MEM_REG, encodeMemRegPayload(regions[0] ?? { gpa: 0, size: 0, uva: 0, mmapOffset: 0 }), fds),
      ]) {
        try {
          decodeRequest(m);
        } catch (err) {
          if (!(err instanceof ProtocolViolation)) return false;
        }
      }
      return true;
    }),
    { numRuns: 5000 },
  );
  tt.pass();
});

t.test('property: valid memory tables round-trip', async (tt) => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          pages: fc.integer({ min: 1, max: 1 << 20 }),
          gap: fc.integer({ min: 0, max: 1 << 20 }),
          off: fc.integer({ min: 0, max: 1 << 20 }),
        }),
        {
          minLength: 1,
          maxLength: 8,
        },
      ),
      (specs) => {
        let gpa = 0;
        const regions = specs.map((s, i) => {
          gpa += s.gap * 4096;
          const r = { gpa, size: s.pages * 4096, uva: 0x7f00_0000_0000 + i * 2 ** 36, mmapOffset: s.off * 4096 };
          gpa += r.size;
          return r;
        });
        const fds = regions.map((_, i) => 50 + i);
        const d = decodeMemTable(msg(Request.SET_MEM_TABLE, encodeMemTablePayload(regions), fds));
        return isDeepStrictEqual(
          d.regions,
          regions.map((r, i) => ({ ...r, fd: 50 + i })),
        );
      },
    ),
    { numRuns: 300 },
  );
  tt.pass();
});
