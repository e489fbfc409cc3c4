// Promises nobody awaits. Node 20 ends the process on an unhandled
// rejection, so a fire-and-forget promise must never be left bare: a failure
// in one connection's teardown would take the daemon, and every frontend
// after it, down. background() attaches the one handler they all get: log at
// error level and go on.

import { log, type LogFields } from './log';

/** Runs p without waiting for it; a rejection is logged as "<what> failed", never unhandled. */
export function background(p: Promise<unknown>, what: string, fields: LogFields = {}): void {
  p.catch((err: unknown) => {
    log.error(`${what} failed`, { ...fields, error: err as Error });
  });
}
