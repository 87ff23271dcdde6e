"""The kernel process: binds the sockets the client connects to, then runs the proxy.

A kernel's side of the connection (the connection file, CURVE, the heartbeat,
the control thread, exiting with the parent) is put together from ipykernel's
own parts, as its ``IPKernelApp`` does.  The proxy does not use
``IPKernelApp`` itself: that is an IPython application, and importing it
brings in IPython's whole shell, which the proxy never runs.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import signal
import socket
import stat
import sys
import threading
import time
import typing as t
from pathlib import Path

import zmq
from ipykernel.control import ControlThread
from ipykernel.heartbeat import Heartbeat
from jupyter_client.connect import ConnectionFileMixin, write_connection_file
from jupyter_client.session import Session, session_aliases, session_flags
from jupyter_core.paths import jupyter_config_path, jupyter_runtime_dir
from tornado.ioloop import IOLoop
from traitlets import Any, Bool, Integer, List, Unicode
from traitlets.config import Application, catch_config_error
from traitlets.utils import filefind
from zmq.eventloop.zmqstream import ZMQStream

from . import kernelspec, reach
from .inner import InnerKernel, inner_kernel_spec
from .iopub import IOPubRelay
from .job import Job, JobNotices
from .jobstate import JobState
from .kernel import ProxyKernel
from .provisioner import RESTART_FLAG
from .rescue import RescuePolicy


class ProxyKernelApp(Application, ConnectionFileMixin):
    """``python -m inplace_restarter -f CONNECTION_FILE --resource-dir=SPEC_DIR``."""

    name = "inplace_restarter"
    description = """\
Run as a kernel: relay to the kernel of SPEC_DIR/kernel.json (or the argv
given after '--') and restart it in place on %restart.  Configurable in
inplace_restarter_config.py in the Jupyter config folders.

