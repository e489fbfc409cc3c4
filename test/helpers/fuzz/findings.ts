// Switches for the fuzzer's generators that reach issue #7's known findings.
//
// Each of these generators reached a bug of issue #7 before it was fixed
// (the fuzzer found all four on seed 11). All are on, so the suite fails if
// one of the bugs returns; the table stays so a run can single one out or
// leave one out when bisecting. VUBLK_FUZZ_FINDINGS overrides
// the table for a run: "all", "none", or a comma list of keys, e.g.
//   VUBLK_FUZZ_FINDINGS=shrinking-memfd,hung-up-kick-fd
// With a switch off, the fuzzer still sends everything else of that kind
// (SET_VRING_NUM before a ring starts, memfds smaller than their region,
// pipes as call fds that never fill, ...): only the input that reaches the
// known bug is filtered out.

export const FINDINGS = {
  /**
   * #1: SET_VRING_NUM raising the size of a started ring (used-ring writes past the region).
   * With it on, the fuzzer also requires the daemon to hang up after such a message.
   */
  'num-on-running-ring': { finding: 1, enabled: true },
  /** #2: ftruncate of a memfd after it was mapped (SIGBUS on the next touch). */
  'shrinking-memfd': { finding: 2, enabled: true },
  /** #3: a blocking pipe write end that is full, as call fd (write(2) blocks the loop for good). */
  'blocking-call-fd': { finding: 3, enabled: true },
  /** #3: a kick fd that stays readable or errors (pipe whose other end hung up): the loop spins. */
  'hung-up-kick-fd': { finding: 3, enabled: true },
} as const;

export type FindingKey = keyof typeof FINDINGS;

export const FINDING_KEYS = Object.keys(FINDINGS) as FindingKey[];

/** The switches in force: the table, or VUBLK_FUZZ_FINDINGS when set. */
export function enabledFindings(spec: string | undefined = process.env.VUBLK_FUZZ_FINDINGS): Set<FindingKey> {
  if (spec === undefined || spec === '') return new Set(FINDING_KEYS.filter((k) => FINDINGS[k].enabled));
  if (spec === 'all') return new Set(FINDING_KEYS);
  if (spec === 'none') return new Set();
  const out = new Set<FindingKey>();
  for (const k of spec.split(',').map((s) => s.trim())) {
    if (!(k in FINDINGS))
      throw new Error(`VUBLK_FUZZ_FINDINGS: unknown key "${k}"; expected all, none or some of ${FINDING_KEYS.join(', ')}`);
    out.add(k as FindingKey);
  }
  return out;
}
