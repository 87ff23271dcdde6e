"""Telling a launcher prefix (srun, mpirun, ssh, a container runner, remote_ikernel) from the kernel command.

A kernelspec on a cluster often starts its kernel through a launcher that
holds something costly: a batch job, a login, a container. install puts the
proxy behind the launcher, where the kernel runs, so that ``%restart``
restarts only the kernel and keeps what the launcher holds. Each launcher's
options are parsed as far as needed to find where its own arguments end.
"""

from __future__ import annotations

import ctypes
import logging
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

#: Seconds a launcher has after SIGTERM to end its job before it is killed (srun needs a few).
LAUNCHER_GRACE = 10


@dataclass(frozen=True)
class Launcher:
    """A command that runs another command somewhere: what it holds and how to read its options."""

    name: str
    #: what a relaunch would start again: "job", "login" or "container"
    holds: str
    #: whether SIGINT sent to it reaches the command it runs (srun takes it as a status request)
    passes_sigint: bool
    #: short options (single letters) that take a value
    short_values: str = ""
    #: long options written without ``=`` that take no value (all others take the next argument)
    long_flags: frozenset[str] = frozenset()
    #: options that take the next argument (for launchers with single-dash long options)
    long_values: frozenset[str] = frozenset()
    #: options that take the next two arguments (mpirun's ``--mca KEY VALUE``)
    long_pairs: frozenset[str] = frozenset()
    #: a subcommand that must come first (``apptainer exec``)
    subcommand: str | None = None
    #: positional arguments before the command (ssh's HOST, apptainer's IMAGE)
    positionals: int = 0
    #: whether options are getopt style (``-N1``, ``--nodes 1``) or single-dash words (``-np 2``)
    getopt: bool = True
    #: whether it may run the command on another host than its own (then the proxy reports where it is: see reach)
    remote: bool = False

    @property
    def is_container(self) -> bool:
        return self.holds == "container"


SRUN = Launcher(
    "srun",
    "job",
    passes_sigint=False,
    remote=True,
    short_values="ABbCcDdeGiJLMmNnopqrSTtWwx",
    long_flags=frozenset(
        [
            "bcast",
            "compress",
            "contiguous",
            "disable-status",
            "exact",
            "exclusive",
            "get-user-env",
            "help",
            "hold",
            "immediate",
            "kill-on-bad-exit",
            "label",
            "multi-prog",
            "no-allocate",
            "no-kill",
            "nice",
            "overcommit",
            "overlap",
            "oversubscribe",
            "preserve-env",
            "propagate",
            "pty",
            "quiet",
            "quit-on-interrupt",
            "reboot",
            "send-libs",
            "spread-job",
            "test-only",
            "unbuffered",
            "usage",
            "use-min-nodes",
            "verbose",
            "version",
            "whole",
            "x11",
        ]
    ),
)
_MPI_VALUES = frozenset(
    [
        "-n",
        "-np",
        "-c",
        "-N",
        "-H",
        "-host",
        "--host",
        "-hosts",
        "-x",
        "-machinefile",
        "--machinefile",
        "-hostfile",
        "--hostfile",
        "-f",
        "-map-by",
        "--map-by",
        "-bind-to",
        "--bind-to",
        "-rank-by",
        "--rank-by",
        "-wdir",
        "--wdir",
        "-wd",
        "-prefix",
        "--prefix",
        "-ppn",
        "-npernode",
        "--npernode",
        "-configfile",
        "-launcher",
        "-bootstrap",
        "-iface",
        "-localhost",
        "-nameserver",
        "-rf",
        "--rankfile",
    ]
)
_MPI_PAIRS = frozenset(["-mca", "--mca", "-gmca", "--gmca", "-genv", "-env", "--genv", "--env"])
MPIRUN = Launcher(
    "mpirun", "job", passes_sigint=False, remote=True, long_values=_MPI_VALUES, long_pairs=_MPI_PAIRS, getopt=False
)
MPIEXEC = Launcher(
    "mpiexec", "job", passes_sigint=False, remote=True, long_values=_MPI_VALUES, long_pairs=_MPI_PAIRS, getopt=False
)
SSH = Launcher("ssh", "login", passes_sigint=False, remote=True, short_values="BbcDEeFIiJLlmOoPpQRSWw", positionals=1)
_CONTAINER_FLAGS = frozenset(
    [
        "nv",
        "nvccli",
        "rocm",
        "cleanenv",
        "contain",
        "containall",
        "writable",
        "writable-tmpfs",
        "fakeroot",
        "no-home",
        "ipc",
        "pid",
        "userns",
        "uts",
        "net",
        "no-init",
        "no-privs",
        "keep-privs",
        "disable-cache",
        "no-https",
        "compat",
        "allow-setuid",
        "no-eval",
        "no-umask",
        "no-nv",
        "no-rocm",
        "boot",
        "unsquash",
        "help",
    ]
)
APPTAINER = Launcher(
    "apptainer",
    "container",
    passes_sigint=True,
    short_values="BHoWS",
    long_flags=_CONTAINER_FLAGS,
    subcommand="exec",
    positionals=1,
)
SINGULARITY = Launcher(
    "singularity",
    "container",
    passes_sigint=True,
    short_values="BHoWS",
    long_flags=_CONTAINER_FLAGS,
    subcommand="exec",
    positionals=1,
)
#: remote_ikernel with a batch interface: it runs ``--kernel_cmd`` in an interactive job it starts, and
#: reaches the kernel through ssh tunnels of its own (so it is not ``remote`` here).
REMOTE_IKERNEL = Launcher("remote_ikernel", "job", passes_sigint=False)
LAUNCHERS = {launcher.name: launcher for launcher in (SRUN, MPIRUN, MPIEXEC, SSH, APPTAINER, SINGULARITY)}
#: the names Debian's alternatives point ``mpirun`` and ``mpiexec`` at (Open MPI's and MPICH's), which specs
#: written for one MPI name to be sure which runs
LAUNCHERS |= {name: MPIRUN for name in ("mpirun.openmpi", "orterun", "mpirun.mpich")}
LAUNCHERS |= {name: MPIEXEC for name in ("mpiexec.openmpi", "mpiexec.mpich", "mpiexec.hydra")}
#: remote_ikernel's interfaces that start a batch job (the others, local and ssh, hold no job)
BATCH_INTERFACES = {"slurm", "pbs", "sge", "sge_qrsh", "lsf"}
#: what remote_ikernel fills in for the connection file in ``--kernel_cmd``
RIK_CONNECTION_FILE = "{host_connection_file}"


