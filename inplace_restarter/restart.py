"""The restart in place: the one place the inner kernel is replaced, however the restart was asked for.

``%restart`` (kernel.ProxyKernel._restart_cell), Jupyter's own restart
(ProxyKernel.shutdown_request) and the rescue of a dead or hung kernel
(rescue.Rescuer, which holds this object as jupyter_client's KernelRestarter
holds its manager) all call :meth:`InPlaceRestarter.restart`.  It owns "an
inner kernel is ready to serve" (requests wait on :attr:`ready` through a
restart), swaps the kernel, carries the client's subshells over and tells the
client what a restart means for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing as t
from collections.abc import Callable

if t.TYPE_CHECKING:
    from .inner import InnerKernel, InnerKernels
    from .job import Job
    from .subshells import Subshells

#: publish(msg_type, content, parent): a message of the proxy's own on the client's iopub
Publish = Callable[[str, dict, dict], None]


class InPlaceRestarter:
    """Replaces the inner kernel while the client stays connected."""

    def __init__(
        self,
        kernels: InnerKernels,
        subshells: Subshells,
        publish: Publish,
        log: logging.Logger,
        job: Job | None = None,
    ):
        """``job``: the Slurm job the kernel runs in, named in the restart's message."""
        self.kernels, self.subshells, self.log, self.job = kernels, subshells, log, job
        self._publish = publish
        #: set while an inner kernel serves; requests wait on it through a restart
        self.ready = asyncio.Event()
        self._callbacks: list[Callable[[InnerKernel], None]] = []
        #: a restart asked for by Jupyter (see restart_soon), until it is done
        self._soon: asyncio.Task | None = None

    def add_callback(self, callback: Callable[[InnerKernel], None]) -> None:
        """Call ``callback(inner)`` whenever a new inner kernel starts to serve, before requests reach it."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Serve with the first inner kernel."""
        self.use(await self.kernels.start())

    def use(self, inner: InnerKernel) -> None:
        self.kernels.use(inner)
        for callback in self._callbacks:
            callback(inner)
        self.ready.set()
        self.log.info("Inner kernel %s is ready", inner.pid)

    async def restart(self, cell: dict | None = None, cold: bool = False) -> None:
        """Replace the inner kernel with a new one; raises if it does not start.

        The old kernel shuts down while the new one starts; with standby the
        spare takes over at once, unless ``cold``.  The client is told what a
        restart means for it: the old kernel's comms are closed, and the
        kernel reports ``starting`` (never ``restarting``, which JupyterLab
        takes for a dead kernel restarted by the server).  The request
        ``cell`` that asked for it, if any, is told how long it took and
        parents the comm_closes.
        """
        started = time.time()
        old = self.kernels.current
        self.ready.clear()
        if old is not None and old.relay is not None:
            for comm_id in list(old.relay.comms):
                self._publish("comm_close", {"comm_id": comm_id, "data": {}}, cell or {})
            old.relay.comms.clear()
        try:
            new = await self.kernels.replace(cold)
        except BaseException:
            self.ready.set()
            raise
        await self.subshells.carry(new)
        self._publish("status", {"execution_state": "starting"}, {})
        message = f"Restarted the kernel in place in {time.time() - started:.1f} s"
        if self.job is not None:
            message += f" ({self.job.describe()})"
        # Normal operation: INFO, so that a client that shows the kernel's
        # stderr (jupyter console) does not print it a second time.
        self.log.info("%s; %s", message, timeline(started, new, old))
        if cell is not None:
            self.tell(message + "\n", cell, "stdout")
        self.use(new)

    async def restart_soon(self) -> None:
        """Begin a restart (after one under way) and return: Jupyter's restart does not wait for the kernel.

        Requests from now on wait for the new kernel.
        """
        await self.ready.wait()
        self.ready.clear()
        self._soon = asyncio.get_running_loop().create_task(self.restart())
        self._soon.add_done_callback(self._restarted_soon)

    def _restarted_soon(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("The kernel did not restart: %s", task.exception())

    def tell(self, text: str, cell: dict, name: str = "stderr") -> None:
        """Write into the output of request ``cell``, as the kernel's stdout or stderr."""
        self._publish("stream", {"name": name, "text": text}, cell)


def timeline(started: float, new: InnerKernel, old: InnerKernel | None) -> str:
    """Where a restart's time went, for the log: the new kernel's launch and readiness, the old one's end."""
    steps = {"new kernel launched": new.launched_at, "new kernel ready": new.ready_at}
    if old is not None:
        steps["old kernel gone"] = old.gone_at
    known = sorted((at, step) for step, at in steps.items() if at is not None)
    return "since it began: " + ", ".join(f"{step} at {at - started:.3f} s" for at, step in known)