To put the proxy in front of your kernelspecs, use the commands instead:
python -m inplace_restarter list|install|remove|wizard --help"""
    classes = [ProxyKernel, RescuePolicy, InnerKernel, Job, JobNotices, JobState, Session]

    aliases = {
        **Application.aliases,
        **session_aliases,
        "f": "ProxyKernelApp.connection_file",
        "ip": "ProxyKernelApp.ip",
        "transport": "ProxyKernelApp.transport",
        "shell": "ProxyKernelApp.shell_port",
        "iopub": "ProxyKernelApp.iopub_port",
        "stdin": "ProxyKernelApp.stdin_port",
        "control": "ProxyKernelApp.control_port",
        "hb": "ProxyKernelApp.hb_port",
        "resource-dir": "ProxyKernelApp.resource_dir",
        reach.REPORT_OPTION[2:]: "ProxyKernelApp.report_to",
    }
    flags = {
        **Application.flags,
        **session_flags,
        "standby": ({"ProxyKernel": {"standby": True}}, "Keep a spare kernel started, for a %restart at once."),
        RESTART_FLAG: (
            {"ProxyKernel": {"jupyter_restarts_in_place": True}},
            "Given by inplace_restarter's provisioner, which keeps the proxy on Jupyter's own restart.",
        ),
    }

    resource_dir = Unicode(
        "", config=True, help="Folder of the kernel.json whose saved original argv starts the inner kernel."
    )
    inner_argv = List(
        Unicode(),
        config=True,
        help="The inner kernel's argv, overriding the kernel.json's (also given after '--').",
    )
    parent_pid = Integer(
        int(os.environ.get("JPY_PARENT_PID") or 0),
        config=True,
        help="Set (by jupyter_client) to exit when the process that started the kernel is gone; 0 for never.",
    )
    bind_ip = Unicode(
        "",
        config=True,
        help="Across nodes: this node's address that the Jupyter server reaches, to bind the client's sockets on "
        "instead of the one found by route toward the server's host. Not the connection file's --ip, which "
        "the file overrides and which names the server's side.",
    )
    allow_unencrypted_across_nodes = Bool(
        False,
        config=True,
        help="Bind the client's sockets on a routable address without CurveZMQ keys: code and outputs then "
        "cross the network in plain text, readable and forgeable by anyone on it.",
    )
    report_to = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Given by inplace_restarter's provisioner when a launcher (srun, ssh, mpirun) may run the kernel on "
        "another host: the Jupyter server host's addresses, comma separated. The proxy binds toward the first "
        "it has a route to and prints where it listens in one signed line on stdout, which the launcher carries "
        "back to the server.",
    )
    prelaunched = Any(None, help="The inner kernel launched before the app (a prelaunch.Prelaunched), if any.")
    #: time.time() of each step of the start, logged once the first inner kernel is ready
    timeline: dict[str, float]
    kernel_arguments = List(
        Unicode(),
        help="Arguments after the proxy's own (a client's extra_arguments): the inner kernel's, after its argv.",
    )
    #: the server's addresses when the provisioner asked for a report of where the proxy is (see reach)
    server_ips: list[str] | None = None

    kernel = Any()
    #: the channels, each with a ``<name>_port`` trait
    ports = ("shell", "iopub", "stdin", "control", "hb")

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        self.timeline = {"imports done": time.time()}
        if self.prelaunched is not None:
            self.timeline["inner kernel launched"] = self.prelaunched.at
        super().initialize(argv)
        self.load_config_file(f"{self.name}_config", path=jupyter_config_path())
        # traitlets filters at the handler; at the logger, every log.debug on
        # the relay path would still build a record.
        self.log.setLevel(self.log_level)
        if self.extra_args:
            self.inner_argv = self.extra_args
        try:
            inner_spec = inner_kernel_spec(self.resource_dir, self.inner_argv, self.kernel_arguments)
        except kernelspec.SpecError as e:
            self.log.critical("%s", e)
            self.exit(2)
        self.server_ips = reach.requested(self.report_to)
        self.init_connection_file()
        self.init_reach()
        self.init_sockets()
        self.timeline["sockets bound"] = time.time()
        self.write_connection_file()
        self.report()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.kernel = ProxyKernel.instance(
            parent=self,
            session=self.session,
            shell_stream=ZMQStream(self.shell_socket),
            control_stream=ZMQStream(self.control_socket, self.control_thread.io_loop),
            control_thread=self.control_thread,
            iopub_thread=self.iopub,
            iopub_socket=self.iopub.background_socket,
            stdin_socket=self.stdin_socket,
            log=self.log,
            inner_spec=inner_spec,
            encrypted=self.curve_secretkey is not None,
        )
        self.kernel.record_ports({f"{name}_port": getattr(self, f"{name}_port") for name in self.ports})
        if self.prelaunched is not None:
            self.kernel.adopt(self.prelaunched)
        self.kernel.restarter.add_callback(self._log_timeline)

    def _log_timeline(self, inner: InnerKernel) -> None:
        """Once: how long each step of the start took, the first inner kernel's launch among them.

        The proxy's start is what a client waits for before its first reply;
        this says where that time went (``bench/run.py --timeline`` reads it).
        """
        if "inner kernel ready" in self.timeline:
            return
        self.timeline.setdefault("inner kernel launched", inner.launched_at)
        self.timeline["inner kernel ready"] = time.time()
        started = process_start() or min(self.timeline.values())
        steps = ", ".join(
            f"{step} at {at - started:.3f} s" for step, at in sorted(self.timeline.items(), key=lambda i: i[1])
        )
        self.log.info("Startup, since the process started: %s", steps)

    def init_connection_file(self) -> None:
        """Read the ports and key the client chose; without a file, pick them and write one."""
        if not self.connection_file:
            self.connection_file = str(Path(jupyter_runtime_dir()) / f"kernel-{os.getpid()}.json")
        try:
            self.connection_file = filefind(self.connection_file, [".", jupyter_runtime_dir()])
        except OSError:
            if self.server_ips is not None:
                self.log.critical(
                    "%s cannot see the connection file %s: give Jupyter a runtime folder shared with the node "
                    "(JUPYTER_RUNTIME_DIR in the Jupyter server's environment)",
                    socket.gethostname(),
                    self.connection_file,
                )
                self.exit(2)
            Path(self.connection_file).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        try:
            self.load_connection_file()
        except Exception as e:
            self.log.critical("Cannot read the connection file %s: %s", self.connection_file, e)
            self.exit(1)

    def init_reach(self) -> None:
        """Across nodes: bind on this node's address toward the server, on ports of its own, encrypted.

        The connection file's ip and ports are the server host's; on another
        host they are replaced by the address the server reaches and ports
        picked here, which :meth:`report` tells the server.
        """
        if self.server_ips is None:
            return
        try:
            ip = self.bind_ip or reach.choose_bind_ip(self.server_ips)
        except reach.ReachError as e:
            self.log.critical("%s", e)
            self.exit(2)
        if ip is None:
            return
        try:
            with socket.socket() as probe:
                probe.bind((ip, 0))
        except OSError as e:
            self.log.critical(
                "Cannot listen on %s on %s (ProxyKernelApp.bind_ip): %s", ip, socket.gethostname(), e.strerror
            )
            self.exit(2)
        if self.transport != "tcp":
            self.log.critical(
                "The kernel runs on another host than the server: use the tcp transport, not %s", self.transport
            )
            self.exit(2)
        routable = not ipaddress.ip_address(ip).is_loopback
        if routable and self.curve_secretkey is None and not self.allow_unencrypted_across_nodes:
            self.log.critical(
                "Refusing to bind on %s without CurveZMQ keys in the connection file (start the kernel with "
                "inplace_restarter's provisioner, which adds them, or set "
                "ProxyKernelApp.allow_unencrypted_across_nodes=True to send code and outputs in plain text)",
                ip,
            )
            self.exit(2)
        self.ip = ip
        for name in self.ports:
            setattr(self, f"{name}_port", 0)

    def report(self) -> None:
        """Tell the server where the client's sockets are: one signed line, written at once, on stdout."""
        if self.server_ips is None:
            return
        info = {
            "ip": self.ip,
            "transport": self.transport,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            **{f"{name}_port": getattr(self, f"{name}_port") for name in self.ports},
        }
        line = reach.report_line(info, self.session.key, self.session.signature_scheme)
        # One write: the inner kernel shares this stdout, and a pipe keeps a write this short whole.
        os.write(sys.stdout.fileno(), (line + "\n").encode())

    def init_sockets(self) -> None:
        if self.curve_secretkey is not None:
            self.log.info("Using CurveZMQ transport encryption")
        elif self.transport == "tcp":
            self.log.warning(
                "Kernel is running over TCP without encryption: code and outputs are sent in plain text."
                " Use IPC transport or CurveZMQ keys provisioned by the kernel manager to encrypt them."
            )
        self.context = zmq.Context()
        atexit.register(self.close)
        self.shell_socket, self.stdin_socket, self.control_socket = (
            self._bound(zmq.ROUTER, name) for name in ("shell", "stdin", "control")
        )
        for router in (self.shell_socket, self.stdin_socket, self.control_socket):
            # ipykernel#270: a client that reconnects with the same identity takes over.
            router.router_handover = 1
        self.iopub = IOPubRelay(self._bound(zmq.XPUB, "iopub"), self.session, self.context)
        self.iopub.start()
        # Its own context, as ipykernel's: the heartbeat must not wait on the GIL.
        self.heartbeat = Heartbeat(
            zmq.Context(),
            (self.transport, self.ip, self.hb_port),
            curve_publickey=self.curve_publickey,
            curve_secretkey=self.curve_secretkey,
        )
        self.hb_port = self.heartbeat.port
        self.heartbeat.start()
        self.control_thread = ControlThread(daemon=True)
        self.control_thread.start()

    def _bound(self, kind: int, name: str) -> zmq.Socket:
        """A socket of ``kind`` bound to the port of channel ``name``; port 0 picks one."""
        socket = self.context.socket(kind)
        socket.linger = 1000
        if self.curve_secretkey is not None:
            socket.curve_secretkey = self.curve_secretkey
            socket.curve_publickey = self.curve_publickey
            socket.curve_server = True
        port = getattr(self, f"{name}_port")
        if self.transport == "tcp":
            if port <= 0:
                port = socket.bind_to_random_port(f"tcp://{self.ip}")
            else:
                socket.bind(f"tcp://{self.ip}:{port}")
        else:
            if port <= 0:
                port = 1
                while Path(f"{self.ip}-{port}").exists():
                    port += 1
            socket.bind(f"ipc://{self.ip}-{port}")
        setattr(self, f"{name}_port", port)
        return socket

    def write_connection_file(self) -> None:
        """Write the connection file when the proxy chose the ports itself."""
        if Path(self.connection_file).exists():
            return
        info = {f"{name}_port": getattr(self, f"{name}_port") for name in self.ports}
        write_connection_file(
            self.connection_file,
            ip=self.ip,
            key=self.session.key,
            transport=self.transport,
            signature_scheme=self.session.signature_scheme,
            curve_publickey=self.curve_publickey,
            curve_secretkey=self.curve_secretkey,
            **info,
        )
        atexit.register(Path(self.connection_file).unlink, missing_ok=True)
        self.log.info("To connect another client to this kernel, use: --existing %s", self.connection_file)

    def start(self) -> None:
        # On another host the parent is the launcher's end there (sshd's session, orted, slurmstepd), which
        # goes when the launcher on the server's host does; ssh and mpirun forward no JPY_PARENT_PID.
        if self.parent_pid > 1 or self.server_ips is not None:
            threading.Thread(target=self._exit_with_parent, name="ParentPoller", daemon=True).start()
        if self.server_ips is not None and _is_a_pipe(0):
            threading.Thread(target=self._exit_with_stdin, name="StdinPoller", daemon=True).start()
        self.kernel.start()
        try:
            IOLoop.current().start()
        except KeyboardInterrupt:
            pass

    def _exit_with_parent(self) -> None:
        """Exit, inner kernels and all, once the process that started the proxy is gone.

        As ipykernel's ParentPollerUnix does, but that exits at once, without
        cleaning up: the proxy must not leave its inner kernels or their files.
        An orphan is reparented, so a change of parent is the sign.
        """
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(1)
        self._exit("The process that started the kernel is gone")

    def _exit_with_stdin(self) -> None:
        """Exit, inner kernels and all, once the launcher closes the stdin it gave the proxy.

        Across hosts, the one sign that also reaches a proxy behind a shell
        that does not exec it (a wrapper script, ``ssh node 'cmd >log'``):
        the launcher's end on this host closes the pipe when the launcher on
        the server's host goes.  Jupyter never writes to a kernel's stdin.
        """
        while os.read(0, 65536):
            pass
        self._exit("The launcher closed the kernel's stdin: its end on the server's host is gone")

    def _exit(self, why: str) -> t.NoReturn:
        self.log.warning("%s; exiting", why)
        self.kernel.cleanup()
        os._exit(1)

    def close(self) -> None:
        """Close the client's sockets, letting the last replies out (their linger)."""
        if self.control_thread.is_alive():
            self.control_thread.stop()
            self.control_thread.join()
        self.iopub.stop()
        for client_socket in (self.shell_socket, self.stdin_socket, self.control_socket, self.iopub.socket):
            client_socket.close()
        self.context.term()
        self.heartbeat.context.term()


def process_start() -> float | None:
    """When this process started, as a time.time(), to the clock tick (from /proc; None without it)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ticks / os.sysconf("SC_CLK_TCK")


def _is_a_pipe(fd: int) -> bool:
    """Whether ``fd`` is a pipe or socket (what a launcher gives), not a terminal, /dev/null or a file."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def launch(argv: list[str] | None = None, prelaunched=None, kernel_arguments: list[str] = ()) -> None:
    """Run the proxy with its own ``argv``; ``kernel_arguments`` are the inner kernel's (see prelaunch.split_arguments)."""
    ProxyKernelApp.launch_instance(
        argv if argv is not None else sys.argv[1:], prelaunched=prelaunched, kernel_arguments=list(kernel_arguments)
    )
