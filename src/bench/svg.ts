// The picture `vublk bench --svg FILE` draws: the latency histogram (log scale)
// above the IOPS of each second, as a standalone SVG document.
import type { BenchResult } from './report';

const W = 800;
const PANEL_H = 220;
const PAD = { left: 70, right: 20, top: 40, bottom: 40 };

export interface Bucket {
  lo: number;
  hi: number;
  count: number;
}

/** Renders the result and its latency buckets (in ns) as an SVG document. */
export function renderSvg(r: BenchResult, buckets: readonly Bucket[]): string {
  const title = `${esc(r.rw)} bs=${r.bs} iodepth=${r.iodepth} queues=${r.queues}: ${Math.round(r.iops)} IOPS, p50 ${r.latencyUs.p50} us, p99 ${r.latencyUs.p99} us`;
  const height = 2 * PANEL_H + 2 * (PAD.top + PAD.bottom);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${title}</text>`,
    histogramPanel(buckets, PAD.top),
    timelinePanel(r.timeline, PAD.top + PANEL_H + PAD.bottom + PAD.top),
    `</svg>`,
    '',
  ].join('\n');
}

function histogramPanel(buckets: readonly Bucket[], top: number): string {
  const out: string[] = [`<g class="latency-histogram">`];
  out.push(axes(top, 'completion latency (us, log scale)', 'I/Os'));
  if (buckets.length > 0) {
    const lo = Math.log10(Math.max(1, buckets[0]!.lo));
    const hi = Math.log10(buckets[buckets.length - 1]!.hi);
    const span = Math.max(hi - lo, 1e-9);
    const maxCount = Math.max(...buckets.map((b) => b.count));
    const x = (ns: number): number => PAD.left + ((Math.log10(Math.max(1, ns)) - lo) / span) * (W - PAD.left - PAD.right);
    for (const b of buckets) {
      const h = (b.count / maxCount) * PANEL_H;
      const x0 = x(b.lo);
      const w = Math.max(1, x(b.hi) - x0);
      out.push(
        `<rect x="${f(x0)}" y="${f(top + PANEL_H - h)}" width="${f(w)}" height="${f(h)}" fill="#3a6ea5"><title>${f(b.lo / 1000)}-${f(b.hi / 1000)} us: ${b.count}</title></rect>`,
      );
    }
    for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) {
      out.push(`<text x="${f(x(10 ** d))}" y="${top + PANEL_H + 15}" text-anchor="middle">${10 ** d / 1000}</text>`);
    }
    out.push(`<text x="${PAD.left - 5}" y="${top + 4}" text-anchor="end">${maxCount}</text>`);
  }
  out.push(`</g>`);
  return out.join('\n');
}

function timelinePanel(timeline: readonly number[], top: number): string {
  const out: string[] = [`<g class="iops-timeline">`];
  out.push(axes(top, 'second of the run', 'IOPS'));
  if (timeline.length > 0) {
    const maxV = Math.max(1, ...timeline);
    const step = (W - PAD.left - PAD.right) / Math.max(1, timeline.length);
    const pts = timeline.map((v, i) => `${f(PAD.left + (i + 0.5) * step)},${f(top + PANEL_H - (v / maxV) * PANEL_H)}`);
    out.push(`<polyline fill="none" stroke="#c0392b" stroke-width="2" points="${pts.join(' ')}"/>`);
    out.push(`<text x="${PAD.left - 5}" y="${top + 4}" text-anchor="end">${Math.round(maxV)}</text>`);
    out.push(`<text x="${W - PAD.right}" y="${top + PANEL_H + 15}" text-anchor="end">${timeline.length}</text>`);
  }
  out.push(`</g>`);
  return out.join('\n');
}

function axes(top: number, xLabel: string, yLabel: string): string {
  const bottom = top + PANEL_H;
  return [
    `<line x1="${PAD.left}" y1="${bottom}" x2="${W - PAD.right}" y2="${bottom}" stroke="black"/>`,
    `<line x1="${PAD.left}" y1="${top}" x2="${PAD.left}" y2="${bottom}" stroke="black"/>`,
    `<text x="${(W + PAD.left) / 2}" y="${bottom + 32}" text-anchor="middle">${xLabel}</text>`,
    `<text x="15" y="${top + PANEL_H / 2}" text-anchor="middle" transform="rotate(-90 15 ${top + PANEL_H / 2})">${yLabel}</text>`,
  ].join('\n');
}

function f(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
