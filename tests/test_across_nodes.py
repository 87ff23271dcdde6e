"""The kernel in a Slurm job, started from the server's host by the provisioner: where it listens, and what is left.

The spec is a user's srun spec with ``install``'s proxy inside srun; the
test process is the Jupyter server (jupyter_client's KernelManager with the
package's provisioner).  The proxy tells the provisioner where it listens in
one signed line on srun's stdout; a launch that never says so ends with one
line and no job; a server killed with SIGKILL leaves no job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from .helpers import PYTHON, execute, running, stdout_of
from .spec_helpers import load, run_cli, write_spec
from .test_provisioner import with_provisioner

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

IPYKERNEL = [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
WHERE = "import os, socket\nprint(socket.gethostname(), os.environ['SLURM_JOB_ID'], os.getpid())"


def job_spec(*options: str) -> dict:
    return {
        "argv": ["srun", "-N1", "-n1", "--job-name=nbkernel", *options, *IPYKERNEL],
        "display_name": "Python in a Slurm job",
        "language": "python",
    }


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


def where(kc) -> tuple[str, str, int]:
    """The kernel's host, job id and pid."""
    reply, outputs = execute(kc, WHERE, timeout=60)
    assert reply["content"]["status"] == "ok", reply
    host, job, pid = stdout_of(outputs).split()
    return host, job, int(pid)


def failed_start(name: str) -> tuple[str, float]:
    """Start kernel ``name`` as Jupyter does, which must fail: the error's text and the seconds it took."""
    km = KernelManager(kernel_name=name)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        km.start_kernel()
    return str(failure.value), time.monotonic() - start


def test_a_kernel_in_a_job_says_where_it_listens_and_the_server_reaches_it_encrypted(kernels_dir, slurm):
    installed(kernels_dir, "job", job_spec())
    with running("job", startup_timeout=120) as (km, kc):
        host, job, _ = where(kc)
        assert [j["id"] for j in slurm.jobs()] == [job]
        info = km.get_connection_info()
        assert info["curve_publickey"] and info["curve_secretkey"], "the provisioner gave the kernel CURVE keys"
        on_file = json.loads(Path(km.connection_file).read_text())
        assert {k: on_file[k] for k in ("ip", "shell_port", "iopub_port")} == {
            k: info[k] for k in ("ip", "shell_port", "iopub_port")
        }
    slurm.wait_for_empty_queue(15)


def test_a_launch_that_never_says_where_it_listens_ends_with_one_line_and_no_job(kernels_dir, slurm):
    silent = [PYTHON, "-c", "import time; print('not the line', flush=True); time.sleep(600)"]
    installed(kernels_dir, "silent", job_spec(), silent, launch_timeout=5, launcher_grace=5)
    error, seconds = failed_start("silent")
    assert (
        "did not start: the proxy did not say where it listens within 5 s (InPlaceProvisioner.launch_timeout)" in error
    )
    assert "\n" not in error
    assert seconds < 5 + 5 + 5
    slurm.wait_for_empty_queue(15)


def test_a_launcher_that_exits_first_is_an_error_with_its_last_words(kernels_dir, slurm):
    failing = [PYTHON, "-c", "import sys; sys.exit('the node says no')"]
    installed(kernels_dir, "failing", job_spec(), failing, launch_timeout=60)
    error, seconds = failed_start("failing")
    assert "did not start: srun exited before the proxy said where it listens; srun: the node says no" in error
    assert seconds < 30
    slurm.wait_for_empty_queue(15)


def test_a_pending_job_is_logged_with_its_id_and_given_up_with_no_job_left(kernels_dir, slurm, caplog):
    installed(kernels_dir, "pending", job_spec(), launch_timeout=5, launcher_grace=5)
    held = subprocess.run(
        ["salloc", "-N1", "--exclusive", "--no-shell", "--job-name=holder"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    holder = next(j["id"] for j in slurm.jobs() if j["name"] == "holder")
    try:
        with caplog.at_level(logging.INFO):
            error, _ = failed_start("pending")
        pending = [r.getMessage() for r in caplog.records if "is pending" in r.getMessage()]
        assert len(pending) == 1, caplog.text
        job = pending[0].split("Slurm job ")[1].split()[0]
        assert job != holder
        assert "(queued and waiting for resources); waiting up to " in pending[0]
        assert pending[0].endswith("s for it to start (InPlaceProvisioner.launch_timeout)")
        assert f"within 5 s (InPlaceProvisioner.launch_timeout), Slurm job {job}" in error
        slurm.wait_for_job_gone(job)
        assert [j["id"] for j in slurm.jobs()] == [holder], held.stderr
    finally:
        subprocess.run(["scancel", holder], timeout=30, check=False)


#: A Jupyter server in miniature: start the kernel, say its job, wait to be killed.
SERVER = """
import json, os, sys
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
kc = km.blocking_client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
print(os.environ.get("SLURM_CONF"), flush=True)
sys.stdin.readline()
"""


def test_a_server_killed_with_sigkill_leaves_no_job(kernels_dir, slurm):
    installed(kernels_dir, "job", job_spec())
    server = subprocess.Popen([PYTHON, "-c", SERVER, "job"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline(), "the server started its kernel"
        assert len(slurm.jobs()) == 1
        os.kill(server.pid, signal.SIGKILL)
        server.wait(15)
        print(f"queue empty {slurm.wait_for_empty_queue(15):.1f} s after the server's SIGKILL")
    finally:
        server.kill()
        server.wait(15)
