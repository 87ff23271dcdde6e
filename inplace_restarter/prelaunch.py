"""Where inner kernels' connection files live, and the first inner kernel launched before the heavy imports.

The proxy's start is the inner kernel's start plus whatever comes before its
launch.  jupyter_client's package imports every manager and client it has,
a quarter of a direct kernel's whole start (bench/RESULTS.md, "Startup
timeline"), while its ``launcher`` module alone costs little.  So
:func:`prelaunch` imports only the standard library, jupyter_core's paths and
``jupyter_client.launcher``, writes the inner kernel's connection file and
launches it with jupyter_client's ``launch_kernel``, formatting the command
and environment as a KernelManager does.  The KernelManager made later takes
the process over only if it would have launched exactly that (see
inner.PrelaunchedProvisioner), so a difference costs the head start, never
correctness.  On anything unusual :func:`prelaunch` returns None and the
proxy launches the kernel the normal way, reporting errors there.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

from . import kernelspec, launchers

#: where a connection file keeps each channel's port
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")


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


def free_ports() -> dict[str, int]:
    """Free loopback ports for a kernel, below the range connect() takes source ports from.

    jupyter_client picks ports from that ephemeral range, where the proxy's
    own attempts to reach a kernel that is not listening yet take their
    source ports: the kernel, or remote_ikernel's ssh tunnel, may then find
    its port taken (a tunnel fails without a word).  Without the range (not
    Linux), an empty dict: jupyter_client chooses.
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
    return dict(zip(PORT_NAMES, ports, strict=True))


