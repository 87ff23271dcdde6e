"""Why the kernel died, in one sentence: the out-of-memory killer, the job's time limit, a signal, an exit code.

A notebook otherwise says only "The kernel died of SIGKILL". What killed it
is known on the node: the memory cgroup the kernel ran in counts the kills
of its out-of-memory killer and keeps the limit and the peak use, and a
Slurm job's end time says whether the job ran out of time. The cgroup is
found from /proc/PID/cgroup, which exists only while the process lives, so
a Witness records it (and the kill counter) when the kernel starts.

Both cgroup versions: v1 (``memory.limit_in_bytes``,
``memory.max_usage_in_bytes``, ``memory.usage_in_bytes``,
``memory.oom_control``) and v2 (``memory.max``, ``memory.peak``,
``memory.current``, ``memory.events``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from .job import Job

#: v1 writes "no limit" as the largest page-aligned counter, about 2**63; nothing real comes near 2**62.
UNLIMITED = 2**62
#: seconds of slack for "the end time has passed": Slurm's times have whole seconds
TIME_LIMIT_SLACK = 1.0
#: how the sentence of a kernel the out-of-memory killer took begins
OUT_OF_MEMORY = "The kernel was killed by the out-of-memory killer"


def format_bytes(size: int) -> str:
    """A memory size as Slurm and users write it (binary units): ``64 MB``, ``7.9 GB``, ``8 GB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            break
        value /= 1024
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f"{text.removesuffix('.0')} {unit}"


@dataclass(frozen=True)
class MemoryUse:
    """A memory cgroup at one moment: the limit that applies to it, the peak use against it, its OOM kills."""

    #: bytes; the smallest limit of the cgroup and its ancestors; None when none is set
    limit: int | None
    #: bytes; the peak use of the cgroup that sets ``limit`` (of the cgroup itself without one); None if unknown
    peak: int | None
    #: the kernel's OOM kills in the cgroup so far; None where the kernel does not count them
    oom_kills: int | None
    #: the cgroup that sets ``limit``, as /proc/PID/cgroup names it
    limited_by: str | None = None
    #: bytes; the use now of the cgroup that ``peak`` is of, against ``limit``; None if unknown
    current: int | None = None


