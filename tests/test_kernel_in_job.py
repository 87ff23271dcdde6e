"""The proxy in a Slurm job, as the notebook sees it: notices before the job ends, where it runs, why it died.

Real kernels in real jobs on the tests' single-node cluster, the proxy
inside srun as ``install`` puts it. Offsets of the notices are in seconds
here, so a two-minute job shows them within a test; a cluster whose
``squeue`` and ``scontrol`` hang (scripts on PATH stand in for them) changes
nothing but what the proxy knows of the job.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from inplace_restarter.job import Job

from .helpers import (
    ended,
    execute,
    iopub_until,
    iopub_until_idle,
    running,
    stderr_of,
    stdout_of,
    wait_until,
)
from .spec_helpers import load, write_spec
from .test_job import BROKEN
from .test_slurm import SRUN_SPEC, WHERE, installed, where

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def notice_of(job: str, limit: str, left: str = r"(\d+ min )?\d+ s|\d+ min") -> str:
    """A pattern for the notice of ``job`` with time limit ``limit`` (as Slurm prints it)."""
    return rf"This job ends in (?:{left}) \(Slurm time limit {re.escape(limit)}, job {job}\): save your work\n"


@contextmanager
def proxied_in_job(kernels_dir: Path, cluster, srun: tuple[str, ...] = (), proxy: tuple[str, ...] = (), log=None):
    """A kernel started as Jupyter does by ``srun *srun``, the proxy inside it given ``proxy`` options.

    The proxy's log goes to ``log`` (a path), if given. Shut down as Jupyter does.
    """
    argv = SRUN_SPEC["argv"]
    folder = write_spec(kernels_dir, "slurm-py", {**SRUN_SPEC, "argv": [*argv[:4], *srun, *argv[4:]]})
    installed()
    spec = load(folder)
    spec["argv"] += list(proxy)
    write_spec(kernels_dir, "slurm-py", spec)
    with (
        open(log or os.devnull, "w") as stderr,
        running("slurm-py", startup_timeout=120, graceful=True, stderr=stderr) as pair,
    ):
        yield pair


def logged(log: Path, what: str) -> int:
    """How many notices the proxy's log says were ``"held for the next cell"`` or ``"shown at"``."""
    return sum(what in line for line in log.read_text().splitlines() if line.count("Time-limit notice"))


def seconds_said(notice: str) -> int:
    """The time left a notice states, in seconds."""
    said = re.match(r"This job ends in (?:(\d+) min)? ?(?:(\d+) s)? \(", notice)
    assert said, notice
    return int(said[1] or 0) * 60 + int(said[2] or 0)


def job_end(job_id: str) -> float:
    """When Slurm says the job ends (POSIX seconds)."""
    job = Job(job_id, "")
    assert asyncio.run(job.read()) and job.end is not None
    return job.end.timestamp()


def run_with_notice(kc, code: str, job: str, end: float, **options) -> tuple[dict, list[dict]]:
    """Run ``code`` in a two-minute job ending at ``end``; its stderr is one notice, with the time left as it ran.

    Never more than was left when it was sent, nor a second less than when it ended.
    """
    before = time.time()
    reply, outputs = execute(kc, code, **options)
    after = time.time()
    notice = stderr_of(outputs)
    assert re.fullmatch(notice_of(job, "2:00"), notice), outputs
    assert end - after - 1 <= seconds_said(notice) <= end - before, (notice, end - before)
    return reply, outputs


#: A cell that says it runs, then waits for ``release`` to exist.
WAITING = "import os, time\nprint('waiting', flush=True)\nwhile not os.path.exists({release!r}):\n    time.sleep(0.02)"


