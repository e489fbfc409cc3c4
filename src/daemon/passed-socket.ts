// A listening socket handed to vublk instead of one it binds itself: by
// systemd's socket activation (LISTEN_PID/LISTEN_FDS, sd_listen_fds(3)) or by
// any supervisor with --socket-fd N. The supervisor owns the socket's address:
// vublk serves the fd, never binds or unlinks that path, and at stop just
// closes its copy, so the socket keeps listening while vublk restarts.

import { native } from '../native/binding';
import { SocketError } from '../errors';
import { log } from '../log';

/** sd_listen_fds(3): passed fds start at 3 (SD_LISTEN_FDS_START). */
export const SD_LISTEN_FDS_START = 3;

export interface PassedSocket {
  fd: number;
  /** The address it is bound to: a path, "@name" (abstract), or "fd N" when unbound. */
  name: string;
  /** Who passed it, for logs: "systemd (LISTEN_FDS)" or "--socket-fd N". */
  source: string;
}

/**
 * The fds systemd passed to this process, or 0. Follows sd_listen_fds(3):
 * only when LISTEN_PID is our pid; the LISTEN_* variables are removed from
 * the environment either way so nothing vublk starts inherits them.
 */
export function systemdListenFds(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number {
  const listenPid = env.LISTEN_PID;
  const listenFds = env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (listenPid === undefined || listenFds === undefined) return 0;
  if (listenPid !== String(pid)) {
    log.debug('LISTEN_FDS is meant for another process; ignored', { listenPid, pid });
    return 0;
  }
  const n = /^[0-9]{1,4}$/.test(listenFds) ? Number(listenFds) : NaN;
  if (!Number.isInteger(n)) {
    throw new SocketError(`LISTEN_FDS expects a number of passed file descriptors, got ${JSON.stringify(listenFds)}`);
  }
  return n;
}

/** Checks fd is a listening Unix stream socket and takes it over; throws a SocketError saying what it is not. */
export function adoptListeningSocket(fd: number, source: string): PassedSocket {
  let info: ReturnType<typeof native.socketInfo>;
  try {
    info = native.socketInfo(fd);
  } catch (err) {
    const code = (err as { code?: string }).code;
    const what =
      code === 'EBADF' ? 'is not open' : code === 'ENOTSOCK' ? 'is not a socket' : `cannot be inspected (${code ?? String(err)})`;
    throw new SocketError(`${source}: fd ${fd} ${what}; expected a listening Unix stream socket`, { cause: err });
  }
  const wrong = !info.unix
    ? 'is not a Unix socket'
    : !info.stream
      ? 'is not a stream (SOCK_STREAM) socket'
      : !info.listening
        ? 'is not listening (listen(2) was not called on it)'
        : undefined;
  if (wrong !== undefined) {
    throw new SocketError(`${source}: fd ${fd} ${wrong}; expected a listening Unix stream socket`, { path: info.address || undefined });
  }
  native.adoptFd(fd);
  return { fd, name: info.address === '' ? `fd ${fd}` : info.address, source };
}

/**
 * The socket to serve when one was passed: --socket-fd, else systemd's first
 * passed fd; undefined when vublk should bind --socket itself. `socketGiven`
 * (an explicit --socket) is refused with either: the supervisor owns the
 * address, and two names for one socket would only disagree one day.
 */
export function passedSocket(
  socketFd: number | undefined,
  socketGiven: boolean,
  env: NodeJS.ProcessEnv = process.env,
): PassedSocket | undefined {
  const systemdFds = systemdListenFds(env);
  if (socketFd !== undefined) {
    // parseOptions refuses --socket together with --socket-fd.
    if (systemdFds > 0) log.warn('both --socket-fd and LISTEN_FDS are set; serving --socket-fd', { socketFd });
    return adoptListeningSocket(socketFd, `--socket-fd ${socketFd}`);
  }
  if (systemdFds === 0) return undefined;
  if (socketGiven) {
    throw new SocketError(
      '--socket is set but systemd passed a listening socket (LISTEN_FDS): the socket unit owns the address; remove --socket',
    );
  }
  if (systemdFds > 1) log.warn('systemd passed more than one socket; serving the first', { count: systemdFds });
  return adoptListeningSocket(SD_LISTEN_FDS_START, 'systemd (LISTEN_FDS)');
}
