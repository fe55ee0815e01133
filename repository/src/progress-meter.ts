// One self-rewriting status line on a terminal: bytes (or things counted) done, rate and time left. Silent when
// not a TTY.
// Shared by both CLIs (`dumont-agent snapshot` in direct mode, `dumont snapshot` through the control plane).

export class ProgressMeter {
  private readonly startedAt = performance.now();
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly label: string,
    /** What is counted, when not bytes ("packs"). */
    private readonly unit?: string,
  ) {}

  static forStderr(label: string, quiet: boolean, unit?: string): ProgressMeter | undefined {
    return !quiet && process.stderr.isTTY ? new ProgressMeter(process.stderr, label, unit) : undefined;
  }

  update(done: number, total: number, force = false): void {
    const now = performance.now();
    if (!force && now - this.lastDraw < 200) return;
    this.lastDraw = now;
    const seconds = (now - this.startedAt) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const eta = rate > 0 && total > done ? ` ETA ${formatDuration((total - done) / rate)}` : "";
    const percent = total > 0 ? ` (${Math.floor((done / total) * 100)}%)` : "";
    const line = this.unit
      ? `${done} / ${total} ${this.unit}${percent}  ${rate.toFixed(rate < 10 ? 1 : 0)}/s${eta}`
      : `${formatBytes(done)} / ${formatBytes(total)}${percent}  ${formatBytes(rate)}/s${eta}`;
    this.out.write(`\r\x1b[K${this.label}: ${line}`);
    this.drawn = true;
  }

  finish(): void {
    if (this.drawn) this.out.write("\r\x1b[K");
  }
}

/** Seconds to the millisecond: how both CLIs print an operation's seconds in their JSON. */
export function roundSeconds(seconds: number): number {
  return Math.round(seconds * 1000) / 1000;
}

/**
 * A size for people: in powers of 1024 (KiB, MiB...), or of 1000 (kB, MB...) where `decimal` (as disks, S3 bills and
 * a quota given as "500GB" count).
 */
export function formatBytes(n: number, options: { decimal?: boolean } = {}): string {
  const [step, units] = options.decimal
    ? [1000, ["B", "kB", "MB", "GB", "TB"]]
    : [1024, ["B", "KiB", "MiB", "GiB", "TiB"]];
  let value = n;
  let unit = 0;
  // Up a unit also where the digits shown would round to the step: 999,960 bytes is "1.0 MB", not "1000.0 kB"
  // (and a rate of 1023.6 bytes a second "1.0 KiB", not "1024 B").
  while (value >= step - (unit > 0 ? 0.05 : 0.5) && unit < units.length - 1) {
    value /= step;
    unit++;
  }
  return `${unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(seconds: number): string {
  // Whole seconds first, rounded up: rounding the seconds of a minute on their own gave "1m60s" for 119.5.
  const total = Math.ceil(seconds);
  if (total < 60) return `${total}s`;
  const m = Math.floor(total / 60);
  if (m < 60) return `${m}m${String(total % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}
