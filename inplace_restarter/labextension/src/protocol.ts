/**
 * The messages of the `inplace_restarter.job` comm. The proxy in front of the
 * kernel is its target, so the inner kernel never sees it.
 */

/** The comm's target name; a kernel without it (one not proxied) closes the comm. */
export const COMM_TARGET = 'inplace_restarter.job';

/** The Slurm job the kernel runs in. */
export interface IJob {
  id: string;
  /** The time limit as Slurm writes it, e.g. `2:00:00`. */
  time_limit: string | null;
  /** The job's end, POSIX seconds, as Slurm last said it. */
  end: number | null;
  /** Seconds left when the proxy sent this state. */
  left: number | null;
}

/** The memory cgroup the kernel runs in, in bytes. */
export interface IMemory {
  used: number | null;
  peak: number | null;
  limit: number | null;
}

/** Where the kernel runs; sent when the comm opens and whenever it changes. */
export interface IJobState {
  kind: 'state';
  host: string;
  /** `null` outside Slurm. */
  job: IJob | null;
  memory: IMemory | null;
  restarts: number;
  /** What `%restart --info` says, for the details dialog. */
  info: string;
}

/** A notice the kernel's cells get too: the time limit is near, or the kernel died. */
export interface IJobNotice {
  kind: 'notice';
  reason: 'time-limit' | 'oom' | 'died';
  level: 'warning' | 'error';
  text: string;
}

export type JobMessage = IJobState | IJobNotice;

/** The one request the extension sends: a fresh state, answered by a state message. */
export const STATE_REQUEST = { request: 'state' } as const;
