"""Dying and hung inner kernels: noticed, explained, restarted in place.

As jupyter_client's ``KernelRestarter`` holds its manager and calls
``restart_kernel``, the Rescuer holds the restart mechanism
(restart.InPlaceRestarter) and calls its ``restart``; the limits and the
patience (RescuePolicy, configurable) are kept apart from both.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing as t
from collections import deque
from collections.abc import Callable

from traitlets import Bool, Float, Integer
from traitlets.config import LoggingConfigurable

if t.TYPE_CHECKING:
    from .inner import InnerKernel
    from .restart import InPlaceRestarter


class RescuePolicy(LoggingConfigurable):
    """Limits on automatic restarts, and the patience given to interrupts."""

    restart_limit = Integer(
        5,
        config=True,
        help="Automatic restarts of a dead kernel allowed within restart_window seconds; "
        "past that the proxy stops restarting and waits for %restart.",
    )
    restart_window = Float(60.0, config=True, help="Seconds over which restart_limit counts restarts.")
    interrupt_grace = Float(
        5.0,
        config=True,
        help="Seconds a running cell has to end after an interrupt before the kernel is called hung.",
    )
    restart_hung = Bool(
        False,
        config=True,
        help="Restart a hung kernel as soon as interrupt_grace has passed, instead of waiting for a second interrupt.",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._restarts: deque[float] = deque()

    def may_restart(self) -> bool:
        """Whether one more automatic restart is allowed now; counts it if so."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.restart_window:
            self._restarts.popleft()
        if len(self._restarts) >= self.restart_limit:
            return False
        self._restarts.append(now)
        return True


class Rescuer:
    """Restarts the proxy's inner kernel when it dies, or hangs through interrupts."""

    def __init__(self, policy: RescuePolicy, restarter: InPlaceRestarter, log: logging.Logger):
        self.policy, self.restarter, self.log = policy, restarter, log
        self.kernels = restarter.kernels
        #: the main shell's cell being forwarded, if any: the proxy sets it
        self.running_cell: dict | None = None
        #: the running cell whose kernel ignored an interrupt
        self._hung: dict | None = None
        #: what to tell the user at the top of the next cell (a kernel that died while idle, the job's end)
        self._notice: str | None = None
        #: the kernel that died and the restart that follows, once begun
        self._rescue: tuple[InnerKernel, asyncio.Task] | None = None
        #: the kernel stopped on purpose as hung, and why, for the request it cut short
        self._stopped: tuple[InnerKernel, str] | None = None
        self._death_callbacks: list[Callable[[str], None]] = []
        restarter.add_callback(self._watch_soon)

    def add_death_callback(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when the inner kernel dies by itself, before it is restarted."""
        self._death_callbacks.append(callback)

    def take_notice(self) -> str | None:
        """What to show at the top of the next cell, once."""
        notice, self._notice = self._notice, None
        return notice

    def _watch_soon(self, inner: InnerKernel) -> None:
        asyncio.get_running_loop().create_task(self.watch(inner))

    async def watch(self, inner: InnerKernel) -> None:
        """Notice the moment the inner kernel dies, even while nothing runs."""
        returncode = await asyncio.shield(inner.exited)
        if self.kernels.current is inner and not self.kernels.stopping:
            await self.after_death(inner, inner.why_died(returncode), self.running_cell)

    async def after_death(self, inner: InnerKernel, reason: str, cell: dict | None) -> str:
        """Restart a kernel that died by itself; return what the failed request should say.

        Both the death watcher and a request that was waiting on the kernel
        call this; the first call does the restart, the other waits for it.
        """
        if self._rescue is None or self._rescue[0] is not inner:
            self._rescue = (inner, asyncio.ensure_future(self._restart_dead(inner, reason, cell)))
        return await asyncio.shield(self._rescue[1])

    async def _restart_dead(self, inner: InnerKernel, reason: str, cell: dict | None) -> str:
        if self.kernels.current is not inner or self.kernels.stopping:
            # Stopped on purpose: %restart, a hung kernel, or shutdown.
            await self.restarter.ready.wait()
            stopped = self._stopped
            return stopped[1] if stopped is not None and stopped[0] is inner else reason
        self.log.warning("%s; restarting it in place", reason)
        for callback in self._death_callbacks:
            callback(reason)
        if not self.policy.may_restart():
            self.kernels.drop()
            message = (
                f"{reason}. It died {self.policy.restart_limit} times within "
                f"{self.policy.restart_window:g} s, so it is not restarted again: run %restart to start it."
            )
            self._tell(message, cell)
            return message
        if cell is not None:
            self.restarter.tell(f"{reason}; restarting it in place.\n", cell)
        else:
            self._tell(
                f"{reason} at {time.strftime('%H:%M:%S')}, and was restarted in place: its variables are gone.", None
            )
        try:
            await self.restarter.restart(cell)
        except Exception as e:
            message = f"{reason}, and it did not restart: {e}. Run %restart to try again."
            self._tell(message, cell)
            return message
        return f"{reason}; it was restarted in place"

    def _tell(self, message: str, cell: dict | None) -> None:
        if cell is not None:
            self.restarter.tell(message + "\n", cell)
        else:
            self._notice = (self._notice or "") + message + "\n"

    async def interrupt(self) -> None:
        """Interrupt; a cell that outlives the interrupt makes the kernel hung.

        A second interrupt of a hung kernel restarts it in place: the only way
        out when the shell is stuck in code that ignores SIGINT.
        """
        inner, running = self.kernels.current, self.running_cell
        if inner is None:
            return
        if running is not None and self._hung is running:
            await self._restart_hung(inner, running)
            return
        await inner.interrupt()
        if running is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(self.policy.interrupt_grace, lambda: loop.create_task(self._check_hung(inner, running)))

    async def _check_hung(self, inner: InnerKernel, running: dict) -> None:
        if self.running_cell is not running or self.kernels.current is not inner or self._hung is running:
            return
        if self.policy.restart_hung:
            await self._restart_hung(inner, running)
            return
        self._hung = running
        self.restarter.tell(
            "The kernel does not respond to interrupts. Interrupt again to restart it in place "
            "(its variables will be lost).\n",
            running,
        )

    async def _restart_hung(self, inner: InnerKernel, running: dict) -> None:
        self._stopped = (inner, "The kernel did not respond to interrupts, so it was restarted in place")
        self._hung = None
        try:
            await self.restarter.restart(running)
        except Exception as e:
            self.restarter.tell(f"The kernel did not restart: {e}\n", running)
