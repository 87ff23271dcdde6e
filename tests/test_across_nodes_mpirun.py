"""A kernel started on node2 by Open MPI's ``mpirun --host node2``: launches that cannot work fail within seconds.

What works (cells, both restarts, interrupt, DELETE, a server killed) is
tests/e2e/test_across_hosts.py's, through a real Jupyter server.  Here
jupyter_client plays the server, on the cluster's login node (mpirun looks
node names up, and only there are they in the hosts file), and each failure
must be one line within 10 s, with nothing left on node2.  mpirun starts its
daemon on node2 over ssh (tests/sshd.py).
"""

from __future__ import annotations

import json
import os

import pytest

from .helpers import PYTHON
from .slurm import installed
from .spec_helpers import with_provisioner, write_spec
from .sshd import nothing_left_on
from .test_across_nodes_ssh import FAILED_START

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def mpirun_spec(host: str = "node2") -> dict:
    """A user's spec for an ipykernel on ``host`` by mpirun, before ``install``."""
    return {
        "argv": ["mpirun", "-np", "1", "--host", host, PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python on {host} by mpirun",
        "language": "python",
    }


@pytest.fixture
def mpirun_node2(ssh_node2, monkeypatch):
    """ssh to node2, and Open MPI allowed to run as root, as the tests run."""
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return ssh_node2


def failed_on_login(cluster, name: str) -> tuple[str, float]:
    """Start ``name`` on the login node as Jupyter does, which must fail: one line, seconds; nothing left on node2."""
    done = cluster.on("login", [PYTHON, "-c", FAILED_START, name], env=os.environ, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr
    error, seconds = json.loads(done.stdout.splitlines()[-1])
    assert "\n" not in error
    nothing_left_on(cluster, "node2", 10)
    return error, seconds


def test_a_host_that_cannot_be_resolved_fails_at_once_with_the_reason_not_mpiruns_explanation(
    kernels_dir, mpirun_node2
):
    installed(kernels_dir, "nowhere", mpirun_spec("node9"))
    error, seconds = failed_on_login(mpirun_node2, "nowhere")
    assert error.endswith(
        "did not start: mpirun exited before the proxy said where it listens; "
        "last line from mpirun: ssh: Could not resolve hostname node9: Temporary failure in name resolution"
    ), error
    assert seconds < 10


def test_a_node_that_cannot_see_the_connection_file_says_so_at_once(kernels_dir, mpirun_node2, tmp_path):
    spec = installed(kernels_dir, "blind", mpirun_spec())
    missing = str(tmp_path / "not-shared" / "kernel.json")
    spec["argv"] = [missing if arg == "{connection_file}" else arg for arg in spec["argv"]]
    write_spec(kernels_dir, "blind", with_provisioner(spec))
    error, seconds = failed_on_login(mpirun_node2, "blind")
    assert "mpirun exited before the proxy said where it listens; last line from mpirun: [ProxyKernelApp] CRITICAL" in (
        error
    )
    assert f"node2 cannot see the connection file {missing}: give Jupyter a runtime folder shared" in error
    assert seconds < 10


def test_a_proxy_whose_stdout_never_reaches_mpirun_fails_after_the_report_timeout(kernels_dir, mpirun_node2):
    """A wrapper that sends the kernel's stdout elsewhere: mpirun lives on, the report never comes."""
    spec = installed(kernels_dir, "swallowed", mpirun_spec())
    start = spec["argv"].index(PYTHON)
    spec["argv"][start:] = ["sh", "-c", " ".join(spec["argv"][start:]) + " >/dev/null"]
    write_spec(kernels_dir, "swallowed", with_provisioner(spec, report_timeout=3))
    error, seconds = failed_on_login(mpirun_node2, "swallowed")
    assert (
        "did not start: the proxy did not say where it listens within 3 s while mpirun ran "
        "(InPlaceProvisioner.report_timeout); the proxy's stdout must reach mpirun's" in error
    ), error
    assert 3 <= seconds < 10
