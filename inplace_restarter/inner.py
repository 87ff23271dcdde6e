"""The inner kernel's lifecycle: start it, know when it is ready or dead, stop it.

Each start makes a new incarnation with its own KernelManager and ports, so an
old kernel can still be shutting down while its successor starts.  Every
incarnation signs with the client's key, so that its output can reach the
client as it was sent (see relay).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import typing as t
import uuid
from pathlib import Path

import zmq.asyncio
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from jupyter_client.session import Session
from traitlets import Float, Instance
from traitlets.config import LoggingConfigurable

from . import kernelbase, kernelspec, launchers, prelaunch
from .death import Witness, describe_exit
from .launchers import LAUNCHER_GRACE, signal_leader, stop_launcher
from .prelaunch import Prelaunched
from .relay import InnerKernelDied, Pending, Relay

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from .iopub import IOPubRelay
    from .job import Job


class _OneSpec(KernelSpecManager):
    """Hands the inner kernel's spec to KernelManager, which looks specs up by name."""

    spec = Instance(KernelSpec)

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self.spec


def inner_kernel_spec(resource_dir: str | None, argv: list[str] | None = None, extra: list[str] = ()) -> KernelSpec:
    """The spec the inner kernel starts from, ``extra`` after its argv; raises kernelspec.SpecError."""
    fields = kernelspec.inner_spec_fields(resource_dir, argv, extra)
    known = {k: v for k, v in fields.items() if KernelSpec.class_traits().get(k) is not None}
    return KernelSpec(**{**known, "resource_dir": str(resource_dir or "")})


def new_manager(
    spec: KernelSpec,
    runtime_dir: Path,
    key: bytes,
    signature_scheme: str,
    encrypted: bool = False,
    prelaunched: Prelaunched | None = None,
    **kwargs,
) -> AsyncKernelManager:
    """A manager for one inner kernel: loopback, the client's key, a private connection file.

    ``encrypted`` (the client's link is): the kernel gets CurveZMQ keys too if
    its spec says it takes them (``metadata.supported_encryption``,
    jupyter_client's "auto"), so that another user on the host cannot read on
    the loopback what the network does not carry in plain text.  A kernel
    that does not say so listens unencrypted, and says so itself.  With
    ``prelaunched``, the manager of that kernel, which it takes over when it
    starts (prelaunch leaves out a kernel that would get keys).
    """
    if prelaunched is not None:
        manager = AsyncKernelManager(
            kernel_name="inner",
            kernel_spec_manager=_OneSpec(spec=spec),
            session=Session(key=key, signature_scheme=signature_scheme),
            connection_file=str(prelaunched.connection_file),
            transport_encryption="auto" if encrypted else "disabled",
            context=zmq.asyncio.Context.instance(),
            cache_ports=False,
            **kwargs,
        )
        manager.load_connection_file()
        kernelbase.written_by(manager)
        manager.provisioner = PrelaunchedProvisioner(
            prelaunched, kernel_id=str(uuid.uuid4()), kernel_spec=spec, parent=manager
        )
        return manager
    return AsyncKernelManager(
        kernel_name="inner",
        kernel_spec_manager=_OneSpec(spec=spec),
        session=Session(key=key, signature_scheme=signature_scheme),
        transport="tcp",
        ip="127.0.0.1",
        transport_encryption="auto" if encrypted else "disabled",
        connection_file=str(runtime_dir / f"inner-{uuid.uuid4()}.json"),
        # One context for all incarnations' managers (their clients share
        # another): a context of its own would start and stop an I/O thread
        # per restart.
        context=zmq.asyncio.Context.instance(),
        cache_ports=False,
        **prelaunch.free_ports(),
        **kwargs,
    )


def is_launcher(spec: KernelSpec) -> bool:
    """Whether the inner argv starts with a launcher (the proxy runs outside srun, ssh, ...)."""
    return bool(launchers.parse(spec.argv).launchers)


