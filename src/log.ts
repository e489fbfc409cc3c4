// The daemon's logger: one pino instance, one record per call, written
// synchronously (nothing is lost on process.exit or a crash path) to stderr or
// to a test sink, as a text line or a JSON line:
//
//   text  vublk: info: serving disk=/srv/a.img queues=2 ...
//   json  {"level":"info","time":1700000000000,"msg":"serving","disk":"/srv/a.img","queues":2,...}
//
// When stderr is journald's stream (JOURNAL_STREAM), each line starts with
// its syslog priority (<6> for info) and JSON lines carry no time: journald
// stamps entries itself.
//
// Text lines come out of pino too: the destination below asks pino for each
// record's metadata (level, message, the caller's fields object; the hook
// pino.multistream uses) and renders formatLine from those instead of the
// JSON pino serialised, so values keep their text rendering (an Error as
// "CODE: message", undefined as undefined). In text mode pino is given no
// fields to serialise (formatters.log returns {}), so nothing is done twice.

import pino, { type Logger } from 'pino';
import { formatLine, journalPrefix, jsonFields, stderrIsJournal, type LogFields, type LogLevel } from './log-format';

export { formatLine, type LogFields, type LogLevel } from './log-format';

export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

export type LogFormat = 'text' | 'json';
export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

export type LogSink = (line: string) => void;

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

export function isLogFormat(value: string): value is LogFormat {
  return (LOG_FORMATS as readonly string[]).includes(value);
}

/** pino's level numbers (its defaults) back to our names. */
const LEVEL_BY_NUMBER = new Map<number, LogLevel>(LOG_LEVELS.map((l) => [pino.levels.values[l]!, l]));

let stderrStream: pino.DestinationStream | undefined;
const stderrSink: LogSink = (line) => {
  stderrStream ??= pino.destination({ fd: 2, sync: true });
  stderrStream.write(line);
};

let sink: LogSink = stderrSink;
let format: LogFormat = 'text';
/** undefined until the first logger is built: stderr is looked at then. */
let journal: boolean | undefined;

const destination = {
  [pino.symbols.needsMetadataGsym]: true as const,
  lastLevel: 0,
  lastMsg: '',
  lastObj: {} as object,
  write(record: string): void {
    const level = LEVEL_BY_NUMBER.get(this.lastLevel) ?? 'error';
    const line = format === 'json' ? record : formatLine(level, this.lastMsg, this.lastObj as LogFields) + '\n';
    sink(journal === true ? journalPrefix(level) + line : line);
  },
};

const NO_FIELDS: LogFields = Object.freeze({});

function build(level: LogLevel): Logger<never> {
  journal ??= stderrIsJournal();
  const json = format === 'json';
  return pino(
    {
      level,
      base: null, // no pid/hostname: one daemon per disk, and journald records _PID itself
      timestamp: json && !journal,
      formatters: {
        level: (label) => ({ level: label }),
        log: json ? jsonFields : () => NO_FIELDS,
      },
      // jsonFields already rendered errors; pino's err serializer would redo it (with the stack).
      serializers: { err: (v: unknown) => v },
    },
    destination,
  );
}

let logger: Logger<never> | undefined;

function current(): Logger<never> {
  logger ??= build('info');
  return logger;
}

/** Messages above `level` (error < warn < info < debug) are dropped. */
export function setLogLevel(level: LogLevel): void {
  if (!isLogLevel(level)) throw new RangeError(`unknown log level "${String(level)}"`);
  current().level = level;
}

export function getLogLevel(): LogLevel {
  return current().level as LogLevel;
}

/**
 * Text or JSON lines from now on. `journald` (default: whether stderr is
 * journald's stream) adds the priority prefix and drops JSON's time.
 */
export function setLogFormat(next: LogFormat, journald: boolean = stderrIsJournal()): void {
  if (!isLogFormat(next)) throw new RangeError(`unknown log format "${String(next)}"`);
  const level = getLogLevel();
  format = next;
  journal = journald;
  logger = build(level);
}

export function getLogFormat(): LogFormat {
  return format;
}

/** Cheap guard for callers that would otherwise build fields for nothing. */
export function isLevelEnabled(level: LogLevel): boolean {
  return current().isLevelEnabled(level);
}

/** Redirect output (tests). `undefined` restores stderr. Each line ends with "\n". */
export function setLogSink(next: LogSink | undefined): void {
  sink = next ?? stderrSink;
}

// pino's order is (fields, message); with no further arguments it does not
// read the message as a printf format, so a "%" in it is written as is.
export const log = {
  error(msg: string, fields?: LogFields): void {
    current().error(fields ?? NO_FIELDS, msg);
  },
  warn(msg: string, fields?: LogFields): void {
    current().warn(fields ?? NO_FIELDS, msg);
  },
  info(msg: string, fields?: LogFields): void {
    current().info(fields ?? NO_FIELDS, msg);
  },
  debug(msg: string, fields?: LogFields): void {
    current().debug(fields ?? NO_FIELDS, msg);
  },
};

/**
 * The error line log.error(msg, fields) would write now (format, journald
 * prefix and all), without writing it: for text handed to code that writes
 * it later where the logger cannot (native.exitDeadline).
 */
export function renderErrorLine(msg: string, fields?: LogFields): string {
  const saved = sink;
  let out = '';
  sink = (line) => (out += line);
  try {
    log.error(msg, fields);
  } finally {
    sink = saved;
  }
  return out;
}
