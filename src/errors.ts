// Every error class vublk throws on purpose, each with a stable `code`.
//
// Two channels, never mixed: a ProtocolViolation breaks the
// connection it happened on; a failed guest request never throws, it becomes
// a virtio status byte (src/blk/status.ts).

export type VublkErrorCode = 'E_USAGE' | 'E_DISK' | 'E_LOCK' | 'E_SOCKET' | 'E_STATE' | 'E_PROTOCOL';

/** Details of a failed system call, when there was one. */
export interface SyscallDetails {
  /** Positive errno value (e.g. 2 for ENOENT). */
  errno?: number;
  /** Name of the failed call, e.g. "open" or "statx". */
  syscall?: string;
  /** The file the call was about. */
  path?: string;
  cause?: unknown;
}

export abstract class VublkError extends Error {
  abstract readonly code: VublkErrorCode;

  constructor(message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
  }
}

/** A bad command line. The message is one line naming the option and the problem. */
export class UsageError extends VublkError {
  readonly code = 'E_USAGE' as const;
}

/** An error about a system resource, with the failed call's details when there was one. */
abstract class SyscallError extends VublkError {
  readonly errno: number | undefined;
  readonly syscall: string | undefined;
  readonly path: string | undefined;

  constructor(message: string, details: SyscallDetails = {}) {
    super(message, details.cause);
    this.errno = details.errno;
    this.syscall = details.syscall;
    this.path = details.path;
  }
}

/** The host disk cannot be opened, probed or used. */
export class DiskError extends SyscallError {
  readonly code = 'E_DISK' as const;
}

/** Another process uses the image in a way vublk's use conflicts with (src/disk/image-lock.ts). */
export class ImageLockError extends SyscallError {
  readonly code = 'E_LOCK' as const;
}

/** The listening socket cannot be created, bound or accepted on. */
export class SocketError extends SyscallError {
  readonly code = 'E_SOCKET' as const;
}

/** The state file (the write cache mode kept across restarts) cannot be read, is invalid, or cannot be written. */
export class StateFileError extends SyscallError {
  readonly code = 'E_STATE' as const;
}

/**
 * The frontend or the guest broke a protocol rule. The connection is marked
 * broken, the violation is logged once and the connection is closed; the
 * daemon keeps serving. `rule` names the rule that broke.
 */
export class ProtocolViolation extends VublkError {
  readonly code = 'E_PROTOCOL' as const;
  readonly rule: string;

  constructor(rule: string, cause?: unknown) {
    super(rule, cause);
    this.rule = rule;
  }
}

/** True for any error thrown on purpose by vublk (as opposed to a bug). */
export function isVublkError(err: unknown): err is VublkError {
  return err instanceof VublkError;
}
