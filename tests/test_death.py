"""Why the kernel died, in one sentence: the out-of-memory killer, the job's time limit, a signal, an exit code.

The out-of-memory kills are real: cgroup v1's memory controller is writable
here as root, so each test makes a memory cgroup of its own with a small
limit, runs a real process (and a real ipykernel) in it, and lets it
allocate past the limit. Every cgroup is removed afterwards, failure or not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from inplace_restarter import death as death_module
from inplace_restarter.death import MemoryCgroup, MemoryUse, Witness, describe_death, describe_exit, format_bytes
from inplace_restarter.job import Job

from .helpers import (
    PYTHON,
    execute,
    inner_pid,
    inner_pids,
    running,
    stderr_of,
    stdout_of,
    unavailable,
    wait_until,
)
from .spec_helpers import proxied, write_spec

V1_MEMORY = Path("/sys/fs/cgroup/memory")
MB = 2**20

#: A process that says it is ready, waits for a line on stdin (once it is in its cgroup), then allocates ``argv[1]`` MB.
ALLOCATE = "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\nheld = [bytearray(2**20) for _ in range(int(sys.argv[1]))]\n"


class OwnCgroup:
    """A memory cgroup v1 of this test's own, with a limit; ``remove`` ends what runs in it and deletes it."""

    def __init__(self, limit: int):
        self.folder = V1_MEMORY / f"inplace-restarter-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir()
        (self.folder / "memory.limit_in_bytes").write_text(str(limit))

    def add(self, pid: int) -> None:
        (self.folder / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.folder / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        # Only the test's own processes are in it: the cgroup is new and only the test adds to it.
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.pids(), f"{self.folder} to be empty", timeout=30)
        self.folder.rmdir()


@pytest.fixture
def memory_cgroup():
    """``memory_cgroup(limit)``: a new memory cgroup (v1) limited to ``limit`` bytes, removed after the test."""
    if os.geteuid() != 0 or not (V1_MEMORY / "memory.oom_control").exists():
        unavailable("a real out-of-memory kill needs root and cgroup v1's memory controller at /sys/fs/cgroup/memory")
    made: list[OwnCgroup] = []

    def make(limit: int) -> OwnCgroup:
        made.append(OwnCgroup(limit))
        return made[-1]

    yield make
    for cgroup in made:
        cgroup.remove()


def assert_killed_for_memory(sentence: str, limit: str) -> None:
    """``sentence`` names the out-of-memory killer, the use and the cgroup's ``limit``."""
    oom = rf"The kernel was killed by the out-of-memory killer: it used [\d.]+ [KMG]?B of the cgroup's {limit}"
    assert re.fullmatch(rf"{oom} \(memory limit of this cgroup\)", sentence), sentence