@pytest.mark.timeout(240)
def test_each_notice_comes_once_in_the_running_cell_or_else_at_the_top_of_the_next(kernels_dir, slurm, tmp_path):
    """A two-minute job, warned 90 and 80 s before its end: 30 s in, a cell runs; 40 s in, none does."""
    log, release = tmp_path / "kernel.log", tmp_path / "release"
    # At INFO, the log says when each notice fell due: the marker of the one due while no cell runs.
    proxy = ("--JobNotices.warn_before=[90,80]", "--log-level=INFO")
    with proxied_in_job(kernels_dir, slurm, ("--time=2",), proxy, log) as (km, kc):
        job = where(kc)[0]
        msg_id = kc.execute(WAITING.format(release=str(release)))
        said = iopub_until(
            kc, msg_id, lambda m: m["msg_type"] == "stream" and m["content"]["name"] == "stderr", timeout=90
        )
        release.touch()
        said += iopub_until_idle(kc, msg_id)
        streams = [m["content"] for m in said if m["msg_type"] == "stream"]
        assert streams[0] == {"name": "stdout", "text": "waiting\n"}, "told while the cell runs"
        assert re.fullmatch(notice_of(job, "2:00", r"1 min [23]\d s"), stderr_of(said)), said
        assert kc.get_shell_msg(timeout=30)["content"]["status"] == "ok"

        wait_until(
            lambda: logged(log, "held for the next cell") == 1, "the second notice, while no cell runs", timeout=60
        )
        reply, outputs = execute(kc, "print('next')")
        assert re.fullmatch(notice_of(job, "2:00"), stderr_of(outputs)), outputs
        assert stdout_of(outputs) == "next\n" and reply["content"]["status"] == "ok"
        _, outputs = execute(kc, "print('again')")
        assert stderr_of(outputs) == "", "each notice once"
    assert logged(log, "shown at") == 2


@contextmanager
def notices_held(kernels_dir: Path, cluster, log: Path, *warn_before: int):
    """A two-minute job warned ``warn_before`` seconds ahead, once each has fallen due while no cell ran.

    Yields the client, the job's id and its end (POSIX seconds).
    """
    proxy = (f"--JobNotices.warn_before={list(warn_before)}", "--log-level=INFO")
    with proxied_in_job(kernels_dir, cluster, ("--time=2",), proxy, log) as (_, kc):
        job = where(kc)[0]
        end = job_end(job)
        held = len(warn_before)
        wait_until(lambda: logged(log, "held for the next cell") == held, "the notices, while no cell runs", timeout=90)
        yield kc, job, end


@pytest.mark.timeout(240)
def test_notices_due_while_idle_show_once_with_the_time_left_when_the_next_cell_runs(kernels_dir, slurm, tmp_path):
    """A two-minute job warned 100 and 90 s ahead; the next cell runs 20 s after both fell due."""
    log = tmp_path / "kernel.log"
    with notices_held(kernels_dir, slurm, log, 100, 90) as (kc, job, end):
        wait_until(lambda: end - time.time() <= 70, "20 s after the second notice fell due", timeout=60)
        reply, outputs = run_with_notice(kc, "print('next')", job, end)
        assert stdout_of(outputs) == "next\n" and reply["content"]["status"] == "ok"
        assert stderr_of(execute(kc, "print('again')")[1]) == ""
    assert logged(log, "shown at") == 1


@pytest.mark.timeout(240)
def test_a_notice_held_over_restart_is_shown_once_by_the_restart_cell_with_the_time_then(kernels_dir, slurm, tmp_path):
    log = tmp_path / "kernel.log"
    with notices_held(kernels_dir, slurm, log, 100) as (kc, job, end):
        reply, outputs = run_with_notice(kc, "%restart", job, end, timeout=120)
        assert reply["content"]["status"] == "ok"
        notice, restarted = stderr_of(outputs), stdout_of(outputs)
        left = re.fullmatch(
            rf"Restarted the kernel in place in [\d.]+ s \(Slurm job {job} on \S+, (.+) left\)\n", restarted
        )
        assert left and seconds_said(f"This job ends in {left[1]} (") <= seconds_said(notice), "the same clock"
        assert stderr_of(execute(kc, "print('after')")[1]) == "", "shown once"
    assert logged(log, "shown at") == 1


def info_once_the_end_is_known(kc) -> list[dict]:
    """The output of ``%restart --info`` once the proxy has read the job's end from Slurm."""
    return wait_until(
        lambda: " left" in stdout_of(outputs := execute(kc, "%restart --info")[1]) and outputs,
        "the job's end to be read",
        interval=0.2,
    )


def test_restart_and_its_info_name_the_job_the_node_and_the_time_left(kernels_dir, slurm):
    """A ten-minute job warned 600 s ahead: the notice is due as soon as the job's end is known."""
    with proxied_in_job(kernels_dir, slurm, ("--time=10",), ("--JobNotices.warn_before=[600]",)) as (km, kc):
        info = info_once_the_end_is_known(kc)
        first, *rest = stdout_of(info).splitlines()
        job, pid, _ = where(kc)
        # The watcher holds the notice as it reads the end, so the cell that first sees the end shows it.
        assert re.fullmatch(notice_of(job, "10:00", r"9 min \d+ s"), stderr_of(info)), "in that cell"
        here = rf"Slurm job {job} on {re.escape(slurm.host)}, 9 min \d+ s left"
        assert re.fullmatch(rf"The kernel runs in {here} \(time limit 10:00, until [-\d]+ [:\d]+\)", first), first
        assert all(line.startswith("Memory: ") for line in rest), rest
        assert where(kc)[:2] == (job, pid), "--info restarts nothing"
        assert stderr_of(execute(kc, "print('again')")[1]) == "", "told once"

        reply, outputs = execute(kc, "%restart", timeout=120)
        assert reply["content"]["status"] == "ok"
        assert re.fullmatch(rf"Restarted the kernel in place in [\d.]+ s \({here}\)\n", stdout_of(outputs))
        new_job, new_pid, _ = where(kc)
        assert (new_job, new_pid != pid) == (job, True)


