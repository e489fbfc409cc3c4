// CPU time a process has used, from /proc/PID/stat: `vublk bench --backend-pid`
// reports the backend's CPU per I/O from two samples around the run.
import fs from 'node:fs';

/**
 * USER_HZ: the unit of utime/stime in /proc/PID/stat. The kernel fixes it at
 * 100 for user space on every architecture Linux runs vublk on.
 */
const USER_HZ = 100;

/** User + system CPU seconds of process pid (all its threads). */
export function processCpuSeconds(pid: number, procRoot = '/proc'): number {
  const text = fs.readFileSync(`${procRoot}/${pid}/stat`, 'utf8');
  return cpuSecondsFromStat(text);
}

/** Parses utime + stime from one /proc/PID/stat line; comm may hold spaces and parentheses. */
export function cpuSecondsFromStat(stat: string): number {
  const close = stat.lastIndexOf(')');
  if (close < 0) throw new Error('not a /proc/PID/stat line: no ")" after the command name');
  // After "pid (comm) ", field 3 (state) is index 0: utime is field 14, stime field 15.
  const f = stat
    .slice(close + 2)
    .trim()
    .split(/\s+/);
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error('not a /proc/PID/stat line: utime/stime missing');
  return (utime + stime) / USER_HZ;
}
