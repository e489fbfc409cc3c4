// Reads the shipped systemd units the way systemd would for one instance,
// so tests run vublk with the units' own ExecStart= and ListenStream=: a
// change to the units changes what the tests run.

import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../helpers/vublk-process';
import { DEFAULT_EXEC } from '../../src/cli/install-unit';

export const unitDir = path.join(repoRoot, 'systemd');

/** The value of the last `key=` line of a unit file in dir (systemd: the last assignment wins). */
export function unitValue(unitFile: string, key: string, dir = unitDir): string {
  const text = fs.readFileSync(path.join(dir, unitFile), 'utf8');
  const lines = text.split('\n').filter((l) => l.startsWith(`${key}=`));
  const last = lines[lines.length - 1];
  if (last === undefined) throw new Error(`${unitFile} has no ${key}=`);
  return last.slice(key.length + 1);
}

export interface Instance {
  /** %i */
  name: string;
  /** %t: the runtime directory (/run for system units). */
  runtimeDir: string;
  /** %S: the state directory (/var/lib). */
  stateDir: string;
  /** The variables of the EnvironmentFile. */
  env: Record<string, string>;
}

/** systemd specifier expansion for the specifiers the units use; any other one throws. */
export function expandSpecifiers(value: string, inst: Instance): string {
  return value.replace(/%(.)/g, (_m, c: string) => {
    if (c === 'i') return inst.name;
    if (c === 't') return inst.runtimeDir;
    if (c === 'S') return inst.stateDir;
    if (c === '%') return '%';
    throw new Error(`unit uses specifier %${c}, which the tests do not expand`);
  });
}

/** The socket unit's ListenStream= for this instance. */
export function listenAddress(inst: Instance): string {
  return expandSpecifiers(unitValue('vublk@.socket', 'ListenStream'), inst);
}

/**
 * ExecStart= of vublk@.service as argv, after systemd's rules: specifiers,
 * ${VAR} replaced as one word, $VAR split on whitespace. The program
 * DEFAULT_EXEC (the installed vublk) becomes this node running bin/vublk.js.
 */
export function execStartArgv(inst: Instance, vublkBin: string): string[] {
  const line = unitValue('vublk@.service', 'ExecStart');
  if (/["'\\]/.test(line)) throw new Error(`ExecStart= uses quoting the tests do not parse: ${line}`);
  const variable = (name: string) => {
    const v = inst.env[name];
    if (v === undefined) throw new Error(`ExecStart= uses $${name}, which the EnvironmentFile lacks`);
    return v;
  };
  const argv: string[] = [];
  for (const word of line.trim().split(/\s+/)) {
    const bare = /^\$([A-Za-z_][A-Za-z0-9_]*)$/.exec(word);
    if (bare) {
      argv.push(
        ...variable(bare[1]!)
          .split(/\s+/)
          .filter((w) => w !== ''),
      );
      continue;
    }
    argv.push(expandSpecifiers(word, inst).replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, n: string) => variable(n)));
  }
  if (argv[0] !== DEFAULT_EXEC) throw new Error(`ExecStart= runs ${argv[0]}, expected ${DEFAULT_EXEC}`);
  return [process.execPath, vublkBin, ...argv.slice(1)];
}

/** An EnvironmentFile as systemd reads the simple form: KEY=value or KEY="value", # comments. */
export function parseEnvironmentFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) throw new Error(`not an environment assignment: ${line}`);
    const raw = m[2]!;
    env[m[1]!] = raw.startsWith('"') && raw.endsWith('"') && raw.length >= 2 ? raw.slice(1, -1) : raw;
  }
  return env;
}
