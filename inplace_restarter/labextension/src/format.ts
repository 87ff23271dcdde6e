/**
 * Times and sizes written as the proxy writes them in `%restart --info`.
 */

import { IJobState, IMemory } from './protocol';

/** The last ten minutes of a job, and memory use from 90% of the limit, are shown as warnings. */
const WARN_SECONDS_LEFT = 600;
const WARN_MEMORY_FRACTION = 0.9;

const UNITS = ['B', 'KB', 'MB', 'GB', 'TB'];

/**
 * `45 s`, `1 min 40 s`, `41 min`, `1 h 30 min`, `2 days 3 h`: the proxy's `format_duration`.
 * Never rounded up, since the time left is read as a promise; under ten minutes the seconds are kept.
 */
export function formatDuration(seconds: number): string {
  const whole = Math.max(0, Math.floor(seconds));
  const minutes = Math.floor(whole / 60);
  const rest = whole % 60;
  if (minutes === 0) {
    return `${rest} s`;
  }
  if (minutes < 10) {
    return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
  }
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 24) {
    return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
  }
  const days = Math.floor(hours / 24);
  const daysText = days === 1 ? '1 day' : `${days} days`;
  return hours % 24 ? `${daysText} ${hours % 24} h` : daysText;
}

/** When the text of `seconds` left changes next (each second under ten minutes, else on the minute), just after. */
export function msUntilChange(seconds: number): number {
  const step = seconds < 600 ? 1 : 60;
  return (seconds % step || step) * 1000 + 10;
}

/** Binary units, as Slurm's `--mem`: `64 MB`, `7.9 GB`, `8 GB`. */
function unitOf(size: number): number {
  let unit = 0;
  while (size >= 1024 && unit < UNITS.length - 1) {
    size /= 1024;
    unit++;
  }
  return unit;
}

function amount(size: number, unit: number): string {
  const value = size / 1024 ** unit;
  return value < 10 ? String(Number(value.toFixed(1))) : value.toFixed(0);
}

/** `1.2 / 8 GB` (used of the limit, in the limit's unit), `1.2 GB`, or `8 GB limit`. */
export function formatMemory(memory: IMemory): string | null {
  const { used, limit } = memory;
  if (limit === null) {
    return used === null ? null : `${amount(used, unitOf(used))} ${UNITS[unitOf(used)]}`;
  }
  const unit = unitOf(limit);
  const total = `${amount(limit, unit)} ${UNITS[unit]}`;
  return used === null ? `${total} limit` : `${amount(used, unit)} / ${total}`;
}

/** `job 1234 · node2 · 41 min left · 1.2 / 8 GB`; outside Slurm, the host and memory only. */
export function summary(state: IJobState, secondsLeft: number | null): string {
  const parts: string[] = [];
  if (state.job) {
    parts.push(`job ${state.job.id}`);
  }
  parts.push(state.host);
  if (secondsLeft !== null) {
    parts.push(`${formatDuration(secondsLeft)} left`);
  }
  const memory = state.memory && formatMemory(state.memory);
  if (memory) {
    parts.push(memory);
  }
  return parts.join(' · ');
}

/** Whether the job is in its last minutes or the kernel near its memory limit. */
export function isWarning(state: IJobState, secondsLeft: number | null): boolean {
  const { used, limit } = state.memory ?? { used: null, limit: null };
  return (
    (secondsLeft !== null && secondsLeft <= WARN_SECONDS_LEFT) ||
    (used !== null && limit !== null && used >= WARN_MEMORY_FRACTION * limit)
  );
}
