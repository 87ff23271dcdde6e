"""The proxy's own comm target, ``inplace_restarter.job``: the job, the memory and the restarts, for a status bar.

A JupyterLab extension (issue #27) shows "job 1234 · node2 · 41 min left ·
1.2 / 8 GB" in the status bar.  The kernel cannot know its Slurm job, the
restarts in place or why it died; the proxy knows them all, so the proxy
answers this target itself and never relays it.  Its comms are the
proxy's: they outlive every restart in place, which closes only the inner
kernel's comms.

The mechanism is ipykernel's own: its CommManager takes the target's
comm_open, comm_msg and comm_close through the kernel's dispatch, with the
busy and idle a kernel sends for a comm request.  JobState is the policy,
configurable: what a state says, and when a new one is worth sending (the
time left once a minute, the memory when it moved, after a restart, when the
job's end changes), and the notices (the job's time limit, a kernel that
died).  A kernel without the proxy has no such target and closes the comm,
so the extension shows nothing there.

Messages to the frontend: ``{"kind": "state", ...}`` (see :meth:`JobState.state`)
and ``{"kind": "notice", "reason", "level", "text"}``; from it,
``{"request": "state"}``.  Nothing here may break the kernel: a failure in
building or sending a message is logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import socket
import typing as t
from collections.abc import Callable
from pathlib import Path

from ipykernel.comm import Comm, CommManager
from traitlets import Float
from traitlets.config import LoggingConfigurable

from .death import OUT_OF_MEMORY, MemoryCgroup
from .job import NO_END

if t.TYPE_CHECKING:
    from jupyter_client.session import Session

    from .inner import InnerKernel
    from .kernel import ProxyKernel

TARGET = "inplace_restarter.job"
COMM_MSG_TYPES = ("comm_open", "comm_msg", "comm_close")
#: the least change of the memory in use (or its peak) worth a new state: 1 MiB, or 1% of the limit (else of the
#: use), the least a status bar shows (``1.2 / 8 GB``); the cgroup of a kernel outside a job holds other processes too
MEMORY_STEP, MEMORY_SHARE = 2**20, 0.01
#: each notice's level
LEVELS = {"time-limit": "warning", "oom": "error", "died": "error"}


class JobState(LoggingConfigurable):
    """The ``inplace_restarter.job`` comms: states and notices for every client that opened one."""

    memory_interval = Float(
        5.0,
        config=True,
        help="Seconds between two looks at the kernel's memory (and the job's end) while a status bar listens; "
        "a new state goes out only when the memory in use or its peak moved by 1% of the limit (of the use without one; 1 MiB at least), or its limit changed.",
    )
    time_interval = Float(
        60.0,
        config=True,
        help="Seconds between two states sent for the time left in the Slurm job, while a status bar listens.",
    )

    def __init__(self, kernel: ProxyKernel, **kwargs: t.Any):
        """Register the target with a CommManager of the kernel's, and listen to its restarts and deaths."""
        super().__init__(**kwargs)
        self.job = kernel.job
        self._info: Callable[[], str] = kernel._info
        #: the inner kernels that served so far: the first, then one per restart in place
        self._served_kernels = 0
        #: the memory cgroup and the pid of the kernel serving now
        self._cgroup: MemoryCgroup | None = None
        self._pid: int | None = None
        #: what the last state sent to every comm said of what changes by itself
        self._sent: tuple[dict | None, tuple] | None = None
        self._timers: list[asyncio.Task] = []
        self.comm_manager = CommManager(kernel=kernel, parent=self)
        self.comm_manager.register_target(TARGET, self._opened)
        kernel.shell_handlers.update({msg_type: getattr(self.comm_manager, msg_type) for msg_type in COMM_MSG_TYPES})
        kernel.restarter.add_callback(self._served)
        kernel.rescuer.add_death_callback(self.died)

    # -- which messages are ours --------------------------------------------------

    def owns(self, request: dict, session: Session) -> bool:
        """Whether a shell message (its content still packed) is for this target: its comm_open or one of its comms."""
        msg_type = request["header"]["msg_type"]
        if msg_type not in COMM_MSG_TYPES:
            return False
        # Widgets' comm messages take this path too: unpacked here only if the packed
        # content names the target or one of its comms (JSON writes them as they are).
        names = [TARGET] if msg_type == "comm_open" else list(self.comm_manager.comms)
        packed = request["content"]
        if isinstance(packed, bytes) and not any(name.encode() in packed for name in names):
            return False
        try:
            content = session.unpack(request["content"])
        except Exception:
            return False
        if not isinstance(content, dict):
            return False
        if msg_type == "comm_open":
            return content.get("target_name") == TARGET
        comm_id = content.get("comm_id")
        return isinstance(comm_id, str) and comm_id in self.comm_manager.comms

    # -- what is said -------------------------------------------------------------

    def state(self) -> dict:
        """Where the kernel runs, its job and the time left now, its memory, the restarts, ``%restart --info``."""
        job = self.job
        return {
            "kind": "state",
            "host": job.node if job is not None else socket.gethostname(),
            "job": self._job(),
            "memory": self._memory(),
            "restarts": self.restarts,
            "info": self._info(),
        }

    @property
    def restarts(self) -> int:
        """Restarts in place so far, whatever asked for them."""
        return max(self._served_kernels - 1, 0)

    def _job(self) -> dict | None:
        job = self.job
        if job is None:
            return None
        left = job.time_left()
        unlimited = job.time_limit is not None and job.time_limit.upper() in NO_END
        return {
            "id": job.id,
            "time_limit": "UNLIMITED" if unlimited else job.time_limit,
            "end": job.end.timestamp() if job.end is not None else None,
            "left": left if left is not None and math.isfinite(left) else None,
        }

    def _memory(self) -> dict | None:
        """The memory cgroup's use against its limit; without a limit, the kernel process's own.

        A cgroup without a limit is not the job's but a larger one (a login
        session's, a whole machine's): its use would be other processes'.
        """
        use = self._cgroup.snapshot() if self._cgroup is not None else None
        if use is not None and use.limit is not None:
            return {"used": use.current, "peak": use.peak, "limit": use.limit}
        resident = _resident(self._pid) if self._pid is not None else None
        return {"used": resident[0], "peak": resident[1], "limit": None} if resident is not None else None

    def notice(self, reason: str, text: str) -> None:
        """Tell every comm: ``reason`` is ``time-limit`` (a notice of job.JobNotices), ``oom`` or ``died``."""
        self._broadcast(lambda: {"kind": "notice", "reason": reason, "level": LEVELS[reason], "text": text})

    def died(self, reason: str) -> None:
        """The inner kernel died by itself, for ``reason`` (death.py's sentence); it is being restarted."""
        self.notice("oom" if reason.startswith(OUT_OF_MEMORY) else "died", reason)

    # -- the comms ------------------------------------------------------------------

    def _opened(self, comm: Comm, msg: dict) -> None:
        """A client opened a comm: answer with a state; with the first, start looking for changes."""
        comm.on_msg(lambda msg: self._requested(comm, msg))
        comm.on_close(lambda msg: self._closed())
        first = not self._timers
        if first:
            self._start()
        sent = self._send(comm, self.state)
        if first and sent is not None:
            self._sent = self._moving(sent)

    def _requested(self, comm: Comm, msg: dict) -> None:
        data = msg["content"].get("data")
        if isinstance(data, dict) and data.get("request") == "state":
            self._send(comm, self.state)
        else:
            self.log.warning("Ignored a message on the %s comm: %r", TARGET, data)

    def _closed(self) -> None:
        if not self.comm_manager.comms:
            self.stop()

    def _send(self, comm: Comm, build: Callable[[], dict]) -> dict | None:
        """Send what ``build`` makes on ``comm``, and return it; a failure is logged, never raised into the kernel."""
        try:
            data = build()
            comm.send(data)
        except Exception:
            self.log.exception("The %s comm %s got no message", TARGET, comm.comm_id)
            return None
        return data

    def _broadcast(self, build: Callable[[], dict]) -> None:
        """Send one message to every open comm, built once."""
        comms = list(self.comm_manager.comms.values())
        if not comms:
            return
        try:
            data = build()
        except Exception:
            self.log.exception("No message for the %s comms", TARGET)
            return
        for comm in comms:
            self._send(comm, lambda: data)
        if data["kind"] == "state":
            self._sent = self._moving(data)

    # -- when a new state is worth sending --------------------------------------------

    def _served(self, inner: InnerKernel) -> None:
        """A new inner kernel serves (the first, or after a restart in place): count it, read its memory from now on."""
        self._served_kernels += 1
        self._cgroup = inner.witness.cgroup if inner.witness is not None else None
        self._pid = inner.pid
        if self.restarts:
            self._broadcast(self.state)

    def _start(self) -> None:
        """Look for changes while a comm is open.

        In a context of their own, not the comm_open's: what they send takes
        the parent ipykernel gives what a kernel sends outside any request,
        the last request it handled itself.
        """
        self._sent = None
        loop = asyncio.get_running_loop()
        every = [(self.memory_interval, self._check)]
        if self.job is not None:
            every.append((self.time_interval, self._tick))
        self._timers = [loop.create_task(self._every(*each), context=contextvars.Context()) for each in every]

    def stop(self) -> None:
        """No comm listens: stop looking."""
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    async def _every(self, seconds: float, tick: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                tick()
            except Exception:
                self.log.exception("Looking for changes for the %s comms failed", TARGET)

    def _moving(self, state: dict) -> tuple[dict | None, tuple]:
        """What of a state changes by itself: the memory, and when the job ends."""
        return state["memory"], _end_of(state["job"])

    def _check(self) -> None:
        """A new state if the memory moved or the job's end changed since the last one sent to all.

        Only the memory is read to decide; the whole state (``--info``'s text
        reads the cgroup again) is made when one is sent.
        """
        memory, end = self._memory(), _end_of(self._job())
        if self._sent is not None and not (end != self._sent[1] or _moved(self._sent[0], memory)):
            return
        self._broadcast(self.state)

    def _tick(self) -> None:
        """The time left, when there is a time left to tell."""
        job = self.job
        if job is not None and job.end is not None:
            self._broadcast(self.state)


def _end_of(job: dict | None) -> tuple:
    """When a state's job ends, and its time limit: () outside a job."""
    return (job["end"], job["time_limit"]) if job is not None else ()


def _resident(pid: int) -> tuple[int, int] | None:
    """Bytes of a process's resident memory now and at most (VmRSS, VmHWM); None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    sizes = dict(line.split(":", 1) for line in status.splitlines() if line.startswith(("VmRSS:", "VmHWM:")))
    try:
        return tuple(int(sizes[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM"))
    except (KeyError, ValueError):
        return None


def _moved(before: dict | None, now: dict | None) -> bool:
    """Whether the memory changed enough to be shown: its limit at all, its use or peak by a step (MEMORY_STEP)."""
    if before is None or now is None:
        return before != now
    if before["limit"] != now["limit"]:
        return True
    step = max(MEMORY_STEP, MEMORY_SHARE * (now["limit"] or now["used"] or 0))
    return any(
        (before[key] is None) != (now[key] is None) or (now[key] is not None and abs(now[key] - before[key]) >= step)
        for key in ("used", "peak")
    )
