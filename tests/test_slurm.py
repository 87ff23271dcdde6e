"""Kernels in a Slurm job, on a real single-node cluster, with the client outside any allocation.

The spec is a user's srun spec; ``install`` puts the proxy inside srun, so
``%restart`` and the rescue of a hung kernel restart only the kernel, in the
same job; shutdown, and even SIGKILL of the proxy, leave no job behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from inplace_restarter.kernelspec import METADATA_KEY, proxy_argv

from .helpers import PYTHON, execute, reply_to, running, stdout_of, wait_for_stream
from .spec_helpers import load, run_cli, with_provisioner, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

SRUN_SPEC = {
    "argv": [
        "srun",
        "--nodes=1",
        "--ntasks=1",
        "--job-name=nbkernel",
        PYTHON,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ],
    "display_name": "Python in a Slurm job",
    "language": "python",
}
WHERE = "import os\nprint(os.environ['SLURM_JOB_ID'], os.getpid(), os.getppid())"
#: A cell that says it runs, then sleeps far longer than any test: the marker to interrupt it on.
SLEEPING = "import time\nprint('sleeping', flush=True)\ntime.sleep(600)"


@pytest.fixture
def srun_spec(jupyter_dirs):
    return write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "slurm-py", SRUN_SPEC)


def installed(*options: str) -> str:
    done = run_cli("install", *options, "slurm-py")
    assert done.returncode == 0, done.stderr
    return done.stdout


def running_in_job(cluster, name: str = "slurm-py", graceful: bool = True):
    """Start the kernel as Jupyter does; shut it down as Jupyter does (a shutdown_request; with not ``graceful``, a kill)."""
    return running(name, startup_timeout=120, graceful=graceful)


def where(kc) -> tuple[str, int, int]:
    """The kernel's job id, pid and parent pid (the proxy, when proxied)."""
    reply, outputs = execute(kc, WHERE)
    assert reply["content"]["status"] == "ok", reply
    job, pid, parent = stdout_of(outputs).split()
    return job, int(pid), int(parent)


class QueueWatch:
    """Every job id seen in the queue while it runs, polled in a thread."""

    def __init__(self, cluster):
        self.cluster, self.seen, self._stop = cluster, set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.seen.update(job["id"] for job in self.cluster.jobs())
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def test_install_puts_the_proxy_inside_srun_with_interrupts_by_message(srun_spec):
    before = load(srun_spec)
    out = installed()
    assert "the proxy runs inside srun: %restart restarts only the kernel and keeps the job" in out
    spec = load(srun_spec)
    assert spec["argv"][:4] == SRUN_SPEC["argv"][:4]
    assert spec["argv"][4:] == proxy_argv(PYTHON)
    assert spec["interrupt_mode"] == "message", "srun takes SIGINT as a status request"
    assert spec["metadata"][METADATA_KEY]["inner_argv"] == SRUN_SPEC["argv"][4:]
    done = run_cli("remove", "slurm-py")
    assert done.returncode == 0, done.stderr
    assert load(srun_spec) == before


def test_restart_keeps_the_job_and_interrupt_and_shutdown_leave_no_job(srun_spec, slurm, record_property):
    installed()
    with running_in_job(slurm) as (km, kc):
        job, pid, _ = where(kc)
        assert [j["id"] for j in slurm.jobs()] == [job]
        with QueueWatch(slurm) as watch:
            start = time.monotonic()
            reply, outputs = execute(kc, "%restart", timeout=120)
            restart_seconds = time.monotonic() - start
            assert reply["content"]["status"] == "ok", reply
            new_job, new_pid, _ = where(kc)
        assert (new_job, watch.seen) == (job, {job}), "one job, the same, throughout the restart"
        assert new_pid != pid
        record_property("restart_in_job_s", round(restart_seconds, 2))

        msg_id = kc.execute(SLEEPING)
        wait_for_stream(kc, msg_id, "sleeping")
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert where(kc)[:2] == (job, new_pid), "the interrupt stopped the cell, not the kernel"
    # The queue empties (within 15 s, or the test fails); how soon is for the record (--junitxml).
    record_property("queue_empty_after_shutdown_s", round(slurm.wait_for_empty_queue(15), 1))


