// Protocol violations raised by the vhost-user codec.
//
// The class lives in src/errors.ts with every other error class. Its `rule`
// (and message) is one sentence naming the rule that broke and the values
// that broke it, e.g. "SET_VRING_NUM payload is 4 bytes, expected 8".
// Everything in src/vhost-user/ creates violations through `violation()`.

import { ProtocolViolation } from '../errors';

export { ProtocolViolation };

/** Creates (does not throw) a violation described by `rule`. */
export function violation(rule: string): ProtocolViolation {
  return new ProtocolViolation(rule);
}
