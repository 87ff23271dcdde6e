"""The Slurm job the kernel runs in, read from a real single-node cluster, and from a broken one.

A job started with ``--time`` ends that far ahead, a time limit changed
with ``scontrol update`` is seen at the next reading, the notices come as
the end nears, and a kernel that Slurm stops at the time limit is said to
have reached it. Where ``squeue`` and ``scontrol`` hang, fail, print
nonsense or are missing (scripts on PATH stand in for a broken cluster's
commands), the end time is unknown within ``command_timeout`` and nothing
is raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from inplace_restarter.death import describe_death
from inplace_restarter.job import Job, JobNotices, watch_end

from .helpers import PYTHON, ended, wait_for_file

pytestmark = pytest.mark.slurm

#: The job's task: print its environment, then wait until stdin closes.
ENV_THEN_WAIT = "import json, os, sys\nprint(json.dumps(dict(os.environ)), flush=True)\nsys.stdin.read()"


@contextmanager
def in_job(cluster, *options: str, task: str = ENV_THEN_WAIT, args: tuple[str, ...] = ()):
    """A job run by ``srun *options`` whose task prints its environment first: that environment, as a dict.

    Its stdin is closed at the end, so the task ends, srun with it, and the job leaves the queue.
    """
    srun = subprocess.Popen(
        ["srun", "--nodes=1", "--ntasks=1", *options, PYTHON, "-c", task, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    env = {}
    try:
        env = json.loads(srun.stdout.readline())
        yield env
    finally:
        srun.stdin.close()
        try:
            srun.wait(30)
        except subprocess.TimeoutExpired:
            srun.kill()
            srun.wait(30)
        if "SLURM_JOB_ID" in env:
            cluster.wait_for_job_gone(env["SLURM_JOB_ID"], timeout=30)


def scontrol(*argv: str) -> None:
    subprocess.run(["scontrol", *argv], check=True, capture_output=True, timeout=30)


def test_a_job_started_with_a_time_limit_ends_that_far_ahead(slurm):
    before = math.floor(time.time())
    with in_job(slurm, "--time=5") as env:
        job = Job.from_environ(env)
        assert (job.id, job.node) == (env["SLURM_JOB_ID"], slurm.host)
        end = asyncio.run(job.end_time())
        after = time.time()
        assert before + 300 <= end.timestamp() <= after + 300
        assert job.time_limit == "5:00"
        assert 300 - (after - before) <= job.time_left(after) <= 300
        said = job.describe()
        assert re.fullmatch(rf"Slurm job {job.id} on {slurm.host}, (5 min|4 min 5\d s) left", said), "never more"


def test_an_extended_time_limit_is_seen_at_the_next_reading(slurm):
    with in_job(slurm, "--time=5") as env:
        job = Job.from_environ(env, refresh_interval=3600)
        end = asyncio.run(job.end_time())
        scontrol("update", f"JobId={job.id}", "TimeLimit=10")
        assert asyncio.run(job.end_time()) == end, "within refresh_interval the last reading holds"
        assert asyncio.run(job.read())
        assert (job.end - end).total_seconds() == 300
        assert job.time_limit == "10:00"
        stale = Job.from_environ(env, refresh_interval=0)
        assert asyncio.run(stale.end_time()) == job.end, "past refresh_interval end_time() reads again"


def test_a_job_without_a_time_limit_has_no_end(slurm):
    with in_job(slurm) as env:
        job = Job.from_environ(env)
        assert asyncio.run(job.end_time()) is None
        assert (job.time_limit, job.time_left()) == ("UNLIMITED", math.inf)
        assert job.describe() == f"Slurm job {job.id} on {slurm.host}, no time limit"


@pytest.mark.timeout(120)
def test_the_notices_come_once_each_as_the_end_nears(slurm):
    """A one-minute job, warned 50 and 45 s before its end."""
    with in_job(slurm, "--time=1") as env:
        job = Job.from_environ(env)
        notices = JobNotices(warn_before=[50.0, 45.0])
        told: list[tuple[float, str | None]] = []

        async def watch() -> None:
            done = asyncio.Event()

            def fell_due() -> None:
                told.append((job.time_left(), notices.word(job)))
                if len(told) == 2:
                    done.set()

            watcher = asyncio.ensure_future(watch_end(job, notices, fell_due))
            try:
                await asyncio.wait_for(done.wait(), 40)
                assert notices.next_due(job.time_left()) is None, "no third notice to come"
            finally:
                watcher.cancel()

        asyncio.run(watch())
    for left, notice in told:
        said = re.fullmatch(
            rf"This job ends in (\d+) s \(Slurm time limit 1:00, job {job.id}\): save your work", notice
        )
        assert said and left - 1 <= int(said[1]) <= left, notice
    (first, _), (second, _) = told
    assert 45 < first <= 50 and 40 < second <= 45


@pytest.mark.timeout(240)
def test_a_kernel_stopped_at_the_jobs_time_limit_is_said_to_have_reached_it(slurm, tmp_path):
    """Slurm's SIGTERM at the end of a one-minute job; the proxy's stand-in ignores it and writes the kernel's code."""
    task = (
        "import json, os, signal, subprocess, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "kernel = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'], stdin=subprocess.PIPE,\n"
        "                          preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))\n"
        "print(json.dumps(dict(os.environ)), flush=True)\n"
        "code = kernel.wait()\n"
        "with open(sys.argv[1] + '.part', 'w') as f:\n"
        "    f.write(str(code))\n"
        "os.rename(sys.argv[1] + '.part', sys.argv[1])\n"
    )
    result = tmp_path / "returncode"
    with in_job(slurm, "--time=1", task=task, args=(str(result),)) as env:
        job = Job.from_environ(env)
        asyncio.run(job.end_time())
        wait_for_file(result, timeout=150)
    assert describe_death(int(result.read_text()), job=job) == (
        f"The kernel died of SIGTERM: Slurm job {job.id} reached its time limit (1:00)"
    )


