// Tiny line logger: `vublk: <level>: <message> key=value ...` on stderr.
// One line per call, whatever the message or values contain. No dependencies.

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export type LogFields = Record<string, unknown>;
export type LogSink = (line: string) => void;

const stderrSink: LogSink = (line) => {
  process.stderr.write(line);
};

let threshold = RANK.info;
let sink: LogSink = stderrSink;

export function isLogLevel(value: string): value is LogLevel {
  return Object.prototype.hasOwnProperty.call(RANK, value);
}

/** Messages above `level` (error < warn < info < debug) are dropped. */
export function setLogLevel(level: LogLevel): void {
  if (!isLogLevel(level)) throw new RangeError(`unknown log level "${String(level)}"`);
  threshold = RANK[level];
}

export function getLogLevel(): LogLevel {
  return LOG_LEVELS[threshold] ?? 'info';
}

/** Cheap guard for callers that would otherwise build fields for nothing. */
export function isLevelEnabled(level: LogLevel): boolean {
  return RANK[level] <= threshold;
}

/** Redirect output (tests). `undefined` restores stderr. Each line ends with "\n". */
export function setLogSink(next: LogSink | undefined): void {
  sink = next ?? stderrSink;
}

const BARE = /^[A-Za-z0-9_.:/@+,-]+$/;

function escapeLine(text: string): string {
  // Keep one record per line: control characters are written escaped.
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    if (c === '\t') return '\\t';
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
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
    const json = JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    return json === undefined ? String(value) : json;
  } catch {
    return JSON.stringify(String(value));
  }
}

/** The line `write` would emit, without the trailing newline. Exported for tests. */
export function formatLine(level: LogLevel, msg: string, fields?: LogFields): string {
  let line = `vublk: ${level}: ${msg}`;
  if (fields !== undefined) {
    for (const key of Object.keys(fields)) line += ` ${key}=${formatValue(fields[key])}`;
  }
  return escapeLine(line);
}

function write(level: LogLevel, msg: string, fields?: LogFields): void {
  if (RANK[level] > threshold) return;
  sink(formatLine(level, msg, fields) + '\n');
}

export const log = {
  error(msg: string, fields?: LogFields): void {
    write('error', msg, fields);
  },
  warn(msg: string, fields?: LogFields): void {
    write('warn', msg, fields);
  },
  info(msg: string, fields?: LogFields): void {
    write('info', msg, fields);
  },
  debug(msg: string, fields?: LogFields): void {
    write('debug', msg, fields);
  },
};