def kill_group(pid: int | None, pgid: int | None) -> None:
    """SIGKILL a kernel's process group (the kernel and what it started), or the kernel alone."""
    try:
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
        elif pid is not None:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def running_in_group(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that have not ended (zombies have), from /proc; none without it.

    Not ``killpg(pgid, 0)``: a zombie still counts there, and where nothing
    reaps orphans (a container's init) it stays.
    """
    running = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            running.append(int(entry.name))
    return running


class PrelaunchedProvisioner(LocalProvisioner):
    """Hands its KernelManager the kernel prelaunch started, if that is the kernel the manager would launch.

    The manager formats the command, environment and connection file itself
    and passes them here; the prelaunched process is taken only if they are
    the ones it was launched with, else it is stopped and the kernel launched
    as usual.
    """

    def __init__(self, prelaunched: Prelaunched, **kwargs):
        super().__init__(**kwargs)
        self.prelaunched: Prelaunched | None = prelaunched

    async def launch_kernel(self, cmd: list[str], **kwargs) -> dict:
        early, self.prelaunched = self.prelaunched, None
        if early is not None and self._launched_as(early, cmd, kwargs):
            self.process, self.pid, self.cwd = early.process, early.process.pid, kwargs.get("cwd")
            try:
                self.pgid = os.getpgid(self.pid)
            except OSError:
                self.pgid = None
            return self.connection_info
        if early is not None:
            self.log.info("The prelaunched inner kernel is not the one its spec starts now; launching again")
            prelaunch.stop(early.process, is_launcher(self.kernel_spec))
        return await super().launch_kernel(cmd, **kwargs)

    def _launched_as(self, early: Prelaunched, cmd: list[str], kwargs: dict) -> bool:
        written = json.loads(early.connection_file.read_text())
        info = {k: v.decode() if isinstance(v, bytes) else v for k, v in self.connection_info.items()}
        return (
            early.process.poll() is None
            and cmd == early.cmd
            and kwargs.get("env") == early.env
            and all(kwargs.get(k) == v for k, v in early.kwargs.items())
            and all(written.get(k) == v for k, v in info.items())
        )


class InnerKernel(LoggingConfigurable):
    """One run of the real kernel, reached on loopback, signing with the client's key."""

    #: every incarnation not yet closed, so that none outlives the proxy
    live: t.ClassVar[set[InnerKernel]] = set()

    startup_timeout = Float(
        60.0, config=True, help="Seconds the inner kernel may take to answer kernel_info after launch."
    )
    shutdown_grace = Float(
        1.0,
        config=True,
        help="Seconds between the shutdown_request and killing the inner kernel if it has not exited.",
    )
    launcher_grace = Float(
        LAUNCHER_GRACE,
        config=True,
        help="Seconds a launcher the proxy starts (srun, with the proxy outside it) has after SIGTERM "
        "to end its job, before it is killed.",
    )

    def __init__(
        self,
        spec: KernelSpec,
        runtime_dir: Path,
        session: Session,
        iopub: IOPubRelay,
        on_input_request: Callable[[dict, Pending], None],
        manager: AsyncKernelManager | None = None,
        job: Job | None = None,
        encrypted: bool = False,
        **kwargs,
    ):
        """``session`` is the client's (the kernel signs with its key); ``iopub`` relays the output.

        ``job`` is the Slurm job the proxy runs in, if any, to say whether its limits killed the kernel;
        ``encrypted``, whether the client's link is (see new_manager).
        """
        super().__init__(**kwargs)
        self._iopub, self._on_input_request, self.job = iopub, on_input_request, job
        self.manager = manager or new_manager(
            spec, runtime_dir, session.key, session.signature_scheme, encrypted, parent=self, log=self.log
        )
        InnerKernel.live.add(self)
        #: a launcher is stopped by SIGTERM to it alone, never killed with its process group
        self.launcher = is_launcher(self.manager.kernel_spec)
        self._process: subprocess.Popen | None = None
        self.relay: Relay | None = None
        self.kernel_info: dict = {}
        #: the session id in the headers of everything the kernel sends
        self.session_id: str = ""
        self.exited: asyncio.Future = asyncio.get_running_loop().create_future()
        #: time.time() once launched (a prelaunched kernel: once taken over), ready, and gone after shutdown
        self.launched_at: float | None = None
        self.ready_at: float | None = None
        self.gone_at: float | None = None
        self.pid: int | None = None
        self._pgid: int | None = None
        #: what is known of the process from its start, to say why it died
        self.witness: Witness | None = None

    async def start(self) -> None:
        """Launch the kernel and return once it answers and iopub is connected."""
        if not self.manager.has_kernel:
            await self.manager.start_kernel(**prelaunch.launch_kwargs(self.launcher))
        self.launched_at = time.time()
        process = getattr(self.manager.provisioner, "process", None)
        self.pid = self.manager.provisioner.pid if self.manager.provisioner else None
        self._pgid = getattr(self.manager.provisioner, "pgid", None)
        # Its memory cgroup can be found only while it lives.
        self.witness = Witness.of_pid(self.pid, self.job) if self.pid else Witness(None, self.job)
        self._watch(process)
        # Plain sockets, read by callbacks on the proxy's loop (see Relay); the
        # client's blocking methods are never called.  Iopub is read by the
        # iopub relay's thread.  One zmq context for all incarnations: a
        # context of its own would start and stop an I/O thread per restart.
        info = self.manager.get_connection_info(session=True)
        # As KernelManager.client does: the info carries CurveZMQ keys as text, the client takes bytes.
        info.update({k: v.encode() for k, v in info.items() if k.startswith("curve_") and isinstance(v, str)})
        client = BlockingKernelClient(**info, parent=self.manager, context=zmq.Context.instance())
        # The kernel binds its ports only once it has imported itself; zmq
        # retries a refused connection every 0.1 s by default.
        client.context.setsockopt(zmq.RECONNECT_IVL, 10)
        client.start_channels(iopub=False, hb=False)
        self.relay = Relay(client, self.exited, self.log, self._iopub, self._on_input_request, self.why_died)
        reply = await self.relay.wait_ready(self.startup_timeout)
        self.ready_at = time.time()
        self.kernel_info, self.session_id = reply["content"], reply["header"].get("session", "")

    def why_died(self, returncode: int | None) -> str:
        """Why the kernel died, in one sentence: its memory cgroup's OOM killer, the job's time limit, a signal..."""
        return self.witness.describe(returncode) if self.witness is not None else describe_exit(returncode)

    def _watch(self, process) -> None:
        """Resolve ``exited`` with the return code the moment the process ends."""
        self._process = process
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
            self._yield_cpu()
            self.relay.ask("shutdown_request", {"restart": False}, channel="control")
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), self.shutdown_grace)
            except TimeoutError:
                self.log.info("Inner kernel %s ignored shutdown_request; killing it", self.pid)
        if not self.launcher:
            self.kill()
        elif self._process is not None and not self.exited.done():
            await asyncio.get_running_loop().run_in_executor(
                None, stop_launcher, self._process, self.launcher_grace, self.log
            )
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), 5)
        except TimeoutError:
            # Only a lost loop registration of the exit watch gets here; a
            # restart must not wait on it forever, so reap the killed process.
            self.log.warning("Inner kernel %s: exit not noticed after SIGKILL; reaping it", self.pid)
            returncode = await asyncio.get_running_loop().run_in_executor(None, self._process.wait)
            if not self.exited.done():
                self.exited.set_result(returncode)
        if not self.launcher:
            await self._group_gone()
        self.gone_at = time.time()
        self.close()
        await self.manager.cleanup_resources()

    async def _group_gone(self, timeout: float = 5) -> None:
        """Wait until the SIGKILL reached every process of the kernel's group, so none of them runs on.

        A killed process ends when next scheduled, which a busy machine can
        delay; "Restarted" must mean the old kernel's processes are gone.
        """
        if not self._pgid:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not running_in_group(self._pgid):
                return
            await asyncio.sleep(0.005)
        self.log.warning("Processes of inner kernel %s's group still there %g s after SIGKILL", self.pid, timeout)

    def _yield_cpu(self) -> None:
        """Lower the priority of a kernel on its way out, so that its successor starts first.

        A restart shuts the old kernel down while the new one starts; their
        CPU contends on a small allocation.
        """
        if self.pid is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, self.pid, 19)
            except OSError:
                pass

    def kill(self) -> None:
        """SIGKILL the kernel's process group; a launcher's leader only, after SIGTERM and its grace."""
        if not self.launcher:
            kill_group(self.pid, self._pgid)
        elif self._process is not None:
            stop_launcher(self._process, self.launcher_grace, self.log)

    @classmethod
    def kill_all(cls) -> None:
        """At exit: every kernel at once, then each launcher (which first gets SIGTERM all at once)."""
        for inner in list(cls.live):
            if inner.launcher and inner._process is not None:
                signal_leader(inner._process, signal.SIGTERM)
        for inner in sorted(cls.live, key=lambda inner: inner.launcher):
            inner.kill()

    def close(self) -> None:
        """Stop relaying and remove the connection file."""
        InnerKernel.live.discard(self)
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.manager.cleanup_connection_file()