def test_arguments_a_client_appends_reach_the_kernel_inside_srun_also_after_a_restart(srun_spec, slurm, tmp_path):
    """jupyter_client appends them after srun's command, so to the proxy's own: the proxy passes them on."""
    installed()
    extra = [f"--IPKernelApp.exec_lines=marker = {str(tmp_path)!r}"]
    with running("slurm-py", startup_timeout=120, graceful=True, extra_arguments=extra) as (_, kc):
        job, _, _ = where(kc)
        assert stdout_of(execute(kc, "print(marker)")[1]) == f"{tmp_path}\n"
        reply, outputs = execute(kc, "%restart\nimport os\nprint(marker, os.environ['SLURM_JOB_ID'])", timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert stdout_of(outputs).endswith(f"{tmp_path} {job}\n")


def test_a_hung_kernel_is_rescued_inside_the_job_and_shutdown_leaves_no_job(srun_spec, slurm):
    installed()
    spec = load(srun_spec)
    spec["argv"].append("--RescuePolicy.interrupt_grace=1")
    write_spec(srun_spec.parent, "slurm-py", spec)
    with running_in_job(slurm) as (km, kc):
        job, pid, _ = where(kc)
        msg_id = kc.execute("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n" + SLEEPING)
        wait_for_stream(kc, msg_id, "sleeping")
        km.interrupt_kernel()
        wait_for_stream(kc, msg_id, "does not respond to interrupts", timeout=60)
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=60)
        assert reply["content"]["status"] == "error"
        new_job, new_pid, _ = where(kc)
        assert (new_job, [j["id"] for j in slurm.jobs()]) == (job, [job])
        assert new_pid != pid
    slurm.wait_for_empty_queue(15)


def test_a_proxy_killed_with_sigkill_leaves_no_job(srun_spec, slurm):
    installed()
    with running_in_job(slurm) as (km, kc):
        job, _, proxy = where(kc)
        assert [j["id"] for j in slurm.jobs()] == [job]
        os.kill(proxy, signal.SIGKILL)
        slurm.wait_for_empty_queue(15)
        km.provisioner.process.wait(15)


def test_outside_srun_restart_starts_a_new_job_and_the_old_one_ends(srun_spec, slurm):
    out = installed("--outside")
    assert "the proxy runs outside srun: %restart starts srun again (a new job)" in out
    spec = load(srun_spec)
    assert spec["argv"][0] == PYTHON and "interrupt_mode" not in spec
    assert spec["metadata"][METADATA_KEY]["inner_interrupt_mode"] == "message"
    with running_in_job(slurm) as (km, kc):
        job, pid, _ = where(kc)
        reply, _ = execute(kc, "%restart", timeout=120)
        assert reply["content"]["status"] == "ok", reply
        new_job, new_pid, _ = where(kc)
        assert new_job != job and new_pid != pid
        slurm.wait_for_job_gone(job)
        msg_id = kc.execute(SLEEPING)
        wait_for_stream(kc, msg_id, "sleeping")
        km.interrupt_kernel()
        assert reply_to(kc, msg_id, timeout=30)["content"]["ename"] == "KeyboardInterrupt"
    slurm.wait_for_empty_queue(15)


def test_a_kill_of_a_kernel_the_provisioner_started_in_a_job_ends_the_job(srun_spec, slurm, record_property):
    """Jupyter's forced shutdown (``now=True``) stops srun by its leader, so the job ends instead of running on."""
    installed()
    spec = load(srun_spec)
    write_spec(srun_spec.parent, "slurm-py", with_provisioner(spec))
    with running_in_job(slurm, graceful=False) as (km, kc):
        job, _, _ = where(kc)
        assert [j["id"] for j in slurm.jobs()] == [job]
    record_property("queue_empty_after_forced_shutdown_s", round(slurm.wait_for_empty_queue(15), 1))
