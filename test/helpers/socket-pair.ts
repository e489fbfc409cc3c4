// A connected pair of Unix stream sockets for in-process tests: the native
// binding has no socketpair(), so a private listening socket yields one.
// The caller owns both fds.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../../src/native/binding';

export async function connectedPair(): Promise<{ client: number; server: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-pair-'));
  const sock = path.join(dir, 's');
  const lfd = native.listenUnix(sock, 1);
  try {
    const client = native.connectUnix(sock);
    let server = -1;
    for (let i = 0; i < 100 && server < 0; i++) {
      server = native.acceptUnix(lfd);
      if (server < 0) await new Promise((r) => setTimeout(r, 2));
    }
    if (server < 0) {
      native.closeFd(client);
      throw new Error('socket pair: accept did not complete');
    }
    return { client, server };
  } finally {
    native.closeFd(lfd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
