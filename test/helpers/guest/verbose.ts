// VUBLK_E2E_VERBOSE=1 streams the e2e guest's and backends' output lines to
// stderr as they come (by default they only appear in a failed assertion).

/** With VUBLK_E2E_VERBOSE=1: streams guest and backend output lines to stderr. */
export const e2eLog: ((line: string) => void) | undefined = process.env.VUBLK_E2E_VERBOSE
  ? (l: string): void => void process.stderr.write(`${l}\n`)
  : undefined;
