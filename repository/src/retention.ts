// Which snapshots to keep: the newest N, plus the newest of each of the last N hours/days/weeks, per
// workspace (restic's `forget` semantics). Pure.

export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
}

export interface RetentionInput {
  id: string;
  time: string;
  workspace: string;
}

export interface RetentionPlan {
  keep: string[];
  forget: string[];
}

export function hasRetentionRule(policy: RetentionPolicy): boolean {
  return [policy.last, policy.hourly, policy.daily, policy.weekly].some((n) => (n ?? 0) > 0);
}

export function planRetention(snapshots: readonly RetentionInput[], policy: RetentionPolicy): RetentionPlan {
  const groups = new Map<string, RetentionInput[]>();
  for (const s of snapshots) {
    let g = groups.get(s.workspace);
    if (!g) {
      g = [];
      groups.set(s.workspace, g);
    }
    g.push(s);
  }
  const keep: string[] = [];
  const forget: string[] = [];
  const buckets: [number | undefined, (d: Date) => string][] = [
    [policy.hourly, (d) => d.toISOString().slice(0, 13)],
    [policy.daily, (d) => d.toISOString().slice(0, 10)],
    [policy.weekly, (d) => isoWeek(d)],
  ];
  for (const group of groups.values()) {
    const newestFirst = [...group].sort((a, b) => b.time.localeCompare(a.time) || b.id.localeCompare(a.id));
    const kept = new Set<string>();
    for (const s of newestFirst.slice(0, Math.max(0, policy.last ?? 0))) kept.add(s.id);
    for (const [count, bucketOf] of buckets) {
      if (!count || count <= 0) continue;
      const seen = new Set<string>();
      for (const s of newestFirst) {
        if (seen.size >= count) break;
        const bucket = bucketOf(new Date(s.time));
        if (seen.has(bucket)) continue;
        seen.add(bucket);
        kept.add(s.id);
      }
    }
    for (const s of newestFirst) (kept.has(s.id) ? keep : forget).push(s.id);
  }
  return { keep, forget };
}

function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${week}`;
}