@pytest.fixture
def broken_cluster(tmp_path, monkeypatch):
    """``broken_cluster(script)``: PATH holds only ``squeue`` and ``scontrol`` running ``script`` (none for None)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))

    def make(script: str | None) -> Path:
        if script is not None:
            for name in ("squeue", "scontrol"):
                path = folder / name
                path.write_text(f"#!/bin/sh\n{script}\n")
                path.chmod(0o755)
        return folder

    return make


#: Each script stands for a cluster command that hangs, fails, or answers nonsense.
BROKEN = {
    # The command's own child hangs too: both are killed at the timeout.
    "hangs": '/bin/sleep 1000 &\necho $! >> "$(dirname "$0")/sleepers"\nwait',
    "fails": "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1",
    "prints nonsense": "echo 'soon|tomorrow'\necho 'EndTime=soon TimeLimit=long'",
    "prints nothing": "exit 0",
    "is missing": None,
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_cluster_leaves_the_end_unknown_within_the_timeout(broken_cluster, broken, caplog):
    folder = broken_cluster(BROKEN[broken])
    job = Job("1234", "node2", command_timeout=1.0, refresh_interval=0)
    caplog.set_level(logging.DEBUG)

    async def read_twice() -> list[float]:
        times = []
        for _ in range(2):
            start = time.monotonic()
            assert await job.end_time() is None
            times.append(time.monotonic() - start)
        return times

    times = asyncio.run(read_twice())
    assert max(times) < 2.0, f"squeue that {broken}: readings took {times}"
    assert (job.known, job.time_left(), job.describe()) == (False, None, "Slurm job 1234 on node2")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("The end time of Slurm job 1234 is unknown: "), warnings
    sleepers = folder / "sleepers"
    if sleepers.exists():
        ended([int(pid) for pid in sleepers.read_text().split()])


def test_a_hanging_squeue_does_not_hold_up_the_event_loop(broken_cluster):
    broken_cluster(BROKEN["hangs"])
    job = Job("1234", socket.gethostname(), command_timeout=1.0)

    async def meanwhile() -> int:
        reading = asyncio.ensure_future(job.read())
        ticks = 0
        while not reading.done():
            await asyncio.sleep(0.01)
            ticks += 1
        assert not reading.result()
        return ticks

    assert asyncio.run(meanwhile()) >= 20, "the loop ran on while squeue hung"


def test_a_failure_after_an_answer_keeps_it_and_is_warned_about_again(broken_cluster, caplog):
    broken_cluster("echo '2026-12-02T16:57:00|5:00'")
    job = Job("1234", "node2", command_timeout=1.0)
    assert asyncio.run(job.read()) and job.time_limit == "5:00"
    broken_cluster(BROKEN["fails"])
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        assert not asyncio.run(job.read())
    assert job.time_limit == "5:00", "a failed reading keeps the last answer"
    unknown = [r for r in caplog.records if "is unknown" in r.getMessage()]
    assert [r.levelno for r in unknown] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "squeue exited with code 1: slurm_load_jobs error" in unknown[0].getMessage()
