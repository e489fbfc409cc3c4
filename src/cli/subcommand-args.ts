// The arguments of vublk's subcommands (install-unit, bench): `--name value`
// or `--name=value`, each at most once, and bare flags; problems are UsageErrors.

import { UsageError } from '../errors';

export interface SubcommandArgs {
  values: Map<string, string>;
  flags: Set<string>;
}

/** Splits argv into option values and flags; `command` prefixes every message. */
export function parseSubcommandArgs(
  command: string,
  argv: readonly string[],
  valueOptions: readonly string[],
  flagOptions: readonly string[],
): SubcommandArgs {
  const values = new Map<string, string>();
  const flags = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (flagOptions.includes(arg)) {
      flags.add(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const key = eq < 0 ? arg : arg.slice(0, eq);
    if (!valueOptions.includes(key)) {
      throw new UsageError(`${command}: unknown argument ${JSON.stringify(arg)} (see vublk ${command} --help)`);
    }
    if (values.has(key)) throw new UsageError(`${command}: ${key} given more than once`);
    const value = eq < 0 ? argv[++i] : arg.slice(eq + 1);
    if (value === undefined) throw new UsageError(`${command}: ${key} expects a value`);
    values.set(key, value);
  }
  return { values, flags };
}
