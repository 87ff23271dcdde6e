"""A kernel started on node2 by ``ssh node2 ...``, the server on the login side: nothing configured.

The spec is a user's ``ssh node2 /path/to/python -m ipykernel_launcher -f
{connection_file}`` put through ``install``, launched by jupyter_client with
the package's provisioner in the test process (a login node of the
multi-node cluster, tests/slurm.py), against a real sshd on node2
(tests/sshd.py).  ssh forwards no environment: the proxy learns that it
should say where it listens from its own command line.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .helpers import PYTHON, execute, reply_to, running, stdout_of, wait_for_stream
from .slurm import installed, offered, reached
from .sshd import nothing_left_on, on_node
from .test_across_nodes import SERVER, SLEEPING

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

#: What a cell on a node says: host, the kernel's pid and its parent's (the proxy's).
WHERE = "import os, socket\nprint(socket.gethostname(), os.getpid(), os.getppid())"


def ssh_spec(host: str = "node2") -> dict:
    """A user's spec for an ipykernel on ``host`` over ssh, before ``install``."""
    return {
        "argv": ["ssh", host, PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python on {host} over ssh",
        "language": "python",
    }


def where(kc) -> tuple[str, int, int]:
    reply, outputs = execute(kc, WHERE, timeout=60)
    assert reply["content"]["status"] == "ok", reply
    host, pid, proxy = stdout_of(outputs).split()
    return host, int(pid), int(proxy)


@pytest.fixture
def over_ssh(kernels_dir, ssh_node2):
    installed(kernels_dir, "ssh", ssh_spec(), server_ip=offered(ssh_node2))
    return ssh_node2


def test_a_cell_runs_on_node2_restarts_keep_the_proxy_and_its_address_and_an_interrupt_stops_a_cell(over_ssh):
    with running("ssh", startup_timeout=60) as (km, kc):
        host, pid, proxy = where(kc)
        assert host == "node2"
        before = reached(km)
        assert before["ip"] == over_ssh.address("node2")
        assert km.get_connection_info()["curve_secretkey"], "encrypted across the network"

        reply, _ = execute(kc, "%restart", timeout=60)
        assert reply["content"]["status"] == "ok", reply
        after_cell = where(kc)
        km.restart_kernel()
        kc.wait_for_ready(timeout=60)
        after_button = where(kc)
        assert (after_cell[0], after_button[0]) == ("node2", "node2")
        assert len({pid, after_cell[1], after_button[1]}) == 3, "a new kernel each time"
        assert after_cell[2] == after_button[2] == proxy, "the same proxy"
        assert reached(km) == before

        msg_id = kc.execute(SLEEPING)
        wait_for_stream(kc, msg_id, "sleeping", timeout=60)
        km.interrupt_kernel()
        assert reply_to(kc, msg_id, timeout=30)["content"]["ename"] == "KeyboardInterrupt"
        assert on_node(over_ssh, "node2")
    print(f"nothing left on node2 {nothing_left_on(over_ssh, 'node2', 15):.1f} s after the shutdown")


def test_a_server_killed_with_sigkill_leaves_nothing_on_node2(over_ssh):
    server = subprocess.Popen([PYTHON, "-c", SERVER, "ssh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == over_ssh.address("node2"), "the server started its kernel"
        assert on_node(over_ssh, "node2")
        os.kill(server.pid, signal.SIGKILL)
        server.wait(15)
        print(f"nothing left on node2 {nothing_left_on(over_ssh, 'node2', 15):.1f} s after the server's SIGKILL")
    finally:
        server.kill()
        server.wait(15)
