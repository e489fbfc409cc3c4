// decodeRequest: decodes a message by its request code alone (the payloadKind
// of its protocol.ts row). The daemon decodes in each handler; tests use this to check the decoders and the reader together.

import {
  type ConfigAccess,
  type Inflight,
  type MemRegionKey,
  type MemRegionWithFd,
  type MemTable,
  type Message,
  type VringAddr,
  type VringFile,
  type VringState,
  decodeAddMemReg,
  decodeBackendReqFd,
  decodeConfig,
  decodeEmpty,
  decodeGetInflight,
  decodeMemTable,
  decodeRemMemReg,
  decodeSetInflight,
  decodeU64,
  decodeVringAddr,
  decodeVringFile,
  decodeVringState,
} from '../../src/vhost-user/message';
import { Request, payloadKind } from '../../src/vhost-user/protocol';

export type DecodedRequest =
  | { kind: 'none' }
  | { kind: 'u64'; value: bigint }
  | { kind: 'vring-state'; state: VringState }
  | { kind: 'vring-addr'; addr: VringAddr }
  | { kind: 'mem-table'; table: MemTable }
  | { kind: 'add-mem-reg'; region: MemRegionWithFd }
  | { kind: 'rem-mem-reg'; region: MemRegionKey }
  | { kind: 'vring-file'; file: VringFile }
  | { kind: 'config'; config: ConfigAccess }
  | { kind: 'backend-fd'; fd: number }
  | { kind: 'inflight'; inflight: Inflight }
  | { kind: 'unsupported' };

/**
 * Decodes msg's payload according to its request code. 'unsupported'
 * requests are returned undecoded (their size was already capped by the
 * reader); the handler decides whether to refuse them or break the session.
 */
export function decodeRequest(msg: Message): DecodedRequest {
  switch (payloadKind(msg.request)) {
    case 'none':
      decodeEmpty(msg);
      return { kind: 'none' };
    case 'u64':
      return { kind: 'u64', value: decodeU64(msg) };
    case 'vring-state':
      return { kind: 'vring-state', state: decodeVringState(msg) };
    case 'vring-addr':
      return { kind: 'vring-addr', addr: decodeVringAddr(msg) };
    case 'mem-table':
      return { kind: 'mem-table', table: decodeMemTable(msg) };
    case 'add-mem-reg':
      return { kind: 'add-mem-reg', region: decodeAddMemReg(msg) };
    case 'rem-mem-reg':
      return { kind: 'rem-mem-reg', region: decodeRemMemReg(msg) };
    case 'vring-file':
      return { kind: 'vring-file', file: decodeVringFile(msg) };
    case 'config':
      return { kind: 'config', config: decodeConfig(msg) };
    case 'backend-fd':
      return { kind: 'backend-fd', fd: decodeBackendReqFd(msg) };
    case 'inflight':
      return { kind: 'inflight', inflight: msg.request === Request.GET_INFLIGHT_FD ? decodeGetInflight(msg) : decodeSetInflight(msg) };
    case 'unsupported':
      return { kind: 'unsupported' };
  }
}