def _memory_cgroup(proc_cgroup: str, mountinfo: str) -> tuple[int, Path, str] | None:
    """(version, folder, name) of the memory cgroup in a /proc/PID/cgroup, found through a mountinfo."""
    v1 = v2 = None
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, name = rest.partition(":")
        if "memory" in controllers.split(","):
            v1 = name
        elif hierarchy == "0" and not controllers:
            v2 = name
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        root, mount_point = fields[3], fields[4]
        fstype, _, options = line.split(" - ", 1)[1].split()[:3]
        if v1 is not None and fstype == "cgroup" and "memory" in options.split(","):
            version, name = 1, v1
        elif v1 is None and v2 is not None and fstype == "cgroup2":
            version, name = 2, v2
        else:
            continue
        relative = Path(name).relative_to(root) if Path(name).is_relative_to(root) else None
        if relative is None:
            continue
        folder = Path(mount_point.replace("\\040", " ")) / relative
        if (folder / ("memory.limit_in_bytes" if version == 1 else "memory.max")).exists():
            return version, folder, name
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _counter(text: str | None, key: str) -> int | None:
    """``key``'s value in a flat-keyed cgroup file (``oom_kill 1``)."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _bytes(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


class MemoryCgroup:
    """The memory cgroup a process runs in, to read its limit, peak use and OOM kills."""

    def __init__(self, folder: Path | str, version: int, name: str | None = None):
        self.folder, self.version = Path(folder), version
        #: the cgroup's name in /proc/PID/cgroup (``/slurm/uid_0/job_12/step_0``)
        self.name = name if name is not None else str(self.folder)

    def __repr__(self) -> str:
        return f"MemoryCgroup({str(self.folder)!r}, version={self.version})"

    @classmethod
    def of_pid(cls, pid: int) -> MemoryCgroup | None:
        """The memory cgroup of a running process; None if it is gone or has none this process can read."""
        proc_cgroup = _read(Path(f"/proc/{pid}/cgroup"))
        mountinfo = _read(Path("/proc/self/mountinfo"))
        if proc_cgroup is None or mountinfo is None:
            return None
        found = _memory_cgroup(proc_cgroup, mountinfo)
        return cls(found[1], found[0], found[2]) if found else None

    def snapshot(self) -> MemoryUse | None:
        """The cgroup now; None once it is gone."""
        files = (
            ("memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.usage_in_bytes", "memory.oom_control")
            if self.version == 1
            else ("memory.max", "memory.peak", "memory.current", "memory.events")
        )
        limit_file, peak_file, current_file, events_file = files
        events = _read(self.folder / events_file)
        if events is None:
            return None
        limit, limiting, limited_by = None, self.folder, None
        # An ancestor's limit (a Slurm job's, above its step's and task's cgroups) holds too: the smallest wins.
        folder, name = self.folder, Path(self.name)
        while (folder / limit_file).exists():
            found = _bytes(_read(folder / limit_file))
            if found is not None and found < UNLIMITED and (limit is None or found < limit):
                limit, limiting, limited_by = found, folder, str(name)
            folder, name = folder.parent, name.parent
        peak, current = (_bytes(_read(limiting / part)) for part in (peak_file, current_file))
        return MemoryUse(limit, peak, _counter(events, "oom_kill"), limited_by, current)


def describe_exit(returncode: int | None) -> str:
    """How the kernel ended, from its exit status alone: a signal (Popen's negative code) or an exit code."""
    if returncode is None:
        return "The kernel died"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"The kernel died of {name}"
    return f"The kernel exited with code {returncode}"


def describe_death(
    returncode: int | None,
    before: MemoryUse | None = None,
    after: MemoryUse | None = None,
    job: Job | None = None,
    now: float | None = None,
) -> str:
    """Why the kernel died, in one sentence.

    The out-of-memory killer when the kernel got SIGKILL and its cgroup's
    kill counter rose from ``before`` (at its start) to ``after`` (at its
    death); else the job's time limit when ``job``'s end time (as last read)
    has passed at ``now``; else the signal or exit code.
    """
    if (
        returncode == -signal.SIGKILL
        and before is not None
        and after is not None
        and None not in (before.oom_kills, after.oom_kills)
        and after.oom_kills > before.oom_kills
    ):
        return _killed_for_memory(after, job)
    plain = describe_exit(returncode)
    left = job.time_left(now) if job is not None else None
    if left is not None and left <= TIME_LIMIT_SLACK:
        return f"{plain}: Slurm job {job.id} reached its time limit ({job.time_limit})"
    return plain


def _killed_for_memory(use: MemoryUse, job: Job | None) -> str:
    text = OUT_OF_MEMORY
    if use.limit is None:
        used = f" (it used {format_bytes(use.peak)})" if use.peak is not None else ""
        return f"{text}: the machine ran out of memory{used}"
    owner, whose = _whose(use, job)
    if use.peak is None:
        return f"{text}: {format_bytes(use.limit)} (memory limit of {whose})"
    return f"{text}: it used {format_bytes(use.peak)} of {owner} {format_bytes(use.limit)} (memory limit of {whose})"


def _whose(use: MemoryUse, job: Job | None) -> tuple[str, str]:
    """Whose limit ``use.limit`` is: the job's only when the limiting cgroup is the job's own
    (Slurm's task/cgroup makes one per job)."""
    ours = job is not None and f"job_{job.id}" in Path(use.limited_by or "").parts
    return ("the job's", "this job") if ours else ("the cgroup's", "this cgroup")


class Witness:
    """What is known of a kernel from its start, to say why it died."""

    def __init__(self, cgroup: MemoryCgroup | None, job: Job | None = None):
        self.cgroup, self.job = cgroup, job
        self.before = cgroup.snapshot() if cgroup is not None else None

    @classmethod
    def of_pid(cls, pid: int, job: Job | None = None) -> Witness:
        """Record a just-started kernel's cgroup and its OOM kills so far."""
        return cls(MemoryCgroup.of_pid(pid), job)

    def describe(self, returncode: int | None, now: float | None = None) -> str:
        """Why the kernel died, once it has: read the cgroup again and compare."""
        after = self.cgroup.snapshot() if self.cgroup is not None else None
        return describe_death(returncode, self.before, after, self.job, now)

    def memory(self) -> str | None:
        """The memory limit the kernel runs under and the peak use against it (for %restart --info); None without."""
        use = self.cgroup.snapshot() if self.cgroup is not None else None
        if use is None or use.limit is None:
            return None
        owner, whose = _whose(use, self.job)
        used = f"at most {format_bytes(use.peak)} used of " if use.peak is not None else ""
        return f"Memory: {used}{owner} {format_bytes(use.limit)} (memory limit of {whose})"
