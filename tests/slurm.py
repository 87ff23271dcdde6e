"""Real Slurm clusters for the tests, from Debian's packages, in a temporary folder.

``Cluster`` is a single node: munged, slurmctld and slurmd run in the
foreground, each in a session of its own, with their own ports, socket,
spool and state folders, so nothing in /etc or /run is touched and a second
test session on the same machine gets a cluster of its own. Clients find it
through ``SLURM_CONF``.

``MultiNodeCluster`` is a login node and two compute nodes, each in network
namespaces of its own on a bridge, with the test process as a second login
node: what a notebook sees when its kernel runs on another machine.

``Cluster(memory_limits=True)`` (the ``slurm_memory`` fixture) enforces
``--mem`` as sites do, with ``TaskPlugin=task/cgroup`` and
``ConstrainRAMSpace=yes`` on cgroup v1: each job's memory cgroup is limited
to what it asked for. It takes memory as a consumable resource
(``CR_Core_Memory``), so it is kept apart from ``slurm``, where jobs that ask
for no memory must not wait for each other.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from inplace_restarter import reach

from .helpers import PYTHON, ended, execute, free_port, kill, stdout_of, unavailable, wait_until
from .spec_helpers import load, run_cli, with_provisioner, write_spec

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "squeue", "sinfo", "scontrol", "scancel")
NETWORK_TOOLS = ("ip", "nsenter", "unshare", "setpriv", "salloc")
#: What says a process runs inside an allocation, or changes what srun, salloc and sbatch do.
SLURM_VARIABLES = ("SLURM_", "SRUN_", "SALLOC_", "SBATCH_")
#: munged, slurmctld and slurmd up and the node idle takes about 40 s here from nothing.
START_TIMEOUT = 120


class Unavailable(Exception):
    """What this machine lacks to run a cluster; the message says what."""


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "a Slurm cluster for the tests needs root (slurmd runs jobs as any user)"
    absent = [
        name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None and not Path("/usr/sbin", name).exists()
    ]
    if absent:
        return f"{', '.join(absent)} not found: apt-get install slurmctld slurmd slurm-client munge"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no user 'munge' (the munge package creates it)"
    return None


def missing_multinode() -> str | None:
    """Why no multi-node cluster can be started here, or None."""
    absent = [name for name in NETWORK_TOOLS if shutil.which(name) is None]
    if absent:
        return missing() or f"{', '.join(absent)} not found: apt-get install iproute2 util-linux slurm-client"
    return missing()


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def real_memory() -> int:
    """The node's memory as slurmd measures it, a little less, so that the node is not refused."""
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return max(int(fields["RealMemory"]) - 512, 100)


#: Where cgroup v1's controllers are mounted, for task/cgroup.
CGROUP_V1 = Path("/sys/fs/cgroup")
#: A job that asks for no memory gets this much (MB) in the cluster that enforces --mem, not the whole node.
DEFAULT_JOB_MEMORY = 512


