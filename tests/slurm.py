"""A real single-node Slurm cluster for the tests, from Debian's packages, in a temporary folder.

munged, slurmctld and slurmd run in the foreground, each in a session of
its own, with their own ports, socket, spool and state folders, so nothing
in /etc or /run is touched and a second test session on the same machine
gets a cluster of its own. Clients find it through ``SLURM_CONF``.

``slurm_memory`` is a second such cluster that enforces ``--mem`` as sites
do, with ``TaskPlugin=task/cgroup`` and ``ConstrainRAMSpace=yes`` on cgroup
v1: each job's memory cgroup is limited to what it asked for. It takes
memory as a consumable resource (``CR_Core_Memory``), so it is kept apart
from ``slurm``, where jobs that ask for no memory must not wait for each
other.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import pytest

from .helpers import free_port, unavailable, wait_until

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "squeue", "sinfo", "scontrol", "scancel")
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

    def __init__(self, root: Path, memory_limits: bool = False):
        self.root = Path(root)
        self.memory_limits = memory_limits
        self.host = socket.gethostname().split(".")[0]
        #: the cgroup folders there were before start, so that stop removes only those Slurm made for this cluster
        self._cgroups_before = self._slurm_cgroups() if memory_limits else set()
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

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

    def _write_conf(self, munge_socket: Path) -> None:
        for name in ("spool", "state", "log"):
            (self.root / name).mkdir()
        settings = {
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
        }
        if self.memory_limits:
            settings |= {
                "TaskPlugin": "task/cgroup",
                "SelectTypeParameters": "CR_Core_Memory",
                "DefMemPerNode": DEFAULT_JOB_MEMORY,
                # Job cgroups are named by job id, under a root shared by every cluster of this node name:
                # ids of their own keep two test sessions' jobs out of each other's cgroups.
                "FirstJobId": 1000 + os.getpid() * 10,
            }
            cgroups = ["CgroupPlugin=cgroup/v1", f"CgroupMountpoint={CGROUP_V1}", "CgroupAutomount=no"]
            (self.root / "cgroup.conf").write_text("\n".join([*cgroups, "ConstrainRAMSpace=yes"]) + "\n")
        lines = [f"{k}={v}" for k, v in settings.items()]
        lines += [
            f"NodeName={self.host} CPUs=2 RealMemory={real_memory()} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]
        (self.root / "slurm.conf").write_text("\n".join(lines) + "\n")

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

    def start(self) -> None:
        """Start the daemons and return once the node is idle; Unavailable says what failed."""
        munge = self._munge_files()
        self._write_conf(munge / "munge.socket")
        self._spawn(
            "munged",
            [
                _binary("munged"),
                "-F",
                f"--socket={munge / 'munge.socket'}",
                f"--key-file={munge / 'munge.key'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}",
                f"--log-file={munge / 'munged.log'}",
            ],
            user="munge",
        )
        self._wait(lambda: (munge / "munge.socket").exists(), "munged to open its socket", "munged")
        conf = str(self.root / "slurm.conf")
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-f", conf])
        self._wait(
            lambda: self._run("scontrol", "ping").stdout.count("UP") >= 1, "slurmctld to answer ping", "slurmctld"
        )
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-f", conf])
        self._wait(self._idle, f"node {self.host} to be idle", "slurmd")

    def _run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout, check=False)

    def _idle(self) -> bool:
        out = self._run("sinfo", "--noheader", "--nodes", self.host, "--format=%t").stdout.split()
        return out == ["idle"]

    def _wait(self, ready, what: str, daemon: str) -> None:
        """Poll ``ready`` until it holds; a daemon that exits or a deadline passed is an error with its log."""
        process = self.processes[daemon]

        def outcome() -> str | None:
            if ready():
                return "ready"
            return None if process.poll() is None else f"exited with {process.returncode}"

        try:
            state = wait_until(outcome, what, START_TIMEOUT, interval=0.2)
        except AssertionError:
            state = "timed out"
        if state != "ready":
            log = (self.root / "log" / f"{daemon}.out").read_text(errors="replace")[-2000:]
            raise Unavailable(f"waiting for {what}: {daemon} {state}:\n{log}")

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
        """Cancel what is left in the queue, then end each daemon by its pid: SIGTERM, then SIGKILL."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.cancel_all()
            with suppress(AssertionError):
                self.wait_for_empty_queue(30)
        for name in reversed(DAEMONS):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)
        if self.memory_limits:
            self._remove_cgroups()

    def _slurm_cgroups(self) -> set[Path]:
        """The cgroup folders Slurm's task/cgroup makes for this node (``slurm_NODE`` in each v1 controller)."""
        return set(CGROUP_V1.glob(f"*/slurm_{self.host}")) | set(CGROUP_V1.glob(f"*/slurm_{self.host}/**/"))

    def _remove_cgroups(self) -> None:
        """Remove the empty cgroup folders Slurm left (it keeps its root); one still in use stays."""
        for folder in sorted(self._slurm_cgroups() - self._cgroups_before, key=lambda p: len(p.parts), reverse=True):
            with suppress(OSError):
                folder.rmdir()


def _session_cluster(memory_limits: bool = False):
    """A cluster for the session: started on first use, every daemon stopped by pid at the end."""
    reason = missing()
    if reason:
        unavailable(reason)
    if memory_limits and not (CGROUP_V1 / "memory" / "memory.oom_control").exists():
        unavailable(f"--mem enforced by task/cgroup needs cgroup v1's memory controller at {CGROUP_V1 / 'memory'}")
    # Not below pytest's 0700 temporary folder: munged wants every folder above its socket searchable.
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    cluster = Cluster(root, memory_limits)
    try:
        cluster.start()
    except Unavailable as e:
        cluster.stop()
        unavailable(f"the test cluster did not start: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _in_cluster(cluster: Cluster, monkeypatch):
    """``cluster``, with this test's client outside any allocation and an empty queue before and after."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "SRUN_", "SALLOC_", "SBATCH_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    cluster.wait_for_empty_queue(30)
    yield cluster
    left = cluster.jobs()
    cluster.cancel_all()
    cluster.wait_for_empty_queue(30)
    assert not left, f"the test left jobs in the queue: {left}"


@pytest.fixture(scope="session")
def slurm_cluster():
    yield from _session_cluster()


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The cluster, with this test's client outside any allocation and an empty queue before and after."""
    yield from _in_cluster(slurm_cluster, monkeypatch)


@pytest.fixture(scope="session")
def slurm_memory_cluster():
    yield from _session_cluster(memory_limits=True)


@pytest.fixture
def slurm_memory(slurm_memory_cluster, monkeypatch):
    """A cluster that enforces ``--mem`` with memory cgroups (task/cgroup), as ``slurm`` is used."""
    yield from _in_cluster(slurm_memory_cluster, monkeypatch)
