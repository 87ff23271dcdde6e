"""A kernel started on node2 by an MPI launcher: launches that cannot work fail within seconds.

Open MPI's ``mpirun --host node2`` and MPICH's ``mpiexec.mpich -hosts node2``
(its Hydra process manager), each where it is installed.

What works (cells, both restarts, interrupt, DELETE, a server killed) is
tests/e2e/test_across_hosts.py's, through a real Jupyter server.  Here
jupyter_client plays the server, on the cluster's login node (mpirun looks
node names up, and only there are they in the hosts file), and each failure
must be one line within 10 s, with nothing left on any node.  Both start their
daemon on node2 over ssh (tests/sshd.py).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from .helpers import PYTHON, needs
from .slurm import installed
from .spec_helpers import with_provisioner, write_spec
from .sshd import nothing_left_on
from .test_across_nodes_ssh import FAILED_START

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


#: each MPI launcher's words up to the host it starts the kernel on, and the Debian package that has it
MPI = {
    "mpirun": ["mpirun", "-np", "1", "--host"],
    "mpiexec.mpich": ["mpiexec.mpich", "-n", "1", "-hosts"],
}
PACKAGE = {"mpirun": "openmpi-bin", "mpiexec.mpich": "mpich"}


def needs_launcher(name: str) -> None:
    """Where the launcher is missing, say which package has it (a skip, a failure under CI=true)."""
    needs(shutil.which(name), f"{name} is needed (Debian: {PACKAGE[name]})")


def mpirun_spec(launcher: str, host: str = "node2") -> dict:
    """A user's spec for an ipykernel on ``host`` by ``launcher``, before ``install``."""
    return {
        "argv": [*MPI[launcher], host, PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python on {host} by {launcher}",
        "language": "python",
    }


@pytest.fixture(params=list(MPI))
def mpi(request, ssh_node2, monkeypatch):
    """The launcher's name; ssh to node2, and Open MPI allowed to run as root, as the tests run."""
    needs_launcher(request.param)
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return request.param


def failed_on_login(cluster, name: str) -> tuple[str, float]:
    """Start ``name`` on the login node as Jupyter does, which must fail: one line, seconds; nothing left on a node."""
    done = cluster.on("login", [PYTHON, "-c", FAILED_START, name], env=os.environ, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr
    error, seconds = json.loads(done.stdout.splitlines()[-1])
    assert "\n" not in error
    for node in cluster.nodes:
        nothing_left_on(cluster, node, 10)
    return error, seconds


def test_a_host_that_cannot_be_resolved_fails_with_ssh_s_words_not_the_launchers_explanation(
    kernels_dir, mpi, ssh_node2
):
    """Open MPI exits at once; MPICH's Hydra 4.0 waits on after ssh failed, so the report's timeout ends it."""
    installed(kernels_dir, "nowhere", mpirun_spec(mpi, "node9"), report_timeout=3)
    error, seconds = failed_on_login(ssh_node2, "nowhere")
    assert error.endswith(
        f"; last line from {mpi}: ssh: Could not resolve hostname node9: Temporary failure in name resolution"
    ), error
    assert seconds < 10


def test_a_host_that_cannot_be_reached_fails_with_ssh_s_words(kernels_dir, mpi, ssh_node2):
    """node1 is up, but nothing listens for ssh there: refused at once, as a node with sshd down is."""
    installed(kernels_dir, "unreachable", mpirun_spec(mpi, "node1"), report_timeout=3)
    error, seconds = failed_on_login(ssh_node2, "unreachable")
    assert error.endswith(f"; last line from {mpi}: ssh: connect to host node1 port 22: Connection refused"), error
    assert seconds < 10


def test_a_node_that_cannot_see_the_connection_file_says_so_at_once(kernels_dir, mpi, ssh_node2, tmp_path):
    spec = installed(kernels_dir, "blind", mpirun_spec(mpi))
    missing = str(tmp_path / "not-shared" / "kernel.json")
    spec["argv"] = [missing if arg == "{connection_file}" else arg for arg in spec["argv"]]
    write_spec(kernels_dir, "blind", with_provisioner(spec))
    error, seconds = failed_on_login(ssh_node2, "blind")
    assert (
        f"{mpi} exited before the proxy said where it listens; last line from {mpi}: [ProxyKernelApp] CRITICAL" in error
    ), error
    assert f"node2 cannot see the connection file {missing}: give Jupyter a runtime folder shared" in error
    assert seconds < 10


def test_a_proxy_whose_stdout_never_reaches_the_launcher_fails_after_the_report_timeout(kernels_dir, mpi, ssh_node2):
    """A wrapper that sends the kernel's stdout elsewhere: the launcher lives on, the report never comes."""
    spec = installed(kernels_dir, "swallowed", mpirun_spec(mpi))
    start = spec["argv"].index(PYTHON)
    spec["argv"][start:] = ["sh", "-c", " ".join(spec["argv"][start:]) + " >/dev/null"]
    write_spec(kernels_dir, "swallowed", with_provisioner(spec, report_timeout=3))
    error, seconds = failed_on_login(ssh_node2, "swallowed")
    assert (
        f"did not start: the proxy did not say where it listens within 3 s while {mpi} ran "
        f"(InPlaceProvisioner.report_timeout); the proxy's stdout must reach {mpi}'s" in error
    ), error
    assert 3 <= seconds < 10
