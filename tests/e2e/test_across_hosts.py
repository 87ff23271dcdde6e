"""A real Jupyter server on the cluster's login node starts the kernel on node2 by ssh, or by an MPI launcher.

The server runs in the login node's network, hostname and hosts file
(tests/slurm.py), as a user starts it there: ``jupyter_server`` with the
package's server extension, so the package's provisioner is the default, and
a user's spec put through ``install``, with no provisioner named in it and
nothing configured.  ``ssh node2`` reaches the real sshd on node2
(tests/sshd.py); Open MPI's ``mpirun --host node2`` and MPICH's
``mpiexec.mpich -hosts node2`` start their daemon there over the same ssh.
Clients speak to the server only: REST and the kernel's websocket.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from inplace_restarter import reach

from ..helpers import PYTHON, stdout_of
from ..spec_helpers import run_cli, write_spec
from ..sshd import nothing_left_on, on_node
from ..test_across_nodes_mpirun import MPI, needs_launcher
from .conftest import DISPLAY_NAME, KERNEL_NAME, RESTART_MESSAGE, jupyter_server
from .test_across_nodes import kernel_socket, replied

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.timeout(300)]

#: What a cell says: host, the kernel's pid and its parent's (the proxy's).
WHERE = "import os, socket\nprint(socket.gethostname(), os.getpid(), os.getppid())"
#: A user's spec, before install, for each launcher: what runs ipykernel on node2.
LAUNCHERS = {"ssh": ["ssh", "node2"], **{name: [*words, "node2"] for name, words in MPI.items()}}


@pytest.fixture(params=list(LAUNCHERS))
def launcher_spec(request, restart_button_enabled, jupyter_dirs, ssh_node2, monkeypatch):
    """The spec for ``request.param`` installed; Open MPI allowed to run as root, as the tests run."""
    if request.param in MPI:
        needs_launcher(request.param)
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    spec = {
        "argv": [*LAUNCHERS[request.param], PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
    }
    write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", KERNEL_NAME, spec)
    done = run_cli("install", KERNEL_NAME)
    assert done.returncode == 0, done.stderr
    return ssh_node2


def on_login(cluster, tmp_path):
    return jupyter_server("jupyter_server", tmp_path, on=(cluster.enter("login"), cluster.address("login")))


def reached(jupyter_dirs, kernel_id: str) -> dict:
    """Where the server's connection file sends its clients: ip and ports."""
    info = json.loads((Path(jupyter_dirs["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kernel_id}.json").read_text())
    return {k: info[k] for k in ("ip", *reach.PORTS)}


def where(ws) -> tuple[str, int, int]:
    reply, outputs = ws.execute(WHERE)
    assert reply["content"]["status"] == "ok", reply["content"]
    host, pid, proxy = stdout_of(outputs).split()
    return host, int(pid), int(proxy)


def test_rest_and_websocket_drive_a_kernel_on_node2_through_both_restarts_an_interrupt_and_delete(
    launcher_spec, jupyter_dirs, tmp_path
):
    cluster = launcher_spec
    with on_login(cluster, tmp_path) as server:
        kernel = server.api("/api/kernels", "POST", {"name": KERNEL_NAME})
        before = reached(jupyter_dirs, kernel["id"])
        assert before["ip"] == cluster.address("node2")
        with kernel_socket(server, kernel["id"]) as ws:
            host, pid, proxy = where(ws)
            assert host == "node2"

            reply, outputs = ws.execute("%restart")
            assert reply["content"]["status"] == "ok", reply["content"]
            assert RESTART_MESSAGE.search(stdout_of(outputs)), stdout_of(outputs)
            host_cell, pid_cell, proxy_cell = where(ws)

            assert server.api(f"/api/kernels/{kernel['id']}/restart", "POST", {})["id"] == kernel["id"]
            host_rest, pid_rest, proxy_rest = where(ws)

            sleeping = ws.run("import time\nprint('sleeping', flush=True)\ntime.sleep(600)")
            ws.until(sleeping, lambda seen: "sleeping" in stdout_of(seen))
            server.api(f"/api/kernels/{kernel['id']}/interrupt", "POST", {})
            interrupted = replied(ws.until(sleeping, replied, timeout=30))
            assert interrupted["content"]["ename"] == "KeyboardInterrupt", interrupted["content"]
            assert where(ws) == (host, pid_rest, proxy), "the same kernel answers after the interrupt"

        assert (host_cell, proxy_cell) == (host_rest, proxy_rest) == (host, proxy)
        assert len({pid, pid_cell, pid_rest}) == 3, "a new kernel behind the proxy at each restart"
        assert reached(jupyter_dirs, kernel["id"]) == before, "the same address and ports throughout"

        server.api(f"/api/kernels/{kernel['id']}", "DELETE")
        print(f"nothing left on node2 {nothing_left_on(cluster, 'node2', 15):.1f} s after DELETE")
        assert server.api("/api/kernels") == []


def test_a_server_killed_with_sigkill_leaves_nothing_on_node2(launcher_spec, tmp_path):
    cluster = launcher_spec
    with on_login(cluster, tmp_path) as server:
        kernel = server.api("/api/kernels", "POST", {"name": KERNEL_NAME})
        assert f"Kernel {kernel['id']}: the proxy listens on node2 ({cluster.address('node2')})" in server.log()
        assert on_node(cluster, "node2")
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(15)
        print(f"nothing left on node2 {nothing_left_on(cluster, 'node2', 15):.1f} s after the server's SIGKILL")