class Cluster:
    """One controller and one node, started by ``start`` and stopped (every daemon by pid) by ``stop``.

    With ``memory_limits``, ``--mem`` is enforced through memory cgroups (task/cgroup).
    """

    #: Seconds between two looks at a daemon that is starting.
    poll = 0.2

    def __init__(self, root: Path, memory_limits: bool = False):
        self.root = Path(root)
        self.memory_limits = memory_limits
        self.host = socket.gethostname().split(".")[0]
        #: the cgroup folders there were before start, so that stop removes only those Slurm made for this cluster
        self._cgroups_before = self._slurm_cgroups() if memory_limits else set()
        self.nodes = [self.host]
        self.processes: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        outside = {k: v for k, v in os.environ.items() if not k.startswith(SLURM_VARIABLES)}
        #: For a subprocess that is a client of this cluster, outside any allocation.
        self.env = {**outside, "SLURM_CONF": str(self.conf)}

    # -- setup ------------------------------------------------------------

    def _munge_files(self) -> Path:
        """munged's key, socket and state, in a folder only the munge user may write (munged checks)."""
        munge = pwd.getpwnam("munge")
        folder = self.root / "munge"
        folder.mkdir()
        folder.chmod(0o755)
        key = folder / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        for path in (folder, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        # munged wants the socket folder and its parents searchable by all, writable by none but their owner.
        self.root.chmod(0o755)
        return folder

    def _settings(self, munge_socket: Path) -> dict[str, object]:
        return {
            "ClusterName": f"t{os.getpid()}",
            "SlurmctldHost": self.host,
            "SlurmctldPort": free_port(),
            "SlurmdPort": free_port(),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={munge_socket}",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.root / "log" / "slurmctld.log",
            "SlurmdLogFile": self.root / "log" / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "MpiDefault": "none",
            "ReturnToService": 2,
            "SchedulerType": "sched/backfill",
            # A killed step ends its job at once rather than after the default 30 s.
            "KillWait": 2,
            "InactiveLimit": 0,
        } | (self._memory_settings() if self.memory_limits else {})

    def _memory_settings(self) -> dict[str, object]:
        """task/cgroup with ``ConstrainRAMSpace``, and its cgroup.conf beside slurm.conf."""
        cgroups = ["CgroupPlugin=cgroup/v1", f"CgroupMountpoint={CGROUP_V1}", "CgroupAutomount=no"]
        (self.root / "cgroup.conf").write_text("\n".join([*cgroups, "ConstrainRAMSpace=yes"]) + "\n")
        return {
            "TaskPlugin": "task/cgroup",
            "SelectTypeParameters": "CR_Core_Memory",
            "DefMemPerNode": DEFAULT_JOB_MEMORY,
            # Job cgroups are named by job id, under a root shared by every cluster of this node name:
            # ids of their own keep two test sessions' jobs out of each other's cgroups.
            "FirstJobId": 1000 + os.getpid() * 10,
        }

    def _node_lines(self) -> list[str]:
        return [
            f"NodeName={self.host} CPUs=2 RealMemory={real_memory()} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]

    def _write_conf(self, munge_socket: Path) -> None:
        for name in ("spool", "state", "log"):
            (self.root / name).mkdir()
        lines = [f"{k}={v}" for k, v in self._settings(munge_socket).items()] + self._node_lines()
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        with open(self.root / "log" / f"{name}.out", "wb") as log:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                user=user,
            )

    @staticmethod
    def _munged_argv(folder: Path) -> list[str]:
        return [
            _binary("munged"),
            "-F",
            f"--socket={folder / 'munge.socket'}",
            f"--key-file={folder / 'munge.key'}",
            f"--pid-file={folder / 'munged.pid'}",
            f"--seed-file={folder / 'munged.seed'}",
            f"--log-file={folder / 'munged.log'}",
        ]

    def start(self) -> None:
        """Start the daemons and return once the node is idle; Unavailable says what failed."""
        munge = self._munge_files()
        self._write_conf(munge / "munge.socket")
        self._spawn("munged", self._munged_argv(munge), user="munge")
        self._wait(lambda: (munge / "munge.socket").exists(), "munged to open its socket", "munged")
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-f", str(self.conf)])
        self._wait_for_controller()
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(self._idle, f"node {self.host} to be idle", "slurmd")

    def _wait_for_controller(self) -> None:
        self._wait(lambda: "UP" in self._run("scontrol", "ping").stdout, "slurmctld to answer ping", "slurmctld")

    def _run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout, check=False)

    def _idle(self) -> bool:
        """Whether every node is idle, in one look at the controller."""
        out = self._run("sinfo", "--noheader", "--Node", "--format=%N %t").stdout
        return dict(line.split() for line in out.splitlines() if line.strip()) == dict.fromkeys(self.nodes, "idle")

    def _wait(self, ready, what: str, *daemons: str) -> None:
        """Poll ``ready`` until it holds; a daemon that exits or a deadline passed is an error with its log."""
        exited: list[str] = []

        def outcome() -> str | None:
            if ready():
                return "ready"
            exited[:] = [d for d in daemons if self.processes[d].poll() is not None]
            return f"{exited[0]} exited with {self.processes[exited[0]].returncode}" if exited else None

        try:
            state = wait_until(outcome, what, START_TIMEOUT, interval=self.poll)
        except AssertionError:
            state = "timed out"
        if state != "ready":
            daemon = (exited or daemons)[0]
            log = (self.root / "log" / f"{daemon}.out").read_text(errors="replace")[-2000:]
            raise Unavailable(f"waiting for {what}: {state}; {daemon}'s output:\n{log}")

    # -- use --------------------------------------------------------------

    def jobs(self) -> list[dict]:
        """The jobs in the queue: id, name and state of each."""
        out = self._run("squeue", "--noheader", "--format=%i|%j|%T").stdout
        return [dict(zip(("id", "name", "state"), line.split("|"), strict=True)) for line in out.splitlines() if line]

    def wait_for_empty_queue(self, timeout: float = 15) -> float:
        """Seconds until the queue is empty; AssertionError with what is left after ``timeout``."""
        start = time.monotonic()
        try:
            wait_until(lambda: not self.jobs(), "an empty queue", timeout, interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}: {self.jobs()}") from None
        return time.monotonic() - start

    def wait_for_job_gone(self, job: str, timeout: float = 15) -> None:
        wait_until(lambda: job not in {j["id"] for j in self.jobs()}, f"the job {job} to leave the queue", timeout, 0.2)

    def cancel_all(self) -> None:
        ids = [job["id"] for job in self.jobs()]
        if ids:
            self._run("scancel", "--full", *ids)

    def stop(self) -> None:
        """End every daemon by its pid (``stop_daemons``), then remove the cluster's folder."""
        self.stop_daemons()
        shutil.rmtree(self.root, ignore_errors=True)

    def stop_daemons(self) -> None:
        """Cancel what is left in the queue, then end each daemon by its pid: SIGTERM, then SIGKILL.

        The slurmd's go first, all at once, so that none is left without its controller; munged goes last.
        """
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.cancel_all()
            with suppress(AssertionError):
                self.wait_for_empty_queue(30)
        for daemon in reversed(DAEMONS):
            names = [name for name in self.processes if name.split("-")[0] == daemon]
            stop_processes([self.processes.pop(name) for name in names])
        if self.memory_limits:
            self._remove_cgroups()

    def _slurm_cgroups(self) -> set[Path]:
        """The cgroup folders Slurm's task/cgroup makes for this node (``slurm_NODE`` in each v1 controller)."""
        return set(CGROUP_V1.glob(f"*/slurm_{self.host}")) | set(CGROUP_V1.glob(f"*/slurm_{self.host}/**/"))

    def _remove_cgroups(self, grace: float = 10) -> None:
        """Remove the cgroup folders Slurm left (it keeps its root), deepest first.

        The kernel refuses (EBUSY) a memory cgroup for a moment after its last
        process exits, so each is tried again for up to ``grace`` seconds; one
        still in use after that stays.
        """
        deadline = time.monotonic() + grace
        for folder in sorted(self._slurm_cgroups() - self._cgroups_before, key=lambda p: len(p.parts), reverse=True):
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(self.poll)


