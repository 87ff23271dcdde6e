"""The batch job the kernel runs in: where it runs, when it ends, and the notices before the end.

A notebook in a Slurm job cannot see the job's time limit, and a job that
ends takes unsaved work with it. The proxy runs inside the job, so it can
ask Slurm (``squeue``, else ``scontrol``) and warn ahead. What to say and
when (JobNotices, configurable) is kept apart from reading Slurm (Job), as
jupyter_client keeps KernelRestarter's policy apart from KernelManager.

Reading Slurm never slows or breaks the kernel: it is asynchronous, bounded
by ``command_timeout`` (the command and anything it started are killed
then), and a missing, hanging, failing or garbled command only leaves the end
time unknown.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from traitlets import Bool, Float, List
from traitlets.config import LoggingConfigurable

#: What Slurm prints for an end time or a time limit that does not end the job.
NO_END = frozenset({"NONE", "N/A", "UNKNOWN", "UNLIMITED", "INFINITE"})


def parse_slurm_time(text: str) -> datetime | None:
    """A Slurm timestamp (local time, ``2026-12-02T16:57:00``) as an aware datetime; None for "no end".

    ValueError for anything else.
    """
    text = text.strip()
    if text.upper() in NO_END:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").astimezone()


def format_duration(seconds: float) -> str:
    """A duration as a user reads it: ``45 s``, ``1 min 40 s``, ``41 min``, ``1 h 30 min``, ``2 days 3 h``.

    Never rounded up: the time left before a job ends is read as a promise.
    Under ten minutes the seconds are kept, since they are a large part of it.
    """
    seconds = max(0, math.floor(seconds))
    minutes, rest = divmod(seconds, 60)
    if minutes == 0:
        return f"{rest} s"
    if minutes < 10:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    day_s = f"{days} day" if days == 1 else f"{days} days"
    return f"{day_s} {hours} h" if hours else day_s


class SlurmUnreadable(Exception):
    """A Slurm command that could not say when the job ends; the message says why."""


class Job(LoggingConfigurable):
    """A Slurm job: its id, its node, and its end time as Slurm last said it."""

    refresh_interval = Float(
        300.0,
        config=True,
        help="Seconds after which the job's end time is read from Slurm again (a time limit can be extended).",
    )
    command_timeout = Float(
        5.0,
        config=True,
        help="Seconds one reading of the end time (squeue, then scontrol) may take before it is given up "
        "and the command killed.",
    )

    def __init__(self, job_id: str, node: str, *, end: datetime | None = None, time_limit: str | None = None, **kwargs):
        """A job; with ``time_limit`` given, its end (None: no limit) is taken as known without asking Slurm."""
        super().__init__(**kwargs)
        self.id, self.node = job_id, node
        #: when the job ends; None when unknown or when it has no time limit (``known`` tells which)
        self.end: datetime | None = end
        #: the time limit as Slurm prints it (``5:00``, ``12:00:00``, ``UNLIMITED``); None while unknown
        self.time_limit: str | None = time_limit
        #: time.monotonic() of the last reading (or of what the constructor was told); None before the first
        self._read_at: float | None = time.monotonic() if time_limit is not None else None
        self._reading: asyncio.Task | None = None
        #: failures in a row, so that only the first of a run is a warning
        self._failures = 0
        #: the Slurm command running now, if any, so that it does not outlive the proxy (see kill)
        self._command: asyncio.subprocess.Process | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None, **kwargs) -> Job | None:
        """The job of an environment (``os.environ`` by default); None outside Slurm."""
        env = os.environ if env is None else env
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            return None
        return cls(job_id, env.get("SLURMD_NODENAME") or socket.gethostname(), **kwargs)

    def kill(self) -> None:
        """Kill the Slurm command running now, and what it started: at the proxy's exit, with no loop to wait on it."""
        if self._command is not None and self._command.returncode is None:
            _kill_session(self._command.pid)

    @property
    def known(self) -> bool:
        """Whether Slurm has said when the job ends (or that it has no time limit)."""
        return self.time_limit is not None

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds until the job ends, at ``now`` (time.time()); ``math.inf`` without limit, None while unknown."""
        if not self.known:
            return None
        if self.end is None:
            return math.inf
        return self.end.timestamp() - (time.time() if now is None else now)

    def describe(self, now: float | None = None) -> str:
        """``Slurm job 1234 on node2, 41 min left``, for %restart's message and its --info."""
        text = f"Slurm job {self.id} on {self.node}"
        left = self.time_left(now)
        if left is None:
            return text
        if left == math.inf:
            return f"{text}, no time limit"
        return f"{text}, {format_duration(left)} left" if left > 0 else f"{text}, at its time limit"

    async def end_time(self) -> datetime | None:
        """When the job ends, read from Slurm again once ``refresh_interval`` has passed since the last reading."""
        if self._read_at is None or time.monotonic() - self._read_at >= self.refresh_interval:
            await self.read()
        return self.end

    async def read(self) -> bool:
        """Read the end time and time limit from Slurm now; whether Slurm answered. Never raises.

        A reading that fails keeps the last answer (a job is not likely to
        lose its time limit, and a notice is not to be missed for one
        failed squeue); before any answer the end stays unknown. Callers
        at the same time share one reading.
        """
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        return await asyncio.shield(self._reading)

    async def _read(self) -> bool:
        deadline = asyncio.get_running_loop().time() + self.command_timeout
        reasons = []
        for ask in (self._ask_squeue, self._ask_scontrol):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                end, limit = await ask(remaining)
            except SlurmUnreadable as e:
                reasons.append(str(e))
                continue
            self.end, self.time_limit = end, limit
            self._read_at, self._failures = time.monotonic(), 0
            return True
        self._read_at = time.monotonic()
        self._failures += 1
        log = self.log.warning if self._failures == 1 else self.log.debug
        log("The end time of Slurm job %s is unknown: %s", self.id, "; ".join(reasons) or "no time left to ask")
        return False

    async def _ask_squeue(self, timeout: float) -> tuple[datetime | None, str]:
        out = await self._run(["squeue", "--noheader", "--jobs", self.id, "--format=%e|%l"], timeout)
        lines = out.split()
        if not lines:
            raise SlurmUnreadable(f"squeue does not list job {self.id}")
        end, _, limit = lines[0].partition("|")
        return self._parsed("squeue", end, limit)

    async def _ask_scontrol(self, timeout: float) -> tuple[datetime | None, str]:
        out = await self._run(["scontrol", "--oneliner", "show", "job", self.id], timeout)
        fields = dict(word.split("=", 1) for word in out.split() if "=" in word)
        if "EndTime" not in fields or "TimeLimit" not in fields:
            raise SlurmUnreadable(f"scontrol printed no EndTime and TimeLimit for job {self.id}: {out[:80]!r}")
        return self._parsed("scontrol", fields["EndTime"], fields["TimeLimit"])

    @staticmethod
    def _parsed(command: str, end: str, limit: str) -> tuple[datetime | None, str]:
        if not limit:
            raise SlurmUnreadable(f"{command} printed no time limit: {end!r}")
        try:
            return (None if limit.upper() in NO_END else parse_slurm_time(end)), limit
        except ValueError:
            raise SlurmUnreadable(f"{command} printed {end!r}, not an end time") from None

    async def _run(self, argv: list[str], timeout: float) -> str:
        """The command's stdout; SlurmUnreadable if it is missing, fails or outlasts ``timeout`` (then killed)."""
        env = {**os.environ, "SLURM_TIME_FORMAT": "standard"}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                # A session of its own, so a wrapper script and whatever it started are killed with it.
                start_new_session=True,
            )
        except OSError as e:
            raise SlurmUnreadable(f"{argv[0]}: {e.strerror}") from None
        self._command = process
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            raise SlurmUnreadable(f"{argv[0]} did not answer within {timeout:.3g} s") from None
        finally:
            self._command = None
            if process.returncode is None:
                _kill_session(process.pid)
                await process.wait()
        if process.returncode != 0:
            first = err.decode(errors="replace").strip().splitlines()[:1]
            raise SlurmUnreadable(f"{argv[0]} exited with code {process.returncode}{': ' + first[0] if first else ''}")
        return out.decode(errors="replace")


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def where(job: Job | None, now: float | None = None) -> str:
    """Where the kernel runs, in a few words: the job's ``describe()``, or ``on host X`` outside Slurm."""
    return job.describe(now) if job is not None else f"on host {socket.gethostname()}"