@dataclass
class Launch:
    """A kernel argv read as launchers (outermost first) in front of the kernel's own command."""

    argv: list[str]
    launchers: list[Launcher] = field(default_factory=list)
    #: the argv up to where the kernel command starts
    prefix: list[str] = field(default_factory=list)
    #: the kernel's own command, as jupyter_client would start it
    kernel: list[str] = field(default_factory=list)
    #: for remote_ikernel, the index in ``argv`` of its ``--kernel_cmd`` value, and what precedes the value there
    kernel_cmd_index: int | None = None
    kernel_cmd_option: str = ""

    def around(self, command: list[str]) -> list[str]:
        """``argv`` with ``command`` run by the launchers in place of the kernel."""
        if self.kernel_cmd_index is None:
            return [*self.prefix, *command]
        argv = list(self.argv)
        joined = shlex.join(command).replace("{connection_file}", RIK_CONNECTION_FILE)
        argv[self.kernel_cmd_index] = self.kernel_cmd_option + joined
        return argv

    def split_at(self, depth: int) -> Launch:
        """The same argv with only the outermost ``depth`` launchers in front; the rest goes with the kernel."""
        if depth >= len(self.launchers):
            return self
        return parse(self.argv, depth)

    def describe(self) -> str:
        return " and ".join(launcher.name for launcher in self.launchers)


def _name(arg: str) -> str:
    return Path(arg).name


def _skip_options(args: list[str], launcher: Launcher) -> int | None:
    """How many of ``args`` are the launcher's own (options, subcommand, positionals); None if unsure."""
    i = 0
    if launcher.subcommand is not None:
        if not args or args[0] != launcher.subcommand:
            return None
        i = 1
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not launcher.getopt:
            i += 1 + (arg in launcher.long_values) + 2 * (arg in launcher.long_pairs)
            continue
        if arg.startswith("--"):
            i += 1 if "=" in arg or arg[2:] in launcher.long_flags else 2
            continue
        i += 1
        for position, letter in enumerate(arg[1:], start=1):
            if letter in launcher.short_values:
                i += position == len(arg) - 1
                break
    i += launcher.positionals
    return i if i < len(args) else None


