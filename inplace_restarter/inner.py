"""The inner kernel's lifecycle: start it, know when it is ready or dead, stop it.

Each start makes a new incarnation with its own KernelManager and ports, so an
old kernel can still be shutting down while its successor starts.  Every
incarnation signs with the client's key, so that its output can reach the
client as it was sent (see relay).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import typing as t
import uuid
from pathlib import Path

import zmq.asyncio
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import Session
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Float, Instance
from traitlets.config import LoggingConfigurable

from . import kernelspec, launchers
from .death import Witness, describe_exit
from .launchers import LAUNCHER_GRACE, die_with_parent, signal_leader, stop_launcher, stop_with_parent
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


def inner_kernel_spec(resource_dir: str | None, argv: list[str] | None = None) -> KernelSpec:
    """The spec the inner kernel starts from; raises kernelspec.SpecError."""
    fields = kernelspec.inner_spec_fields(resource_dir, argv)
    known = {k: v for k, v in fields.items() if KernelSpec.class_traits().get(k) is not None}
    return KernelSpec(**{**known, "resource_dir": str(resource_dir or "")})


def private_runtime_dir() -> Path:
    """A folder of the proxy's own (mode 0700) for its inner kernels' connection files.

    Its name carries the host and the proxy's pid, so that folders left by
    proxies killed with SIGKILL (which cannot clean up) are removed by the
    next proxy on the same host. The runtime folder is often in a home shared
    by every node: a pid says nothing about another host's processes, so
    another host's folders are never touched.
    """
    root = Path(jupyter_runtime_dir())
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    own = re.compile(rf"inplace-restarter-{re.escape(host)}-(\d+)-[^-]+")
    for folder in root.glob(f"inplace-restarter-{glob_escape(host)}-*"):
        match = own.fullmatch(folder.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"inplace-restarter-{host}-{os.getpid()}-", dir=root))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def new_manager(
    spec: KernelSpec, runtime_dir: Path, key: bytes, signature_scheme: str, encrypted: bool = False, **kwargs
) -> AsyncKernelManager:
    """A manager for one inner kernel: loopback, the client's key, a private connection file.

    ``encrypted`` (the client's link is): the kernel gets CurveZMQ keys too if
    its spec says it takes them (``metadata.supported_encryption``,
    jupyter_client's "auto"), so that another user on the host cannot read on
    the loopback what the network does not carry in plain text.  A kernel
    that does not say so listens unencrypted, and says so itself.
    """
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
        **_ports(),
        **kwargs,
    )


#: where a connection file keeps each channel's port
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")


def _ports() -> dict:
    """Free loopback ports for a kernel, below the range connect() takes source ports from.

    jupyter_client picks ports from that ephemeral range, where the proxy's
    own attempts to reach a kernel that is not listening yet take their
    source ports: the kernel, or remote_ikernel's ssh tunnel, may then find
    its port taken (a tunnel fails without a word).  Without the range (not
    Linux), jupyter_client chooses.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    ports: set[int] = set()
    while len(ports) < len(PORT_NAMES):
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.add(port)
    return {"cache_ports": False, **dict(zip(PORT_NAMES, ports, strict=True))}


def is_launcher(spec: KernelSpec) -> bool:
    """Whether the inner argv starts with a launcher (the proxy runs outside srun, ssh, ...)."""
    return bool(launchers.parse(spec.argv).launchers)


def launch_kwargs(spec: KernelSpec) -> dict:
    kwargs: dict = {"cwd": os.getcwd()}
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = stop_with_parent if is_launcher(spec) else die_with_parent
    return kwargs


def kill_group(pid: int | None, pgid: int | None) -> None:
    """SIGKILL a kernel's process group (the kernel and what it started), or the kernel alone."""
    try:
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
        elif pid is not None:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_if_running(manager: AsyncKernelManager) -> None:
    """At exit: a prelaunched kernel the proxy did not take over (it failed first) goes too."""
    process = getattr(manager.provisioner, "process", None)
    if process is None or process.poll() is not None:
        return
    if is_launcher(manager.kernel_spec):
        stop_launcher(process)
    else:
        kill_group(process.pid, getattr(manager.provisioner, "pgid", None))


def _option(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value of option ``names`` in ``argv`` (``-f X``, ``-f=X``, ``--f X``...), else None."""
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name in names:
            if equals:
                return value
            if index + 1 < len(argv):
                return argv[index + 1]
    return None


def prelaunch(argv: list[str]) -> tuple[AsyncKernelManager, Path] | None:
    """Launch the inner kernel before the proxy imports ipykernel, so both start at once.

    Only the proxy's own arguments that say which kernel to start and the
    key in its connection file are read here; on anything unusual this
    returns None and the proxy starts the kernel later, reporting errors the
    normal way.
    """
    resource_dir, inner_argv = None, None
    if "--" in argv:
        inner_argv = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    resource_dir = _option(argv, ("--resource-dir", "--ProxyKernelApp.resource_dir"))
    connection_file = _option(argv, ("-f", "--f", "--ProxyKernelApp.connection_file"))
    if not (resource_dir or inner_argv) or not connection_file:
        return None
    try:
        spec = inner_kernel_spec(resource_dir, inner_argv)
        info = json.loads(Path(connection_file).read_text())
        # The connection file's key and scheme are the ones the proxy will use.
        key, scheme = info["key"].encode(), info["signature_scheme"]
    except (kernelspec.SpecError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    runtime_dir = private_runtime_dir()
    atexit.register(shutil.rmtree, runtime_dir, ignore_errors=True)
    manager = new_manager(spec, runtime_dir, key, scheme, encrypted=bool(info.get("curve_secretkey")))
    try:
        asyncio.run(manager.start_kernel(**launch_kwargs(spec)))
    except Exception:
        return None
    atexit.register(kill_if_running, manager)
    return manager, runtime_dir


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
        self.pid: int | None = None
        self._pgid: int | None = None
        #: what is known of the process from its start, to say why it died
        self.witness: Witness | None = None

    async def start(self) -> None:
        """Launch the kernel and return once it answers and iopub is connected."""
        if not self.manager.has_kernel:
            await self.manager.start_kernel(**launch_kwargs(self.manager.kernel_spec))
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
        self.close()
        await self.manager.cleanup_resources()

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
        self._first: AsyncKernelManager | None = None
        self._runtime_dir: Path | None = None
        #: the spare kernel being started or waiting, with standby
        self._spare: asyncio.Task | None = None
        #: old kernels shutting down in the background after a swap to the spare
        self._retiring: set[asyncio.Task] = set()

    def adopt(self, manager: AsyncKernelManager, runtime_dir: Path) -> None:
        """Take over a kernel launched before the proxy was ready (see prelaunch) as the first one."""
        self._first, self._runtime_dir = manager, runtime_dir

    async def start(self) -> InnerKernel:
        """The first kernel, once it answers."""
        if self._runtime_dir is None:
            self._runtime_dir = private_runtime_dir()
        manager, self._first = self._first, None
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