class JobNotices(LoggingConfigurable):
    """When to warn the notebook that its job is about to end, and what to say."""

    enabled = Bool(True, config=True, help="Warn the notebook before the Slurm job reaches its time limit.")
    warn_before = List(
        Float(),
        default_value=[600.0, 120.0],
        config=True,
        help="Seconds before the job's end at which the notebook is warned, once each.",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: offsets already warned about
        self._given: set[float] = set()
        #: time.time() at which the notice held for the next cell fell due; None while none is held
        self._held_since: float | None = None

    def due(self, time_left: float | None) -> bool:
        """Whether a notice falls due with ``time_left`` seconds left; each offset gives one notice.

        Offsets passed together (a job that starts with less time than
        several of them) give one notice. A time limit extended past an
        offset already warned about makes it due again.
        """
        if not self.enabled or time_left is None or time_left == math.inf:
            return False
        self._given = {offset for offset in self._given if time_left <= offset}
        due = {offset for offset in self.warn_before if time_left <= offset} - self._given
        if not due or time_left <= 0:
            return False
        self._given |= due
        return True

    def word(self, job: Job, now: float | None = None) -> str | None:
        """The notice with the time left at ``now`` (time.time()), never more; None once the job's end has passed."""
        left = job.time_left(now)
        if left is None or left == math.inf or left < 1:
            return None
        limit = f"Slurm time limit {job.time_limit}, job {job.id}" if job.time_limit else f"Slurm job {job.id}"
        return f"This job ends in {format_duration(left)} ({limit}): save your work"

    def hold(self, now: float | None = None) -> None:
        """Keep a notice that fell due for the next cell; a later one supersedes it, so the next cell shows one."""
        self._held_since = time.time() if now is None else now

    def take(self, job: Job, now: float | None = None) -> str | None:
        """The notice held, worded now (so with the time left as the user reads it), once; None if none is."""
        due_at, self._held_since = self._held_since, None
        if due_at is None:
            return None
        now = time.time() if now is None else now
        notice = self.word(job, now)
        if notice is None:
            self.log.info(
                "Time-limit notice due at %s dropped at %s: the job is at its end", _clock(due_at), _clock(now)
            )
        else:
            self.log.info("Time-limit notice due at %s shown at %s: %s", _clock(due_at), _clock(now), notice)
        return notice

    def next_due(self, time_left: float | None) -> float | None:
        """Seconds until the next notice falls due, with ``time_left`` seconds left now; None if none will."""
        if not self.enabled or time_left is None or time_left == math.inf:
            return None
        ahead = [time_left - offset for offset in self.warn_before if offset not in self._given and offset < time_left]
        return min(ahead, default=None)


async def watch_end(job: Job, notices: JobNotices, fell_due: Callable[[], None]) -> None:
    """Call ``fell_due()`` as each notice falls due, reading Slurm again every ``refresh_interval``; runs until cancelled."""
    while notices.enabled:
        await job.end_time()
        if notices.due(job.time_left()):
            fell_due()
        wait = job.refresh_interval
        upcoming = notices.next_due(job.time_left())
        if upcoming is not None:
            wait = min(wait, upcoming)
        await asyncio.sleep(max(wait, 0.0))


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))