def started_in(cgroup: OwnCgroup, megabytes: int) -> tuple[subprocess.Popen, Witness]:
    """A process that allocates ``megabytes`` MB once in ``cgroup``, and the Witness recorded at its start."""
    process = subprocess.Popen(
        [PYTHON, "-c", ALLOCATE, str(megabytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "ready\n"
    cgroup.add(process.pid)
    return process, Witness.of_pid(process.pid)


@pytest.mark.parametrize(
    ("returncode", "sentence"),
    [
        (None, "The kernel died"),
        (0, "The kernel exited with code 0"),
        (3, "The kernel exited with code 3"),
        (-signal.SIGKILL, "The kernel died of SIGKILL"),
        (-signal.SIGSEGV, "The kernel died of SIGSEGV"),
        (-signal.SIGTERM, "The kernel died of SIGTERM"),
        (-99, "The kernel died of signal 99"),
    ],
)
def test_an_exit_code_or_a_signal_is_said_as_the_proxy_says_it(returncode, sentence):
    assert describe_exit(returncode) == sentence
    assert describe_death(returncode) == sentence
    assert Witness(None).describe(returncode) == sentence


def test_a_real_process_that_exits_or_is_killed_is_described_by_its_code_or_signal(memory_cgroup):
    """In a memory cgroup, but not over its limit: no out-of-memory killer is named."""
    cgroup = memory_cgroup(64 * MB)
    exits = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.readline(); sys.exit(3)"], stdin=subprocess.PIPE)
    cgroup.add(exits.pid)
    witness = Witness.of_pid(exits.pid)
    exits.stdin.close()
    assert witness.describe(exits.wait(30)) == "The kernel exited with code 3"

    segfaults = "import ctypes, sys; sys.stdin.readline(); ctypes.string_at(0)"
    crashes = subprocess.Popen([PYTHON, "-c", segfaults], stdin=subprocess.PIPE)
    cgroup.add(crashes.pid)
    witness = Witness.of_pid(crashes.pid)
    crashes.stdin.close()
    assert witness.describe(crashes.wait(30)) == "The kernel died of SIGSEGV"

    killed, witness = started_in(cgroup, 1)
    killed.kill()
    assert witness.describe(killed.wait(30)) == "The kernel died of SIGKILL"


def test_a_process_over_its_cgroups_memory_limit_is_named_a_victim_of_the_out_of_memory_killer(memory_cgroup):
    cgroup = memory_cgroup(64 * MB)
    process, witness = started_in(cgroup, 200)
    assert witness.cgroup.folder == cgroup.folder
    assert (witness.before.limit, witness.before.oom_kills) == (64 * MB, 0)
    process.stdin.write("\n")
    process.stdin.flush()
    returncode = process.wait(60)
    assert returncode == -signal.SIGKILL
    assert_killed_for_memory(witness.describe(returncode), "64 MB")
    assert witness.cgroup.snapshot().peak > 32 * MB
    assert witness.cgroup.snapshot().oom_kills == 1


def test_a_second_kill_in_the_same_cgroup_is_told_by_the_counter_rising_again(memory_cgroup):
    """The counter counts every kill: only a rise since the kernel started names the out-of-memory killer."""
    cgroup = memory_cgroup(64 * MB)
    first, _ = started_in(cgroup, 200)
    first.stdin.write("\n")
    first.stdin.flush()
    assert first.wait(60) == -signal.SIGKILL
    killed, witness = started_in(cgroup, 1)
    assert witness.before.oom_kills == 1
    killed.kill()
    assert witness.describe(killed.wait(30)) == "The kernel died of SIGKILL", "a kill by hand is no OOM kill"
    second, witness = started_in(cgroup, 200)
    second.stdin.write("\n")
    second.stdin.flush()
    assert_killed_for_memory(witness.describe(second.wait(60)), "64 MB")


@pytest.mark.timeout(180)
def test_a_real_ipykernel_over_its_memory_limit_is_named_a_victim_of_the_out_of_memory_killer(specs, memory_cgroup):
    cgroup = memory_cgroup(128 * MB)
    with running("direct") as (km, kc):
        pid = km.provisioner.pid
        cgroup.add(pid)
        witness = Witness.of_pid(pid)
        assert witness.cgroup.folder == cgroup.folder
        reply, _ = execute(kc, "import os; os.getpid()")
        assert reply["content"]["status"] == "ok"
        kc.execute("held = bytearray(400 * 2**20)")
        returncode = km.provisioner.process.wait(60)
    assert returncode == -signal.SIGKILL
    assert_killed_for_memory(witness.describe(returncode), "128 MB")


#: A cell that returns at once and leaves a thread to allocate 600 MB once ``release`` exists.
IDLE_ALLOCATION = (
    "import os, threading, time\n"
    "def allocate():\n"
    "    while not os.path.exists({release!r}):\n"
    "        time.sleep(0.02)\n"
    "    globals()['held'] = bytearray(600 * 2**20)\n"
    "threading.Thread(target=allocate, daemon=True).start()"
)


@pytest.mark.timeout(180)
def test_a_proxied_kernel_over_its_cgroups_memory_limit_is_said_to_be_and_restarted_in_place(
    kernels_dir, memory_cgroup, tmp_path
):
    """The proxy runs in the cgroup from its start (a shell joins it, then execs the proxy), and so do its kernels."""
    cgroup, release = memory_cgroup(300 * MB), tmp_path / "release"
    spec = proxied()
    join = f'echo $$ > {cgroup.folder / "cgroup.procs"} && exec "$0" "$@"'
    spec["argv"] = ["/bin/sh", "-c", join, *spec["argv"]]
    write_spec(kernels_dir, "in-cgroup", spec)
    with running("in-cgroup") as (km, kc):
        assert km.provisioner.pid in cgroup.pids()
        execute(kc, "x = 1")
        reply, outputs = execute(kc, "held = bytearray(600 * 2**20)", timeout=60)
        killed = (
            r"The kernel was killed by the out-of-memory killer: it used [\d.]+ MB of the cgroup's 300 MB "
            r"\(memory limit of this cgroup\)"
        )
        assert re.fullmatch(rf"{killed}; it was restarted in place", reply["content"]["evalue"]), reply["content"]
        assert re.fullmatch(rf"{killed}; restarting it in place\.\n", stderr_of(outputs)), stderr_of(outputs)
        _, outputs = execute(kc, "print('x' in globals())")
        assert stdout_of(outputs) == "False\n", "a fresh namespace"
        _, outputs = execute(kc, "%restart --info")
        assert re.search(r"^Memory: at most [\d.]+ MB used of the cgroup's 300 MB", stdout_of(outputs), re.M)

        # Killed while no cell runs: the next cell says so at its top.
        before = inner_pid(km)
        execute(kc, IDLE_ALLOCATION.format(release=str(release)))
        release.touch()
        wait_until(lambda: inner_pids(km) - {before}, "a new inner kernel")
        _, outputs = execute(kc, "print('next')")
        notice = rf"{killed} at [:\d]+, and was restarted in place: its variables are gone\.\n"
        assert re.fullmatch(notice, stderr_of(outputs)), stderr_of(outputs)


def test_cgroup_v2_files_are_read_with_an_ancestors_limit_and_the_job_named(tmp_path):
    """cgroup v2 as Slurm lays it out (job, step, task); here as files, since this machine's memory controller is v1."""
    job = tmp_path / "job_1234"
    task = job / "step_0" / "user" / "task_0"
    task.mkdir(parents=True)
    (job / "memory.max").write_text(f"{8 * 2**30}\n")
    (job / "memory.peak").write_text(f"{int(7.9 * 2**30)}\n")
    (job / "memory.current").write_text(f"{6 * 2**30}\n")
    for folder in (job / "step_0", job / "step_0" / "user", task):
        (folder / "memory.max").write_text("max\n")
        (folder / "memory.peak").write_text(f"{7 * 2**30}\n")
    events = task / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 0\noom_kill 0\noom_group_kill 0\n")
    cgroup = MemoryCgroup(task, 2, "/system.slice/slurmstepd.scope/job_1234/step_0/user/task_0")
    before = cgroup.snapshot()
    assert before == MemoryUse(
        8 * 2**30, int(7.9 * 2**30), 0, "/system.slice/slurmstepd.scope/job_1234", current=6 * 2**30
    ), "the use of the cgroup whose limit holds"
    events.write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    slurm_job = Job("1234", "node2")
    assert describe_death(-signal.SIGKILL, before, cgroup.snapshot(), slurm_job) == (
        "The kernel was killed by the out-of-memory killer: it used 7.9 GB of the job's 8 GB (memory limit of this job)"
    )
    assert describe_death(-signal.SIGKILL, before, cgroup.snapshot(), Job("99", "node2")).endswith(
        "of the cgroup's 8 GB (memory limit of this cgroup)"
    ), "another job's cgroup is not this job's"


def test_a_cgroup_gone_by_the_kernels_death_leaves_the_signal():
    witness = Witness(MemoryCgroup(Path("/nonexistent/cgroup"), 1))
    assert witness.before is None
    assert witness.describe(-signal.SIGKILL) == "The kernel died of SIGKILL"


def test_an_oom_kill_without_any_limit_is_the_machine_running_out_of_memory():
    before, after = MemoryUse(None, 0, 0), MemoryUse(None, 3 * 2**30, 1)
    assert describe_death(-signal.SIGKILL, before, after) == (
        "The kernel was killed by the out-of-memory killer: the machine ran out of memory (it used 3 GB)"
    )


def test_a_kernel_that_dies_once_its_jobs_end_time_has_passed_is_said_to_have_reached_the_time_limit():
    now = time.time()
    ended = Job("1234", "node2", end=datetime.fromtimestamp(now).astimezone() - timedelta(seconds=5), time_limit="5:00")
    assert describe_death(-signal.SIGTERM, job=ended, now=now) == (
        "The kernel died of SIGTERM: Slurm job 1234 reached its time limit (5:00)"
    )
    running_on = Job("1234", "node2", end=datetime.fromtimestamp(now + 60).astimezone(), time_limit="5:00")
    assert describe_death(-signal.SIGTERM, job=running_on, now=now) == "The kernel died of SIGTERM"
    assert describe_death(-signal.SIGTERM, job=Job("1234", "node2"), now=now) == "The kernel died of SIGTERM"


@pytest.mark.parametrize(
    ("size", "text"),
    [(512, "512 B"), (64 * MB, "64 MB"), (int(63.96 * MB), "64 MB"), (int(7.9 * 2**30), "7.9 GB"), (8 * 2**30, "8 GB")],
)
def test_memory_sizes_are_written_in_binary_units_as_slurm_writes_them(size, text):
    assert format_bytes(size) == text


#: The proxy's part, inside a Slurm job: start a real ipykernel, record its Witness, make it allocate past the
#: job's --mem, and print the returncode and the sentence as JSON.
IN_JOB = """
import json, sys
sys.path.insert(0, sys.argv[1])
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
from inplace_restarter.death import Witness
from inplace_restarter.job import Job
km = KernelManager(kernel_name="direct", connection_file=f"{jupyter_runtime_dir()}/kernel-direct.json")
km.start_kernel()
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(60)
    witness = Witness.of_pid(km.provisioner.pid, Job.from_environ())
    kc.execute("held = bytearray(600 * 2**20)")
    returncode = km.provisioner.process.wait(60)
    print(json.dumps({"returncode": returncode, "sentence": witness.describe(returncode)}), flush=True)
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_a_kernel_over_its_slurm_jobs_memory_limit_is_named_a_victim_of_the_jobs_limit(specs, slurm_memory):
    """Slurm's task/cgroup with ConstrainRAMSpace: ``srun --mem=300M`` limits the job's memory cgroup to 300 MB."""
    package = str(Path(death_module.__file__).parents[1])
    done = subprocess.run(
        ["srun", "--mem=300M", PYTHON, "-c", IN_JOB, package], capture_output=True, text=True, timeout=150
    )
    said = json.loads(done.stdout.splitlines()[-1])
    print(said["sentence"])
    assert said["returncode"] == -signal.SIGKILL, done
    assert re.fullmatch(
        r"The kernel was killed by the out-of-memory killer: it used [\d.]+ MB of the job's 300 MB "
        r"\(memory limit of this job\)",
        said["sentence"],
    ), said
    slurm_memory.wait_for_empty_queue(30)
