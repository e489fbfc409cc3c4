// bench/compare.ts's arithmetic and output: the median of each backend's
// rounds per row, the ratios of the table, and that table in Markdown.

export const BACKENDS = ['vublk', 'qsd', 'fio'] as const;
export type Backend = (typeof BACKENDS)[number];

/** One run of one backend: IOPS, latency (us) and CPU per I/O (us; the backend's, or fio's own). */
export interface Sample {
  iops: number;
  p50: number;
  p99: number;
  p999: number;
  cpuUsPerIo: number;
}

export interface RowResult {
  id: string;
  label: string;
  samples: Record<Backend, Sample[]>;
  medians: Record<Backend, Sample | undefined>;
  ratios: {
    vublkQsdIops: number;
    vublkFioIops: number;
    cpuVublkFio: number;
    cpuQsdFio: number;
  };
}

export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Field by field median of samples (undefined when there are none). */
export function medianSample(samples: readonly Sample[]): Sample | undefined {
  if (samples.length === 0) return undefined;
  const of = (k: keyof Sample): number => median(samples.map((s) => s[k]));
  return { iops: of('iops'), p50: of('p50'), p99: of('p99'), p999: of('p999'), cpuUsPerIo: of('cpuUsPerIo') };
}

export function rowResult(id: string, label: string, samples: Record<Backend, Sample[]>): RowResult {
  const medians = { vublk: medianSample(samples.vublk), qsd: medianSample(samples.qsd), fio: medianSample(samples.fio) };
  const ratio = (a: number | undefined, b: number | undefined): number => (a !== undefined && b !== undefined && b > 0 ? a / b : NaN);
  return {
    id,
    label,
    samples,
    medians,
    ratios: {
      vublkQsdIops: ratio(medians.vublk?.iops, medians.qsd?.iops),
      vublkFioIops: ratio(medians.vublk?.iops, medians.fio?.iops),
      cpuVublkFio: ratio(medians.vublk?.cpuUsPerIo, medians.fio?.cpuUsPerIo),
      cpuQsdFio: ratio(medians.qsd?.cpuUsPerIo, medians.fio?.cpuUsPerIo),
    },
  };
}

function r2(v: number): string {
  return Number.isFinite(v) ? v.toFixed(2) : '-';
}

function us(v: number | undefined): string {
  return v !== undefined && Number.isFinite(v) ? `${Math.round(v)} us` : '-';
}

/** The table (ratios of medians), then each backend's medians. */
export function markdown(rows: readonly RowResult[], extra: readonly string[] = []): string {
  const out = ['| workload | vublk / qsd IOPS | vublk / fio-direct IOPS | CPU per I/O vublk / fio | qsd / fio |', '|---|---|---|---|---|'];
  for (const r of rows) {
    let first = r2(r.ratios.vublkQsdIops);
    // The QD1 row is about latency: p50 of vublk against qsd's, as the issue shows it.
    if (r.id.includes('qd1')) first += ` (${us(r.medians.vublk?.p50)} vs ${us(r.medians.qsd?.p50)})`;
    out.push(`| ${r.label} | ${first} | ${r2(r.ratios.vublkFioIops)} | ${r2(r.ratios.cpuVublkFio)} | ${r2(r.ratios.cpuQsdFio)} |`);
  }
  out.push('', '| workload | backend | IOPS | p50 | p99 | p99.9 | CPU per I/O |', '|---|---|---|---|---|---|---|');
  for (const r of rows) {
    for (const b of BACKENDS) {
      const m = r.medians[b];
      if (!m) continue;
      out.push(
        `| ${r.label} | ${b} | ${Math.round(m.iops).toLocaleString('en-US')} | ${us(m.p50)} | ${us(m.p99)} | ${us(m.p999)} | ${m.cpuUsPerIo.toFixed(2)} us |`,
      );
    }
  }
  return [...out, ...(extra.length > 0 ? ['', ...extra] : [])].join('\n') + '\n';
}
