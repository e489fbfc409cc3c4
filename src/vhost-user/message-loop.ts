// The message loop of one connection: reads messages while the socket has
// them, dispatches each to its handler, waits for a handler that waits, acks.
//
// Ownership of fds: the holder of a Message owns msg.fds. A handler takes
// the ones it hands on (setting the entry to -1 or emptying the list);
// whatever is left is closed here once the handler returned or settled.

import { native } from '../native/binding';
import { log } from '../log';
import { background } from '../background';
import { ProtocolViolation } from '../errors';
import type { MessageReader } from './message-reader';
import type { FrontendChannel } from './frontend-channel';
import type { Message } from './message';
import { requestName } from './protocol';
import { violation } from './violation';

export type Handler = (msg: Message) => void | Promise<void>;

/** A handler's wait ended after the connection began closing: it stops there, silently. */
export class ConnectionClosing extends Error {}

/** The connection, as its message loop sees it. */
export interface LoopHost {
  readonly id: number;
  /** Broken or closing: nothing more is read or answered. */
  stopped(): boolean;
  /** The handler of a request code, if the connection serves it. */
  handler(request: number): Handler | undefined;
  /** Sends the REPLY_ACK the message asked for, if any. */
  ack(msg: Message): void;
  breakConnection(rule: string): void;
  closeSoon(reason: string): void;
}

export class MessageLoop {
  /** A handler is waiting: no message is read until it settles. */
  private busy = false;

  constructor(
    private readonly reader: MessageReader,
    private readonly channel: FrontendChannel,
    private readonly host: LoopHost,
  ) {}

  /** Reads and handles messages until the socket would block or a handler waits. */
  pump(): void {
    if (this.busy || this.host.stopped()) return;
    for (;;) {
      let msg: Message | 'again' | 'eof';
      try {
        msg = this.reader.read();
      } catch (err) {
        this.host.breakConnection(describe(err));
        return;
      }
      if (msg === 'again') return;
      if (msg === 'eof') {
        this.host.closeSoon('frontend disconnected');
        return;
      }
      let result: void | Promise<void>;
      try {
        result = this.dispatch(msg);
      } catch (err) {
        closeAll(msg.fds);
        this.host.breakConnection(ruleFor(msg.request, err));
        return;
      }
      if (result instanceof Promise) {
        // Wait (e.g. for in-flight I/O to drain); the frontend waits for our reply.
        this.busy = true;
        this.channel.setWaiting(true);
        const m = msg;
        const done = result.then(
          () => {
            this.busy = false;
            closeAll(m.fds); // whatever the handler did not hand on
            if (this.host.stopped()) return;
            this.host.ack(m);
            if (this.host.stopped()) return;
            this.channel.setWaiting(false);
            this.pump();
          },
          (err: unknown) => {
            this.busy = false;
            closeAll(m.fds);
            if (err instanceof ConnectionClosing) return;
            this.host.breakConnection(ruleFor(m.request, err));
          },
        );
        background(done, 'finishing a message', { conn: this.host.id, request: requestName(m.request) });
        return;
      }
      this.host.ack(msg);
      if (this.host.stopped()) return;
    }
  }

  private dispatch(msg: Message): void | Promise<void> {
    const handle = this.host.handler(msg.request);
    if (handle === undefined) throw violation(`unknown or unsupported request ${msg.request}`);
    log.debug('message', { conn: this.host.id, request: requestName(msg.request), size: msg.size, fds: msg.fds.length });
    const result = handle(msg);
    // Whatever fds a handler did not hand on are closed here.
    if (!(result instanceof Promise)) closeAll(msg.fds);
    return result;
  }
}

export function closeAll(fds: number[]): void {
  for (const f of fds) if (f >= 0) native.closeFd(f);
  fds.length = 0;
}

/** The rule a failed message broke, named after the message once. */
function ruleFor(request: number, err: unknown): string {
  const name = requestName(request);
  const text = describe(err);
  return text.startsWith(name) ? text : `${name}: ${text}`;
}

export function describe(err: unknown): string {
  if (err instanceof ProtocolViolation) return err.rule;
  if (err instanceof Error) return err.message;
  return String(err);
}
