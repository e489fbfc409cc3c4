// The reader over a real Unix socket and the native recvMsg: fds arrive with
// the header and are usable; too many fds are refused and none leak.

import t from 'tap';
import fs from 'node:fs';
import { native } from '../../src/native/binding';
import { connectedPair } from '../helpers/socket-pair';
import { type Message, decodeVringFile } from '../../src/vhost-user/message';
import { encodeMessage } from '../../src/vhost-user/encode';
import { encodeMemTablePayload, encodeVringFilePayload } from '../../src/frontend/encode';
import { MessageReader } from '../../src/vhost-user/message-reader';
import { Flags, Request } from '../../src/vhost-user/protocol';
import { ProtocolViolation } from '../../src/vhost-user/violation';

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

interface Pair {
  client: number;
  server: number;
  /** Closes the client end now (the teardown then leaves it alone). */
  closeClient(): void;
}

async function pair(tt: tap.Test): Promise<Pair> {
  const { client, server } = await connectedPair();
  let clientOpen = true;
  tt.teardown(() => {
    if (clientOpen) native.closeFd(client);
    native.closeFd(server);
  });
  return {
    client,
    server,
    closeClient() {
      clientOpen = false;
      native.closeFd(client);
    },
  };
}

function readerFor(fd: number): MessageReader {
  return new MessageReader({
    recv: (buf, off, len, maxFds) => native.recvMsg(fd, buf, off, len, maxFds),
    closeFd: (f) => native.closeFd(f),
  });
}

async function readOne(r: MessageReader): Promise<Message | 'eof'> {
  for (let i = 0; i < 500; i++) {
    const m = r.read();
    if (m !== 'again') return m;
    await new Promise((res) => setTimeout(res, 2));
  }
  throw new Error('no message');
}

t.test('an eventfd passed with SET_VRING_KICK is usable', async (tt) => {
  const { client, server } = await pair(tt);
  const efd = native.eventfdCreate();
  native.sendMsg(client, encodeMessage(Request.SET_VRING_KICK, Flags.VERSION, encodeVringFilePayload(0, false)), [efd], 1000);
  const m = (await readOne(readerFor(server))) as Message;
  const f = decodeVringFile(m);
  tt.not(f.fd, efd, 'a new fd number in the receiver');
  native.eventfdWrite(efd, 3);
  tt.equal(native.eventfdRead(f.fd), 3, 'same eventfd');
  native.closeFd(f.fd);
  native.closeFd(efd);
});

t.test('8 fds accepted, 9 refused, nothing leaks', async (tt) => {
  const { client, server } = await pair(tt);
  const base = openFds();
  const regions = Array.from({ length: 8 }, (_, i) => ({ gpa: i * 4096, size: 4096, uva: (i + 1) * 0x10000, mmapOffset: 0 }));
  const fds = regions.map(() => native.eventfdCreate());
  const r = readerFor(server);
  native.sendMsg(client, encodeMessage(Request.SET_MEM_TABLE, Flags.VERSION, encodeMemTablePayload(regions)), fds, 1000);
  const m = (await readOne(r)) as Message;
  tt.equal(m.fds.length, 8);
  for (const f of m.fds) native.closeFd(f);

  const nine = [...fds, native.eventfdCreate()];
  native.sendMsg(client, encodeMessage(Request.SET_MEM_TABLE, Flags.VERSION, encodeMemTablePayload(regions)), nine, 1000);
  await tt.rejects(readOne(r), /message carries more than 8 fds/);
  for (const f of nine) native.closeFd(f);
  tt.equal(openFds(), base, 'no fd left open in this process');
});

t.test('a truncated message at EOF is a violation and its fds are closed', async (tt) => {
  const p = await pair(tt);
  const { client, server } = p;
  const base = openFds();
  const efd = native.eventfdCreate();
  const whole = encodeMessage(Request.SET_VRING_CALL, Flags.VERSION, encodeVringFilePayload(1, false));
  native.sendMsg(client, whole.subarray(0, 16), [efd], 1000);
  native.closeFd(efd);
  const r = readerFor(server);
  tt.equal(r.read(), 'again');
  tt.ok(r.midMessage);
  // Closing the client: the server sees EOF.
  p.closeClient();
  let err: unknown;
  for (let i = 0; i < 100 && !err; i++) {
    try {
      if (r.read() === 'again') await new Promise((res) => setTimeout(res, 2));
    } catch (e) {
      err = e;
    }
  }
  tt.ok(err instanceof ProtocolViolation);
  tt.match((err as Error).message, /peer closed the connection after 4 of 8 SET_VRING_CALL payload bytes/);
  tt.equal(openFds(), base - 1, 'the received eventfd was closed (and the client socket)');
});
