// Reads the control plane's /metrics (Prometheus text format) the way a scraper would: the figures a
// benchmark reports come from the same place an operator's dashboard does.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export class MetricsScrape {
  constructor(readonly samples: Sample[]) {}

  /** The value of the first sample with this name whose labels include `labels`; NaN if none. */
  value(name: string, labels: Record<string, string> = {}): number {
    const hit = this.samples.find(
      (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
    );
    return hit?.value ?? Number.NaN;
  }

  /** A histogram's cumulative buckets, by upper bound. */
  buckets(name: string): { le: number; count: number }[] {
    return this.samples
      .filter((s) => s.name === `${name}_bucket`)
      .map((s) => ({ le: s.labels.le === "+Inf" ? Number.POSITIVE_INFINITY : Number(s.labels.le), count: s.value }))
      .sort((a, b) => a.le - b.le);
  }
}

export async function scrapeMetrics(httpUrl: string): Promise<MetricsScrape> {
  const res = await fetch(`${httpUrl}/metrics`);
  if (!res.ok) throw new Error(`GET ${httpUrl}/metrics answered ${res.status}`);
  return new MetricsScrape(parsePrometheusText(await res.text()));
}

export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1] as string] = l[2] as string;
    }
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return samples;
}

/**
 * A quantile estimated from the difference of two scrapes of a cumulative histogram (what Prometheus'
 * histogram_quantile does over a range): linear within the bucket that holds it. Seconds in, seconds out.
 */
export function histogramQuantile(
  before: { le: number; count: number }[],
  after: { le: number; count: number }[],
  q: number,
): number {
  const delta = after.map((b, i) => ({ le: b.le, count: b.count - (before[i]?.count ?? 0) }));
  const total = delta.at(-1)?.count ?? 0;
  if (total === 0) return Number.NaN;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const b of delta) {
    if (b.count >= rank) {
      // Beyond the last finite bound we can only say "more than it".
      if (!Number.isFinite(b.le)) return lower;
      return lower + ((b.le - lower) * (rank - below)) / Math.max(1, b.count - below);
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}