class InnerKernels(LoggingConfigurable):
    """Every inner kernel of one proxy: the one serving, a spare with standby, old ones shutting down.

    The one place that knows which inner kernel is current.  It starts,
    swaps and stops kernels; what a restart means to the client is the
    proxy's business.
    """

    def __init__(
        self,
        spec: KernelSpec,
        session: Session,
        iopub: IOPubRelay,
        on_input_request: Callable[[dict, Pending], None],
        standby: bool = False,
        job: Job | None = None,
        encrypted: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._spec, self._session, self._iopub, self._on_input_request = spec, session, iopub, on_input_request
        self.standby, self.job, self.encrypted = standby, job, encrypted
        #: the kernel serving the client, if any
        self.current: InnerKernel | None = None
        #: shutting down: a kernel that exits now is not rescued, and no spare is started
        self.stopping = False
        self._prelaunched: Prelaunched | None = None
        self._runtime_dir: Path | None = None
        #: the spare kernel being started or waiting, with standby
        self._spare: asyncio.Task | None = None
        #: old kernels shutting down in the background after a swap to the spare
        self._retiring: set[asyncio.Task] = set()

    def adopt(self, prelaunched: Prelaunched) -> None:
        """Take over a kernel launched before the proxy was ready (see prelaunch) as the first one."""
        self._prelaunched, self._runtime_dir = prelaunched, prelaunched.runtime_dir

    async def start(self) -> InnerKernel:
        """The first kernel, once it answers."""
        if self._runtime_dir is None:
            self._runtime_dir = prelaunch.private_runtime_dir()
        early, self._prelaunched, manager = self._prelaunched, None, None
        if early is not None:
            key, scheme = self._session.key, self._session.signature_scheme
            manager = new_manager(self._spec, early.runtime_dir, key, scheme, self.encrypted, early, parent=self)
        return await self._new(manager)

    async def _new(self, manager: AsyncKernelManager | None = None, attempts: int = 3) -> InnerKernel:
        """Start a kernel, again on fresh ports if it dies while starting.

        jupyter_client picks free ports that the kernel binds only later, so
        another socket can take one in between; the kernel then exits.
        """
        for attempt in range(1, attempts + 1):
            inner = InnerKernel(
                self._spec,
                self._runtime_dir,
                self._session,
                self._iopub,
                self._on_input_request,
                manager=manager,
                job=self.job,
                encrypted=self.encrypted,
                parent=self,
                log=self.log,
            )
            manager = None
            try:
                await inner.start()
                return inner
            except InnerKernelDied as died:
                inner.close()
                if attempt == attempts:
                    raise RuntimeError(f"{died} while starting, {attempts} times") from None
                self.log.warning("%s while starting; trying again", died)
            except BaseException:
                inner.kill()
                inner.close()
                raise
        raise AssertionError("unreachable")

    def use(self, inner: InnerKernel) -> None:
        """Make ``inner`` the current kernel; with standby, start the next spare."""
        self.current = inner
        if self.standby and self._spare is None and not self.stopping:
            self._spare = asyncio.get_running_loop().create_task(self._new())

    async def replace(self, cold: bool = False) -> InnerKernel:
        """A new kernel for the current one, which shuts down; there is no current kernel meanwhile.

        The spare takes over at once, unless ``cold``, and the old kernel
        shuts down in the background; else the new kernel starts while the
        old one shuts down.  Raises if the new kernel does not start.
        """
        old, self.current = self.current, None
        spare = await self._take_spare()
        if spare is not None and cold:
            self._retire(spare)
            spare = None
        if spare is not None:
            if old is not None:
                self._retire(old)
            return spare
        _, new = await asyncio.gather(
            old.shutdown() if old is not None else asyncio.sleep(0), self._new(), return_exceptions=True
        )
        if isinstance(new, BaseException):
            raise new
        return new

    def drop(self) -> None:
        """Serve no kernel (the current one died too often): only a restart starts one again."""
        inner, self.current = self.current, None
        if inner is not None:
            inner.close()

    async def _take_spare(self) -> InnerKernel | None:
        """The spare kernel, once started, if there is a live one."""
        task, self._spare = self._spare, None
        if task is None:
            return None
        try:
            spare = await task
        except Exception as e:
            self.log.warning("The spare kernel did not start: %s", e)
            return None
        if spare.exited.done():
            spare.close()
            return None
        return spare

    def _retire(self, inner: InnerKernel) -> None:
        task = asyncio.get_running_loop().create_task(inner.shutdown())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def shutdown(self) -> None:
        """Shut every kernel down, and remove their connection files' folder."""
        self.stopping = True
        spare = await self._take_spare()
        await asyncio.gather(
            *(inner.shutdown() for inner in (self.current, spare) if inner is not None), *self._retiring
        )
        self._remove_runtime_dir()

    def kill_all(self) -> None:
        """Last resort at exit: nothing the proxy started may outlive it."""
        self.stopping = True
        InnerKernel.kill_all()
        self._remove_runtime_dir()

    def _remove_runtime_dir(self) -> None:
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