def _remote_ikernel(argv: list[str]) -> Launch | None:
    """A remote_ikernel spec with a batch interface: its kernel is the ``--kernel_cmd`` string."""
    if argv[1:3] != ["-m", "remote_ikernel"]:
        return None
    options: dict[str, tuple[int, str, str]] = {}
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name in ("--interface", "--kernel_cmd"):
            if equals:
                options[name] = (index, name + equals, value)
            elif index + 1 < len(argv):
                options[name] = (index + 1, "", argv[index + 1])
    interface = options.get("--interface", (0, "", "local"))[2]
    if interface not in BATCH_INTERFACES or "--kernel_cmd" not in options:
        return None
    index, option, command = options["--kernel_cmd"]
    try:
        kernel = shlex.split(command.replace(RIK_CONNECTION_FILE, "{connection_file}"))
    except ValueError:
        return None
    return Launch(argv, [REMOTE_IKERNEL], argv[:index], kernel, index, option)


def parse(argv: list[str], depth: int | None = None) -> Launch:
    """Read ``argv`` as launchers in front of a kernel command, at most ``depth`` of them."""
    launch = _remote_ikernel(argv) if depth != 0 else None
    if launch is not None:
        return launch
    launchers, start = [], 0
    while depth is None or len(launchers) < depth:
        launcher = LAUNCHERS.get(_name(argv[start])) if start < len(argv) else None
        if launcher is None:
            break
        skipped = _skip_options(argv[start + 1 :], launcher)
        if skipped is None:
            break
        launchers.append(launcher)
        start += 1 + skipped
    return Launch(argv, launchers, argv[:start], argv[start:])


def runs_proxy(argv: list[str]) -> bool:
    """Whether ``argv`` runs inplace_restarter anywhere: at its head, behind a launcher, in a command string."""
    words = []
    for arg in argv:
        try:
            words += shlex.split(arg) if " " in arg else [arg]
        except ValueError:
            words.append(arg)
    return any(pair == ("-m", PROXY_MODULE) for pair in pairwise(words)) or any(
        _name(word) == PROXY_SCRIPT for word in words
    )


#: the proxy's module run as ``-m``, and its console script
PROXY_MODULE, PROXY_SCRIPT = "inplace_restarter", "jupyter-inplace-restarter"
#: the proxy's name in a command string (remote_ikernel's ``--kernel_cmd``), followed by its arguments or the end
_PROXY_IN_A_STRING = re.compile(rf"(-m\s+{PROXY_MODULE}|(?:\S*/)?{PROXY_SCRIPT})(?=\s|$)")


def with_proxy_options(argv: list[str], options: list[str]) -> list[str]:
    """``argv`` with ``options`` given to the proxy, first after its module (or script), wherever it runs.

    Whatever a launcher passes on (ssh, mpirun, srun, a container runner, a
    wrapper script) carries its command's arguments, where the environment
    would need to be forwarded by hand; a command string (remote_ikernel's)
    gets them in the string.
    """
    new = []
    for index, arg in enumerate(argv):
        if " " in arg and index > 0:
            arg = _PROXY_IN_A_STRING.sub(lambda m: " ".join([m.group(0), *map(shlex.quote, options)]), arg)
        new.append(arg)
        if (index > 0 and argv[index - 1] == "-m" and arg == PROXY_MODULE) or _name(arg) == PROXY_SCRIPT:
            new += options
    return new


def signal_leader(process: subprocess.Popen, signum: int) -> None:
    """Signal a launcher's own process, never its group: killing srun's group orphans its job."""
    try:
        process.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Runs in the child before exec: signal it when the process that started it dies, even by SIGKILL.

    ``PR_SET_PDEATHSIG`` follows the *thread* that forked, not the process:
    a child started from a thread that ends before the process gets the
    signal then.
    """
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signum)


def stop_with_parent() -> None:
    """For a launcher: SIGTERM, on which srun cancels its job; SIGKILL would leave the job to time out."""
    die_with_parent(signal.SIGTERM)


def stop_launcher(process: subprocess.Popen, grace: float = LAUNCHER_GRACE, log: logging.Logger | None = None) -> None:
    """End a launcher the way that makes it end its job: SIGTERM to it alone, SIGKILL after ``grace``.

    srun, told to stop, cancels its step and ends the job; killed at once it
    leaves the job running with nothing attached.  Blocks up to ``grace``:
    exit paths call it as it is, an event loop in an executor.  The one
    place a launcher is stopped (the proxy's inner kernels, the provisioner's
    kill, the proxy's exit).
    """
    if process.poll() is not None:
        return
    signal_leader(process, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        if log is not None:
            log.warning("Launcher %s still running %g s after SIGTERM; killing it", process.pid, grace)
        signal_leader(process, signal.SIGKILL)