def stop_processes(processes: list[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM each of our children, SIGKILL those still running after ``grace`` seconds; reap them all."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


#: Inside each daemon's fresh UTS and private mount namespace: take the node's name, see the cluster's
#: hosts file on /etc/hosts (the machine's own is never touched), then become the daemon (every layer execs,
#: so the pid Popen knows is the daemon's).
_AS_NODE = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'


class MultiNodeCluster(Cluster):
    """A login node (munged, slurmctld) and compute nodes ``node1``, ``node2``, each in a network namespace.

    The namespaces hang on a bridge in a namespace of its own; the private /24 exists only there and on a
    veth from the test process's (root) namespace, ``login_address``, so that srun, squeue and Jupyter
    clients in the test process reach the nodes directly, as from a second login node, and nothing meant
    for the cluster can leave by the machine's default route. Names and the /24 are unique per ``tag``,
    so that several test sessions on the machine each have a cluster of their own.
    """

    #: Up in 0.32 s (median of 6) polling every 0.05 s, 0.79 s every 0.2 s (interleaved; stop 0.17 s either way).
    poll = 0.05
    #: Two jobs fit on a node; slurmd sees the machine's cores and memory, far above these.
    CPUS = 2
    MEMORY = 1000

    def __init__(self, root: Path, tag: str):
        """``tag``: this process's pid, and a letter for a second cluster; 8 characters at most (interface names)."""
        super().__init__(root)
        self.prefix = f"mn{tag}-"
        self.nodes = ["node1", "node2"]
        self.bridge_ns = f"{self.prefix}br"
        self.namespaces = {role: f"{self.prefix}{role}" for role in ("login", *self.nodes)}
        self.root_link = f"{self.prefix}root"
        self.net = _free_net(tag)
        self.addresses = {"login": f"{self.net}.1", "node1": f"{self.net}.11", "node2": f"{self.net}.12"}
        self.login_address = f"{self.net}.254"
        self.created: list[str] = []
        self.spawned: dict[str, subprocess.Popen] = {}

    def address(self, node: str) -> str:
        """Where ``node`` (or "login") listens: its eth0 address on the bridge."""
        return self.addresses[node]

    # -- setup ------------------------------------------------------------

    def _settings(self, munge_socket: Path) -> dict[str, object]:
        node = self.root / "%n"
        return super()._settings(munge_socket) | {
            "ClusterName": f"m{self.prefix[2:-1]}",
            "SlurmctldHost": f"login({self.addresses['login']})",
            "SlurmctldPort": 6817,
            "SlurmdPort": 6818,
            "SlurmdSpoolDir": node / "spool",
            "SlurmdPidFile": node / "slurmd.pid",
            "SlurmdLogFile": self.root / "log" / "slurmd-%n.log",
            "MailProg": "/bin/true",
        }

    def _node_lines(self) -> list[str]:
        cpus = min(self.CPUS, os.cpu_count() or 1)
        return [
            *(
                f"NodeName={n} NodeAddr={self.addresses[n]} NodeHostname={n} CPUs={cpus} "
                f"RealMemory={self.MEMORY} State=UNKNOWN"
                for n in self.nodes
            ),
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP",
        ]

    def _ip(self, *argv: str, check: bool = True) -> str:
        return _tool(["ip", *argv], check)

    def _add_namespace(self, name: str) -> None:
        if name in _namespaces():
            raise Unavailable(f"a network namespace {name} exists already: not this cluster's, left alone")
        self._ip("netns", "add", name)
        self.created.append(name)
        self._ip("-n", name, "link", "set", "lo", "up")
        # IPv4 only: no IPv6 link-local chatter on the bridge. /proc/sys/net is the netns of whoever opens it.
        ipv4_only = [f"net.ipv6.conf.{c}.disable_ipv6=1" for c in ("all", "default")]
        _tool(["nsenter", f"--net=/run/netns/{name}", "sysctl", "-qw", *ipv4_only])

    def _network(self) -> None:
        if self._ip("-o", "link", "show", self.root_link, check=False):
            raise Unavailable(f"an interface {self.root_link} exists already: not this cluster's, left alone")
        self._add_namespace(self.bridge_ns)
        self._ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for role, ns in self.namespaces.items():
            self._add_namespace(ns)
            # Each pair is made between the two namespaces: no end of it ever exists in the root namespace.
            self._ip(
                "-n", self.bridge_ns, "link", "add", f"v-{role}", "type", "veth", "peer", "name", "eth0", "netns", ns
            )
            self._ip("-n", self.bridge_ns, "link", "set", f"v-{role}", "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{self.addresses[role]}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
        self._ip("link", "add", self.root_link, "type", "veth", "peer", "name", "v-root", "netns", self.bridge_ns)
        self.created.append(self.root_link)
        Path(f"/proc/sys/net/ipv6/conf/{self.root_link}/disable_ipv6").write_text("1")
        self._ip("-n", self.bridge_ns, "link", "set", "v-root", "master", "br0", "up")
        self._ip("addr", "add", f"{self.login_address}/24", "dev", self.root_link)
        self._ip("link", "set", self.root_link, "up")
        for role in self.namespaces:
            via = self.route(role)
            if f"dev {self.root_link} " not in via:
                raise Unavailable(f"{role} ({self.addresses[role]}) would not go by the root leg: {via}")
        (self.root / "hosts").write_text(
            "127.0.0.1 localhost\n"
            + "".join(f"{a} {role}\n" for role, a in self.addresses.items())
            + f"{self.login_address} rootns\n"
        )

    def route(self, role: str) -> str:
        """The root namespace's route to ``role``: only ever by ``root_link``, never the default route."""
        return self._ip("route", "get", self.addresses[role])

    def _spawn_as(self, role: str, name: str, argv: list[str]) -> None:
        ns = self.namespaces[role]
        unshare = ["unshare", "--uts", "--mount", "--propagation", "private", "--"]
        # nsenter, not `ip netns exec`: that mounts a fresh /sys without /sys/fs/cgroup, and slurmd dies on it.
        shell = ["/bin/sh", "-c", _AS_NODE, "sh", role, str(self.root / "hosts")]
        self._spawn(name, ["nsenter", f"--net=/run/netns/{ns}", *unshare, *shell, *argv])
        self.spawned[name] = self.processes[name]

    def start(self) -> None:
        """Network, munged and slurmctld on login, a slurmd per node; return once every node is idle."""
        self._network()
        munge = self._munge_files()
        self._write_conf(munge / "munge.socket")
        for node in self.nodes:
            (self.root / node).mkdir(mode=0o755)
        setpriv = ["setpriv", "--reuid=munge", "--regid=munge", "--clear-groups"]
        origin = f"--origin={self.addresses['login']}"
        self._spawn_as("login", "munged", [*setpriv, *self._munged_argv(munge), origin])
        self._wait(lambda: (munge / "munge.socket").exists(), "munged to open its socket", "munged")
        self._spawn_as("login", "slurmctld", [_binary("slurmctld"), "-D", "-f", str(self.conf)])
        self._wait_for_controller()
        for node in self.nodes:
            self._spawn_as(node, f"slurmd-{node}", [_binary("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
        self._wait(self._idle, f"{', '.join(self.nodes)} to be idle", *(f"slurmd-{n}" for n in self.nodes))

    # -- use --------------------------------------------------------------

    def enter(self, node: str) -> list[str]:
        """The argv prefix that runs a command on ``node`` (or "login"): its network, hostname and hosts file."""
        pid = self.processes["slurmctld" if node == "login" else f"slurmd-{node}"].pid
        return ["nsenter", f"--target={pid}", "--net", "--uts", "--mount", "--"]

    def on(self, node: str, argv: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``node`` and return what it did (output captured as text)."""
        kwargs = {"capture_output": True, "text": True, "env": self.env, "check": False} | kwargs
        return subprocess.run([*self.enter(node), *argv], timeout=timeout, **kwargs)

    def link(self, node: str, up: bool) -> None:
        """Plug ``node``'s cable in (``up``) or pull it: it then reaches nobody and nobody reaches it."""
        self._ip("-n", self.namespaces[node], "link", "set", "eth0", "up" if up else "down")

    @contextmanager
    def drained(self, node: str):
        """``node`` takes no new job while inside (its running jobs go on), as an admin drains it."""
        done = self._run("scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=test")
        assert done.returncode == 0, done.stderr
        try:
            yield
        finally:
            self._run("scontrol", "update", f"NodeName={node}", "State=RESUME")

    def bridge_port(self, node: str, up: bool) -> None:
        """Switch on (``up``) or off the bridge's port to ``node``, as a cable cut on the switch's side.

        Unlike ``link``, the node's own eth0 keeps its state and routes (it only loses its carrier),
        so its processes see nothing but silence, as on a real cluster.
        """
        self._ip("-n", self.bridge_ns, "link", "set", f"v-{node}", "up" if up else "down")

    # -- teardown ---------------------------------------------------------

    def stop(self) -> None:
        """Jobs cancelled, daemons ended by pid, then whatever else runs in our namespaces; then the network.

        Each step goes on whatever the one before left, so that a half-started cluster goes too;
        ``leftovers`` says what, if anything, could not be removed.
        """
        self.stop_daemons()
        live = _namespaces()
        for ns in self.created:
            if ns in live:
                _end(int(pid) for pid in self._ip("netns", "pids", ns, check=False).split())
        for name in reversed(self.created):
            # The root leg by hand: a namespace's veths go with it only once the kernel gets round to it.
            if name == self.root_link:
                self._ip("link", "del", name, check=False)
            elif name in live:
                self._ip("netns", "del", name, check=False)
        self.created.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this cluster still exists on the machine: none after ``stop``."""
        names = [ns for ns in (self.bridge_ns, *self.namespaces.values()) if ns in _namespaces()]
        links = self._ip("-o", "link", "show", self.root_link, check=False)
        routes = self._ip("route", "show", "root", f"{self.net}.0/24")
        return (
            [f"netns {ns}" for ns in names]
            + [f"link {self.root_link}" for _ in links.splitlines()]
            + [f"route {r}" for r in routes.splitlines()]
            + [f"{name} pid {p.pid}" for name, p in self.spawned.items() if p.poll() is None]
            + ([f"folder {self.root}"] if self.root.exists() else [])
        )


def _tool(argv: list[str], check: bool = True) -> str:
    """What ``argv`` prints; when it fails, Unavailable with its error, or with not ``check`` nothing."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode and check:
        raise Unavailable(f"{' '.join(argv)}: {done.stderr.strip()}")
    return "" if done.returncode else done.stdout


def _namespaces() -> set[str]:
    return {line.split()[0] for line in _tool(["ip", "netns", "list"]).splitlines() if line.strip()}


def _free_net(tag: str) -> str:
    """A /24 in 10.100-227.x.0 derived from ``tag`` that no route of the machine touches yet."""
    n = zlib.crc32(tag.encode()) % (128 * 256)
    for step in range(256):
        k = (n + step) % (128 * 256)
        net = f"10.{100 + k // 256}.{k % 256}"
        if not _tool(["ip", "route", "show", "root", f"{net}.0/24"]).strip():
            return net
    raise Unavailable("no free /24 in 10.100.0.0-10.227.255.0 for a test cluster")


def _end(pids: Iterable[int], grace: float = 5) -> None:
    """SIGTERM the processes ``pids``, SIGKILL those still running after ``grace`` seconds."""
    procs = []
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
            procs[-1].terminate()
    try:
        ended((p.pid for p in procs), grace)
    except AssertionError:
        kill(procs)
        ended((p.pid for p in procs), grace)


def temporary_folder(prefix: str) -> Path:
    """A new folder for a cluster's state, in /tmp: below pytest's 0700 one munged would refuse its socket."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextmanager
def started(cluster: Cluster, what: str):
    """``cluster`` started, and stopped on leaving, however; one that does not start is ``unavailable``, saying why."""
    try:
        try:
            cluster.start()
        except Unavailable as e:
            unavailable(f"{what} did not start: {e}")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster():
    """One cluster for the session: started on first use, every daemon stopped by pid at the end."""
    reason = missing()
    if reason:
        unavailable(reason)
    with started(Cluster(temporary_folder("slurm-")), "the test cluster") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def slurm_memory_cluster():
    """A single-node cluster for the session that enforces ``--mem`` with memory cgroups."""
    reason = missing()
    if reason:
        unavailable(reason)
    if not (CGROUP_V1 / "memory" / "memory.oom_control").exists():
        unavailable(f"--mem enforced by task/cgroup needs cgroup v1's memory controller at {CGROUP_V1 / 'memory'}")
    with started(Cluster(temporary_folder("slurm-mem-"), memory_limits=True), "the --mem test cluster") as cluster:
        yield cluster


@contextmanager
def multinode_cluster_up(tag: str):
    """A started ``MultiNodeCluster`` named by ``tag``; stopped, network and folder removed, on leaving."""
    reason = missing_multinode()
    if reason:
        unavailable(reason)
    with started(MultiNodeCluster(temporary_folder(f"mnslurm-{tag}-"), tag), "the multi-node test cluster") as c:
        yield c


@pytest.fixture(scope="session")
def multinode_cluster():
    """A login node and two compute nodes for the session, the test process a login node too."""
    with multinode_cluster_up(str(os.getpid())) as cluster:
        yield cluster
    assert not cluster.leftovers(), f"the multi-node cluster left {cluster.leftovers()}"


def client_of(cluster: Cluster, monkeypatch):
    """Yield ``cluster`` to a test as a client outside any allocation, with an empty queue before and after."""
    for name in list(os.environ):
        if name.startswith(SLURM_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    cluster.wait_for_empty_queue(30)
    yield cluster
    # A job whose srun has returned may still be completing: that one the test did not leave behind.
    left = [job for job in cluster.jobs() if job["state"] != "COMPLETING"]
    cluster.cancel_all()
    cluster.wait_for_empty_queue(30)
    assert not left, f"the test left jobs in the queue: {left}"


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The single-node cluster, as ``client_of`` hands it to a test."""
    yield from client_of(slurm_cluster, monkeypatch)


@pytest.fixture
def slurm_memory(slurm_memory_cluster, monkeypatch):
    """The cluster that enforces ``--mem``, as ``client_of`` hands it to a test."""
    yield from client_of(slurm_memory_cluster, monkeypatch)


@pytest.fixture
def multinode(multinode_cluster, monkeypatch):
    """The multi-node cluster, as ``client_of`` hands it to a test."""
    yield from client_of(multinode_cluster, monkeypatch)


# -- kernels on the nodes -----------------------------------------------------------------------

#: What a cell on a node says: host, job id, the kernel's pid and its parent's (the proxy's).
WHERE = "import os, socket\nprint(socket.gethostname(), os.environ['SLURM_JOB_ID'], os.getpid(), os.getppid())"


def job_spec(*options: str) -> dict:
    """A user's spec for an ipykernel in a Slurm job on node2, before ``install``; ``options`` go to srun."""
    return {
        "argv": [
            "srun", "-N1", "-n1", "-w", "node2", "--job-name=nbkernel", *options,
            PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}",
        ],
        "display_name": "Python on node2",
        "language": "python",
    }  # fmt: skip


def installed(kernels_dir, name: str, spec: dict, argv_tail: list[str] | None = None, **config) -> dict:
    """``spec`` with the proxy put inside srun by ``install``, launched by the provisioner with ``config``.

    ``argv_tail`` replaces what srun runs, to launch something that is not the proxy.
    """
    folder = write_spec(kernels_dir, name, spec)
    done = run_cli("install", name)
    assert done.returncode == 0, done.stderr
    spec = load(folder)
    if argv_tail is not None:
        spec["argv"] = spec["argv"][: spec["argv"].index(PYTHON)] + argv_tail
    write_spec(kernels_dir, name, with_provisioner(spec, **config))
    return spec


def offered(cluster: MultiNodeCluster) -> str:
    """The server's addresses offered to the node: the machine's own (no route from a node) before the cluster's."""
    return ",".join([*reach.server_ips(), cluster.login_address])


@pytest.fixture
def on_node2(kernels_dir, multinode):
    """The srun spec ``job`` installed; the server offers the node its addresses, the machine's before the cluster's.

    The machine's own have no route from the node, so the proxy passes them over and takes the cluster's.
    Afterwards, the kernel shut down, the queue empties within 15 s.
    """
    installed(kernels_dir, "job", job_spec(), server_ip=offered(multinode))
    yield multinode
    multinode.wait_for_empty_queue(15)


def where(kc) -> tuple[str, str, int, int]:
    """The kernel's host, job id, pid and parent's pid (the proxy's)."""
    reply, outputs = execute(kc, WHERE, timeout=60)
    assert reply["content"]["status"] == "ok", reply
    host, job, pid, proxy = stdout_of(outputs).split()
    return host, job, int(pid), int(proxy)


def reached(km) -> dict:
    """Where the server's clients connect: ip and ports."""
    info = km.get_connection_info()
    return {k: info[k] for k in ("ip", *reach.PORTS)}