def test_the_notices_can_be_turned_off(kernels_dir, slurm):
    proxy = ("--JobNotices.warn_before=[600]", "--JobNotices.enabled=False")
    with proxied_in_job(kernels_dir, slurm, ("--time=10",), proxy) as (_, kc):
        # Once --info knows the time left, a notice would be waiting for the next cell.
        info = info_once_the_end_is_known(kc)
        _, outputs = execute(kc, WHERE)
        assert stderr_of(info) == stderr_of(outputs) == ""
        assert f"Slurm job {stdout_of(outputs).split()[0]} " in stdout_of(info)


@pytest.fixture
def hanging_slurm_commands(tmp_path, monkeypatch) -> Path:
    """``squeue`` and ``scontrol`` that hang (and write their sleepers' pids to the returned file), first on PATH."""
    folder = tmp_path / "hanging"
    folder.mkdir()
    for name in ("squeue", "scontrol"):
        (folder / name).write_text(f"#!/bin/sh\n{BROKEN['hangs']}\n")
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder / "sleepers"


def test_slurm_commands_that_hang_change_nothing_else(kernels_dir, slurm, hanging_slurm_commands, tmp_path):
    """While every reading of the job hangs to its timeout (10 s), cells answer at once and %restart works."""
    log = tmp_path / "kernel.log"
    proxy = ("--Job.command_timeout=10", "--Job.refresh_interval=1")
    with proxied_in_job(kernels_dir, slurm, ("--time=10",), proxy, log) as (_, kc):
        job = where(kc)[0]
        slowest = 0.0
        # Cells through a whole reading, until the proxy gives it up.
        while "is unknown" not in log.read_text():
            start = time.monotonic()
            assert execute(kc, "pass")[0]["content"]["status"] == "ok"
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 2, f"a cell took {slowest:.2f} s while squeue hung"

        start = time.monotonic()
        _, outputs = execute(kc, "%restart --info")
        assert time.monotonic() - start < 2
        assert stdout_of(outputs).startswith(
            f"The kernel runs in Slurm job {job} on {slurm.host} (Slurm has not said when it ends)\n"
        )
        reply, outputs = execute(kc, "%restart", timeout=120)
        assert reply["content"]["status"] == "ok"
        assert re.fullmatch(
            rf"Restarted the kernel in place in [\d.]+ s \(Slurm job {job} on \S+\)\n", stdout_of(outputs)
        )
        assert stdout_of(execute(kc, "print('after')")[1]) == "after\n"
    ended(int(pid) for pid in hanging_slurm_commands.read_text().split())


@pytest.mark.timeout(360)
def test_a_kernel_over_its_jobs_memory_limit_is_said_to_be_and_restarted_in_place(kernels_dir, slurm_memory):
    """Slurm enforces ``--mem=300M`` with the job's memory cgroup; a cell allocates 600 MB."""
    with proxied_in_job(kernels_dir, slurm_memory, ("--mem=300M",)) as (km, kc):
        job, pid, _ = where(kc)
        execute(kc, "x = 1")
        reply, outputs = execute(kc, "held = bytearray(600 * 2**20)", timeout=120)
        content = reply["content"]
        killed = (
            r"The kernel was killed by the out-of-memory killer: it used [\d.]+ MB of the job's 300 MB "
            r"\(memory limit of this job\)"
        )
        assert content["ename"] == "DeadKernelError"
        assert re.fullmatch(rf"{killed}; it was restarted in place", content["evalue"]), content["evalue"]
        assert re.fullmatch(rf"{killed}; restarting it in place\.\n", stderr_of(outputs)), stderr_of(outputs)
        reply, outputs = execute(kc, "print('x' in globals())")
        assert stdout_of(outputs) == "False\n", "a fresh namespace"
        new_job, new_pid, _ = where(kc)
        assert (new_job, new_pid != pid) == (job, True)
