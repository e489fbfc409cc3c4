// The listening socket. It outlives frontends: one connection is served at a
// time; the next waits in the backlog until the current one has drained and
// released its memory, then is accepted. The socket is vublk's own (bound
// at start, unlinked at stop) or passed by a supervisor (passed-socket.ts):
// then it is only served, and closing vublk's copy leaves it listening.

import fs from 'node:fs';
import { native } from '../native/binding';
import { BackendConnection } from '../vhost-user/backend-connection';
import type { VhostUserBackend } from '../vhost-user/backend';
import { SocketError } from '../errors';
import { log } from '../log';
import type { PassedSocket } from './passed-socket';

const BACKLOG = 16;

/** Refuses a live socket; removes a stale one (nobody listening). */
export function claimSocketPath(socketPath: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) {
    throw new SocketError(`socket path ${socketPath} exists and is not a socket`, { path: socketPath });
  }
  let fd = -1;
  try {
    fd = native.connectUnix(socketPath);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ECONNREFUSED') {
      fs.unlinkSync(socketPath);
      return;
    }
    throw new SocketError(`cannot check socket path ${socketPath}: ${code ?? String(err)}`, { path: socketPath });
  }
  native.closeFd(fd);
  throw new SocketError(`socket path ${socketPath} is in use by another process`, { path: socketPath });
}

export class VhostUserServer {
  private listenFd = -1;
  private watcher: InstanceType<typeof native.FdWatcher> | undefined;
  private active: BackendConnection | undefined;
  private nextId = 1;
  private stopping = false;
  /** Called after each connection has closed (tests and metrics use it). */
  onConnectionClosed: ((conn: number) => void) | undefined;
  /** Called when a frontend has been accepted and is being served. */
  onConnectionOpened: ((conn: number) => void) | undefined;

  /** socketPath: the path to bind, or the passed socket's name (for logs). */
  constructor(
    readonly socketPath: string,
    private readonly device: VhostUserBackend,
    private readonly passed?: PassedSocket,
  ) {}

  start(): void {
    if (this.passed !== undefined) {
      this.listenFd = this.passed.fd;
      this.watch();
      return;
    }
    claimSocketPath(this.socketPath);
    try {
      this.listenFd = native.listenUnix(this.socketPath, BACKLOG);
    } catch (err) {
      const code = (err as { code?: string }).code ?? String(err);
      throw new SocketError(`cannot listen on socket ${this.socketPath}: ${code}`, { path: this.socketPath });
    }
    this.watch();
  }

  private watch(): void {
    this.watcher = new native.FdWatcher(this.listenFd, () => this.acceptNext());
    this.watcher.start();
  }

  get connection(): BackendConnection | undefined {
    return this.active;
  }

  private acceptNext(): void {
    if (this.stopping || this.active !== undefined) return;
    let fd: number;
    try {
      fd = native.acceptUnix(this.listenFd);
    } catch (err) {
      log.warn('accept failed', { error: err as Error });
      return;
    }
    if (fd < 0) return;
    const id = this.nextId++;
    log.info('frontend connected', { conn: id });
    // Stop watching while this one is served: the next frontend waits.
    this.watcher?.stop();
    try {
      this.active = new BackendConnection(fd, id, this.device, () => this.connectionClosed(id));
      this.onConnectionOpened?.(id);
    } catch (err) {
      native.closeFd(fd);
      log.error('cannot set up connection', { conn: id, error: err as Error });
      this.watcher?.start();
    }
  }

  private connectionClosed(id: number): void {
    this.active = undefined;
    this.onConnectionClosed?.(id);
    if (this.stopping) return;
    this.watcher?.start();
    this.acceptNext();
  }

  /** Stops accepting, drains and closes the connection, removes the socket (unless it was passed). */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.listenFd >= 0) native.closeFd(this.listenFd);
    this.listenFd = -1;
    try {
      if (this.passed === undefined) fs.unlinkSync(this.socketPath);
    } catch {
      // already gone
    }
    if (this.active) await this.active.close('daemon shutting down', true);
  }
}
