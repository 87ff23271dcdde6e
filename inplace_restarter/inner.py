"""The inner kernel's lifecycle: start it, know when it is ready or dead, stop it.

Each start makes a new incarnation with its own KernelManager, ports and key,
so an old kernel can still be shutting down while its successor starts.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import uuid
from pathlib import Path

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from traitlets import Float, Instance
from traitlets.config import LoggingConfigurable

from .relay import Relay


class _OneSpec(KernelSpecManager):
    """Hands the inner kernel's spec to KernelManager, which looks specs up by name."""

    spec = Instance(KernelSpec)

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self.spec


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the proxy dies, even by SIGKILL."""
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class InnerKernel(LoggingConfigurable):
    """One run of the real kernel, reached on loopback with a private key."""

    startup_timeout = Float(
        60.0, config=True, help="Seconds the inner kernel may take to answer kernel_info after launch."
    )
    shutdown_grace = Float(
        1.0,
        config=True,
        help="Seconds between the shutdown_request and killing the inner kernel if it has not exited.",
    )

    def __init__(self, spec: KernelSpec, runtime_dir: Path, proxy, **kwargs):
        super().__init__(**kwargs)
        self.proxy = proxy
        self.manager = AsyncKernelManager(
            kernel_name="inner",
            kernel_spec_manager=_OneSpec(spec=spec),
            transport="tcp",
            ip="127.0.0.1",
            connection_file=str(runtime_dir / f"inner-{uuid.uuid4()}.json"),
            parent=self,
            log=self.log,
        )
        self.relay: Relay | None = None
        self.kernel_info: dict = {}
        self.exited: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pid: int | None = None
        self._pgid: int | None = None
        #: why the proxy stopped this kernel on purpose, for the request it cut short
        self.stop_reason: str | None = None
        #: the restart that follows this kernel's unexpected death, once begun
        self.rescue: asyncio.Task | None = None

    async def start(self) -> None:
        """Launch the kernel and return once it answers and iopub is connected."""
        kwargs = {"cwd": os.getcwd()}
        if sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = _die_with_parent
        await self.manager.start_kernel(**kwargs)
        process = getattr(self.manager.provisioner, "process", None)
        self.pid = self.manager.provisioner.pid if self.manager.provisioner else None
        self._pgid = getattr(self.manager.provisioner, "pgid", None)
        self._watch(process)
        client = self.manager.client()
        client.start_channels(hb=False)
        self.relay = Relay(client, self.proxy, self.exited, self.log)
        self.kernel_info = await self.relay.wait_ready(self.startup_timeout)

    def _watch(self, process) -> None:
        """Resolve ``exited`` with the return code the moment the process ends."""
        loop = asyncio.get_running_loop()

        def reap() -> None:
            if not self.exited.done():
                self.exited.set_result(process.wait())

        try:
            fd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            # No pidfd (old Linux, macOS): a thread blocks in wait() instead.
            waiter = loop.run_in_executor(None, process.wait)
            waiter.add_done_callback(lambda f: loop.call_soon_threadsafe(reap))
            return

        def on_exit() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            reap()

        loop.add_reader(fd, on_exit)

    async def interrupt(self) -> None:
        """Interrupt as the inner kernel's spec says: SIGINT or interrupt_request."""
        if not self.exited.done():
            await self.manager.interrupt_kernel()

    async def shutdown(self) -> None:
        """Ask the kernel to shut down, kill it after the grace period, clean up."""
        if not self.exited.done() and self.relay is not None:
            msg = self.manager.session.msg("shutdown_request", {"restart": False})
            self.relay.send(msg, [], channel="control")
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), self.shutdown_grace)
            except asyncio.TimeoutError:
                self.log.info("Inner kernel %s ignored shutdown_request; killing it", self.pid)
        self.kill()
        await self.exited
        self.close()
        await self.manager.cleanup_resources()

    def kill(self) -> None:
        """SIGKILL the kernel's process group: the kernel and what it started."""
        target = self._pgid or self.pid
        if target is None:
            return
        try:
            if self._pgid:
                os.killpg(self._pgid, signal.SIGKILL)
            else:
                os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Stop relaying and remove the connection file."""
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.manager.cleanup_connection_file()
