// How one log record is rendered: the text line (`vublk: <level>: <message>
// key=value ...`), the fields of a JSON line, and the journald priority
// prefix. Pure functions; src/log.ts owns the logger and the output.

import fs from 'node:fs';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type LogFields = Record<string, unknown>;

const BARE = /^[A-Za-z0-9_.:/@+,-]+$/;

function escapeLine(text: string): string {
  // Keep one record per line: control characters are written escaped.
  // eslint-disable-next-line no-control-regex -- matching control characters is the point: they get escaped
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    if (c === '\t') return '\\t';
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}

function bigintAsString(_key: string, v: unknown): unknown {
  return typeof v === 'bigint' ? v.toString() : v;
}

function formatValue(value: unknown): string {
  switch (typeof value) {
    case 'number':
    case 'bigint':
    case 'boolean':
      return String(value);
    case 'undefined':
      return 'undefined';
    case 'string':
      return value !== '' && BARE.test(value) ? value : JSON.stringify(value);
    case 'symbol':
      return value.toString();
    case 'function':
      return Function.prototype.toString.call(value);
    default:
      break;
  }
  if (value === null) return 'null';
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    const text = typeof code === 'string' ? `${code}: ${value.message}` : value.message;
    return JSON.stringify(text);
  }
  try {
    const json = JSON.stringify(value, bigintAsString);
    // An object JSON cannot render (a cycle, a throwing toJSON): its tag.
    return json === undefined ? Object.prototype.toString.call(value) : json;
  } catch {
    return JSON.stringify(Object.prototype.toString.call(value));
  }
}

/** The text line for one record, without the trailing newline. */
export function formatLine(level: LogLevel, msg: string, fields?: LogFields): string {
  let line = `vublk: ${level}: ${msg}`;
  if (fields !== undefined) {
    for (const key of Object.keys(fields)) line += ` ${key}=${formatValue(fields[key])}`;
  }
  return escapeLine(line);
}

/** Keys a JSON line uses for the record itself; a field of the same name gets a "_" suffix. */
const RECORD_KEYS = new Set(['level', 'msg', 'time']);

/** An error as JSON: its message and, when present, the {code, errno, syscall} of VublkError and native errors. */
function errorAsJson(err: Error): LogFields {
  const out: LogFields = { message: err.message };
  const extra = err as Error & { code?: unknown; errno?: unknown; syscall?: unknown };
  if (extra.code !== undefined) out.code = extra.code;
  if (extra.errno !== undefined) out.errno = extra.errno;
  if (extra.syscall !== undefined) out.syscall = extra.syscall;
  return out;
}

function errorsAndBigints(_key: string, v: unknown): unknown {
  if (v instanceof Error) return errorAsJson(v);
  return bigintAsString(_key, v);
}

function jsonValue(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return errorAsJson(value);
  if (typeof value !== 'object' || value === null) return value;
  try {
    return JSON.parse(JSON.stringify(value, errorsAndBigints)) as unknown;
  } catch {
    // A cycle: pino's safe stringifier writes it with "[Circular]".
    return value;
  }
}

/**
 * The fields of a JSON line, flat beside level/msg/time: errors become
 * {message, code, ...}, bigints decimal strings (a JSON number would lose
 * precision past 2^53), fields that are undefined are left out.
 */
export function jsonFields(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const key of Object.keys(fields)) {
    out[RECORD_KEYS.has(key) ? `${key}_` : key] = jsonValue(fields[key]);
  }
  return out;
}

const PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

/** The sd-daemon(3) prefix journald turns into the entry's PRIORITY (syslog levels). */
export function journalPrefix(level: LogLevel): string {
  return `<${PRIORITY[level]}>`;
}

/**
 * Whether `journalStream` (the JOURNAL_STREAM variable, "DEVICE:INODE" in
 * decimal, systemd.exec(5)) names the file `st` describes. systemd sets it
 * when it connects stdout/stderr to journald; children inherit the variable
 * even when their stderr goes elsewhere, hence the comparison.
 */
export function isJournalStream(journalStream: string | undefined, st: { dev: bigint; ino: bigint }): boolean {
  const m = /^([0-9]+):([0-9]+)$/.exec(journalStream ?? '');
  return m !== null && BigInt(m[1]!) === st.dev && BigInt(m[2]!) === st.ino;
}

/** Whether this process's stderr is connected to journald. */
export function stderrIsJournal(): boolean {
  if (process.env.JOURNAL_STREAM === undefined) return false;
  try {
    return isJournalStream(process.env.JOURNAL_STREAM, fs.fstatSync(2, { bigint: true }));
  } catch {
    return false;
  }
}