def option(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value of option ``names`` in ``argv`` (``-f X``, ``-f=X``, ``--f X``...), else None."""
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name in names:
            if equals:
                return value
            if index + 1 < len(argv):
                return argv[index + 1]
    return None


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """The proxy's own arguments and the kernel's (jupyter_client's ``extra_arguments``): see kernelspec.split_arguments.

    The one place they are told apart, before anything reads them.  With
    the inner argv after ``--``, jupyter_client's additions already follow it.
    """
    if "--" in argv:
        return argv, []
    resource_dir = option(argv, ("--resource-dir", "--ProxyKernelApp.resource_dir"))
    try:
        spec_argv = kernelspec.read_kernel_json(resource_dir).get("argv") if resource_dir else None
    except kernelspec.SpecError:
        spec_argv = None
    if not isinstance(spec_argv, list) or not all(isinstance(arg, str) for arg in spec_argv):
        return argv, []
    return kernelspec.split_arguments(argv, spec_argv)


def kernel_command(fields: dict, connection_file: Path) -> list[str]:
    """The spec's argv with its templates filled in, as KernelManager.format_kernel_cmd fills them."""
    cmd = list(fields["argv"])
    if cmd and cmd[0] in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}:
        cmd[0] = sys.executable
    values = {
        "connection_file": os.path.realpath(connection_file),
        "prefix": sys.prefix,
        "resource_dir": fields.get("resource_dir", ""),
    }
    return [re.sub(r"\{([A-Za-z0-9_]+)\}", lambda m: values.get(m.group(1), m.group()), arg) for arg in cmd]


def kernel_env(fields: dict) -> dict[str, str]:
    """The environment jupyter_client's provisioner gives the kernel: ours, with the spec's env filled in."""
    env = dict(os.environ)
    env.update({k: string.Template(v).safe_substitute(env) for k, v in (fields.get("env") or {}).items()})
    if str(fields.get("language", "")).lower().startswith("python"):
        env.pop("PYTHONEXECUTABLE", None)
    return env


def launch_kwargs(is_launcher: bool) -> dict:
    """Popen keywords for an inner kernel: our working folder; it dies with us (a launcher is told to stop)."""
    kwargs: dict = {"cwd": os.getcwd()}
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = launchers.stop_with_parent if is_launcher else launchers.die_with_parent
    return kwargs


@dataclass
class Prelaunched:
    """An inner kernel launched by :func:`prelaunch`, and what it was launched with."""

    process: subprocess.Popen
    cmd: list[str]
    #: the environment as formatted, before launch_kernel added JPY_PARENT_PID
    env: dict[str, str]
    kwargs: dict
    connection_file: Path
    runtime_dir: Path
    #: time.time() of the launch
    at: float


def prelaunch(argv: list[str], extra: list[str] = ()) -> Prelaunched | None:
    """Launch the inner kernel before the proxy imports jupyter_client and ipykernel, so both start at once.

    ``argv`` are the proxy's own arguments, ``extra`` the kernel's (see
    split_arguments).  Only the proxy's own arguments that say which kernel
    to start and the key in its connection file are read here.
    """
    inner_argv = None
    if "--" in argv:
        inner_argv = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    resource_dir = option(argv, ("--resource-dir", "--ProxyKernelApp.resource_dir"))
    connection_file = option(argv, ("-f", "--f", "--ProxyKernelApp.connection_file"))
    if not (resource_dir or inner_argv) or not connection_file:
        return None
    try:
        fields = kernelspec.inner_spec_fields(resource_dir, inner_argv, extra)
        fields["resource_dir"] = str(resource_dir or "")
        info = json.loads(Path(connection_file).read_text())
        # The connection file's key and scheme are the ones the proxy will use.
        key, scheme = str(info["key"]), str(info["signature_scheme"])
        if not isinstance(fields.get("argv"), list) or not all(isinstance(a, str) for a in fields["argv"]):
            return None
        if (
            info.get("curve_secretkey")
            and "curve" in str((fields.get("metadata") or {}).get("supported_encryption")).lower()
        ):
            # The manager gives such a kernel CurveZMQ keys of its own (see inner.new_manager).
            return None
    except (kernelspec.SpecError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    ports = free_ports()
    if not ports:
        return None
    runtime_dir = private_runtime_dir()
    inner_file = runtime_dir / "inner-prelaunched.json"
    inner_info = {**ports, "ip": "127.0.0.1", "key": key, "transport": "tcp", "signature_scheme": scheme}
    with open(os.open(inner_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump({**inner_info, "kernel_name": "inner"}, f, indent=1)
    cmd, env = kernel_command(fields, inner_file), kernel_env(fields)
    is_launcher = bool(launchers.parse(fields["argv"]).launchers)
    kwargs = launch_kwargs(is_launcher)
    try:
        with launcher_alone() as launcher:
            process = launcher.launch_kernel(cmd, env=dict(env), **kwargs)
            launched = time.time()
    except Exception:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        return None
    atexit.register(shutil.rmtree, runtime_dir, ignore_errors=True)
    atexit.register(stop, process, is_launcher)
    return Prelaunched(process, cmd, env, kwargs, inner_file, runtime_dir, launched)


def stop(process: subprocess.Popen, is_launcher: bool) -> None:
    """At exit: a kernel still running goes too (one the proxy took over has already gone by then).

    A launcher is told to stop (srun then ends its job); a kernel is killed
    with its process group, which launch_kernel made its own.
    """
    if process.poll() is not None:
        return
    if is_launcher:
        launchers.stop_launcher(process)
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def launcher_alone() -> Iterator[types.ModuleType]:
    """jupyter_client.launcher before the package's ``__init__``, which imports all of jupyter_client.

    The package is registered unexecuted for the block and its ``__init__``
    run after it, in the same module object, so that later imports see the
    whole package, this submodule in it.
    """
    if "jupyter_client" in sys.modules:
        import jupyter_client.launcher

        yield jupyter_client.launcher
        return
    spec = importlib.util.find_spec("jupyter_client")
    package = importlib.util.module_from_spec(spec)
    sys.modules["jupyter_client"] = package
    try:
        import jupyter_client.launcher

        yield jupyter_client.launcher
    finally:
        try:
            spec.loader.exec_module(package)
        except BaseException:
            for name in [name for name in sys.modules if name.split(".")[0] == "jupyter_client"]:
                del sys.modules[name]
            raise
