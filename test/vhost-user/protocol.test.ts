// protocol.ts against vhost-user.rst: request codes and names, header flags,
// feature bits and size limits.
import t from 'tap';
import {
  BackendRequest,
  CONFIG_HDR_SIZE,
  Flags,
  HEADER_SIZE,
  MAX_CONFIG_SIZE,
  MAX_FDS_PER_MESSAGE,
  MAX_MEM_SLOTS,
  MAX_PAYLOAD_SIZE,
  MEMORY_BASELINE_NREGIONS,
  ProtocolFeature,
  Request,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  backendRequestName,
  featureBit,
  hasReply,
  payloadKind,
  requestName,
  requestRow,
} from '../../src/vhost-user/protocol';
import { VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/virtio/constants';

t.test('request codes match vhost-user.rst', async (tt) => {
  const spec: Record<string, number> = {
    GET_FEATURES: 1,
    SET_FEATURES: 2,
    SET_OWNER: 3,
    RESET_OWNER: 4,
    SET_MEM_TABLE: 5,
    SET_LOG_BASE: 6,
    SET_LOG_FD: 7,
    SET_VRING_NUM: 8,
    SET_VRING_ADDR: 9,
    SET_VRING_BASE: 10,
    GET_VRING_BASE: 11,
    SET_VRING_KICK: 12,
    SET_VRING_CALL: 13,
    SET_VRING_ERR: 14,
    GET_PROTOCOL_FEATURES: 15,
    SET_PROTOCOL_FEATURES: 16,
    GET_QUEUE_NUM: 17,
    SET_VRING_ENABLE: 18,
    SEND_RARP: 19,
    NET_SET_MTU: 20,
    SET_BACKEND_REQ_FD: 21,
    IOTLB_MSG: 22,
    SET_VRING_ENDIAN: 23,
    GET_CONFIG: 24,
    SET_CONFIG: 25,
    CREATE_CRYPTO_SESSION: 26,
    CLOSE_CRYPTO_SESSION: 27,
    POSTCOPY_ADVISE: 28,
    POSTCOPY_LISTEN: 29,
    POSTCOPY_END: 30,
    GET_INFLIGHT_FD: 31,
    SET_INFLIGHT_FD: 32,
    GPU_SET_SOCKET: 33,
    RESET_DEVICE: 34,
    VRING_KICK: 35,
    GET_MAX_MEM_SLOTS: 36,
    ADD_MEM_REG: 37,
    REM_MEM_REG: 38,
    SET_STATUS: 39,
    GET_STATUS: 40,
  };
  tt.same({ ...Request }, spec);
  tt.ok(Object.isFrozen(Request));
  for (let code = 1; code <= 40; code++) tt.equal(Request[requestName(code) as keyof typeof Request], code);
  tt.equal(requestName(0), 'UNKNOWN(0)');
  tt.equal(requestName(41), 'UNKNOWN(41)');
  tt.equal(requestName(-1), 'UNKNOWN(-1)');
  tt.equal(requestName(1.5), 'UNKNOWN(1.5)');
  tt.equal(BackendRequest.CONFIG_CHANGE_MSG, 2);
  tt.equal(backendRequestName(2), 'CONFIG_CHANGE_MSG');
  tt.equal(backendRequestName(99), 'UNKNOWN(99)');
});

t.test('flags, feature bits and limits', async (tt) => {
  tt.same([Flags.VERSION, Flags.VERSION_MASK, Flags.REPLY, Flags.NEED_REPLY], [1, 3, 4, 8]);
  tt.same(
    [
      ProtocolFeature.MQ,
      ProtocolFeature.LOG_SHMFD,
      ProtocolFeature.REPLY_ACK,
      ProtocolFeature.BACKEND_REQ,
      ProtocolFeature.CONFIG,
      ProtocolFeature.INFLIGHT_SHMFD,
      ProtocolFeature.CONFIGURE_MEM_SLOTS,
      ProtocolFeature.STATUS,
    ],
    [0, 1, 3, 5, 9, 12, 15, 16],
  );
  tt.equal(featureBit(VHOST_USER_F_PROTOCOL_FEATURES), 0x4000_0000n);
  tt.equal(featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS), 0x8000n);
  tt.same([HEADER_SIZE, VRING_IDX_MASK, VRING_NOFD_MASK, MEMORY_BASELINE_NREGIONS, MAX_MEM_SLOTS], [12, 0xff, 0x100, 8, 509]);
  tt.same([CONFIG_HDR_SIZE, MAX_CONFIG_SIZE, MAX_FDS_PER_MESSAGE, MAX_PAYLOAD_SIZE], [12, 256, 8, 268]);
});

t.test('one table row per request: names, payloads, fds and replies come from it', async (tt) => {
  for (const [name, code] of Object.entries(Request)) {
    tt.equal(requestRow(code)?.name, name, `row of ${code}`);
    const [min, max] = requestRow(code)?.fds ?? [-1, -1];
    tt.ok(min >= 0 && min <= max && max <= MAX_FDS_PER_MESSAGE, `${name} fds ${min}..${max}`);
  }
  tt.equal(requestRow(99), undefined);
  const replies = [
    'GET_FEATURES',
    'GET_PROTOCOL_FEATURES',
    'GET_VRING_BASE',
    'GET_QUEUE_NUM',
    'GET_CONFIG',
    'GET_MAX_MEM_SLOTS',
    'GET_INFLIGHT_FD',
    'GET_STATUS',
  ];
  for (const [name, code] of Object.entries(Request)) {
    if (requestRow(code)?.payload === 'unsupported') continue;
    tt.equal(hasReply(code), replies.includes(name), `${name} has a reply of its own`);
  }
  tt.equal(hasReply(99), false);
  tt.equal(payloadKind(Request.SET_VRING_KICK), 'vring-file');
  tt.equal(payloadKind(Request.SET_LOG_BASE), 'unsupported');
  tt.equal(payloadKind(99), 'unsupported');
  tt.same(requestRow(Request.SET_MEM_TABLE)?.fds, [1, MEMORY_BASELINE_NREGIONS]);
  tt.same(requestRow(Request.SET_VRING_CALL)?.fds, [0, 1]);
  tt.same(requestRow(Request.SET_BACKEND_REQ_FD)?.fds, [1, 1]);
});
