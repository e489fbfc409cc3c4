// What vublk tells its service manager (sd_notify(3), Type=notify units):
// READY=1 once the disk is open and the socket is served, a STATUS= line per
// change (waiting / serving conn N / draining conn N), WATCHDOG=1 from the
// main event loop at half WATCHDOG_USEC (a stuck loop stops the pings and
// systemd restarts vublk), STOPPING=1 at shutdown. Without NOTIFY_SOCKET
// every call here does nothing.

import { native } from '../native/binding';
import { log } from '../log';
import type { VhostUserServer } from './server';

export interface ServiceNotifier {
  /** Shutdown has begun: STOPPING=1, the watchdog stops. */
  stopping(): void;
}

const NOTHING: ServiceNotifier = { stopping() {} };

/** The watchdog interval in ms (half of WATCHDOG_USEC), or undefined when no watchdog is asked of this process. */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid = process.pid): number | undefined {
  const usec = env.WATCHDOG_USEC;
  if (usec === undefined || usec === '') return undefined;
  // sd_watchdog_enabled(3): WATCHDOG_PID, when set, names the process meant.
  if (env.WATCHDOG_PID !== undefined && env.WATCHDOG_PID !== String(pid)) return undefined;
  const n = /^[0-9]{1,15}$/.test(usec) ? Number(usec) : 0;
  if (n <= 0) {
    log.warn('WATCHDOG_USEC expects a positive number of microseconds; no watchdog pings', { got: usec });
    return undefined;
  }
  return Math.max(1, Math.floor(n / 2000));
}

/**
 * Starts notifying: READY=1 now (call once the server is serving), STATUS=
 * on every connection change, WATCHDOG=1 when asked for.
 */
export function notifyService(server: VhostUserServer, env: NodeJS.ProcessEnv = process.env): ServiceNotifier {
  const address = env.NOTIFY_SOCKET;
  if (address === undefined || address === '') return NOTHING;
  if (!address.startsWith('/') && !address.startsWith('@')) {
    log.warn('NOTIFY_SOCKET is neither a path nor an abstract name ("@..."); not notifying', { address });
    return NOTHING;
  }
  let failed = false;
  const send = (message: string) => {
    try {
      native.sdNotify(address, message);
    } catch (err) {
      // Once: a manager that went away would otherwise fill the log.
      if (!failed) log.warn('cannot notify the service manager', { address, error: err as Error });
      failed = true;
    }
  };
  let stopping = false;
  const waiting = `waiting for a frontend on ${server.socketPath}`;

  const opened = server.onConnectionOpened;
  server.onConnectionOpened = (conn) => {
    opened?.(conn);
    send(`STATUS=serving conn ${conn}`);
  };
  const closed = server.onConnectionClosed;
  server.onConnectionClosed = (conn) => {
    closed?.(conn);
    if (!stopping) send(`STATUS=${waiting} (conn ${conn} closed)`);
  };

  const intervalMs = watchdogIntervalMs(env);
  const timer = intervalMs === undefined ? undefined : setInterval(() => send('WATCHDOG=1'), intervalMs);
  // The pings must never keep a stopping daemon alive.
  timer?.unref();
  send(`READY=1\nSTATUS=${waiting}`);
  if (intervalMs !== undefined) log.debug('watchdog pings', { intervalMs });

  return {
    stopping() {
      if (stopping) return;
      stopping = true;
      if (timer !== undefined) clearInterval(timer);
      const conn = server.connection?.id;
      send(`STOPPING=1\nSTATUS=${conn === undefined ? 'shutting down' : `draining conn ${conn}`}`);
    },
  };
}
