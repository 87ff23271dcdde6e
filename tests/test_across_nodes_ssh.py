"""A kernel started on node2 by ``ssh node2 ...``, the server on the login side: nothing configured.

The spec is a user's ``ssh node2 /path/to/python -m ipykernel_launcher -f
{connection_file}`` put through ``install``, launched by jupyter_client with
the package's provisioner in the test process (a login node of the
multi-node cluster, tests/slurm.py), against a real sshd on node2
(tests/sshd.py).  ssh forwards no environment: the proxy learns that it
should say where it listens from its own command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from .helpers import PYTHON, descendants, execute, reply_to, running, stdout_of, wait_for_stream
from .slurm import installed, offered, reached
from .spec_helpers import with_provisioner, write_spec
from .sshd import nothing_left_on, on_node
from .test_across_nodes import SERVER, SLEEPING, failed_start

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


# -- a launch that cannot work: one line within seconds, nothing left on either host ----------------


def failed_over_ssh(cluster, name: str) -> tuple[str, float]:
    """Start ``name`` as Jupyter does, which must fail: the error and the seconds it took; nothing is left."""
    error, seconds = failed_start(name)
    assert "\n" not in error
    assert not [p for p in descendants(os.getpid()) if p.name() == "ssh"], "the launcher is gone"
    nothing_left_on(cluster, "node2", 10)
    return error, seconds


def test_a_host_that_cannot_be_resolved_fails_at_once_with_ssh_s_words(kernels_dir, ssh_node2):
    """The server on the cluster's login node, whose hosts file has no node9 (and where no DNS server is reached)."""
    installed(kernels_dir, "nowhere", ssh_spec("node9"))
    done = ssh_node2.on("login", [PYTHON, "-c", FAILED_START, "nowhere"], env=os.environ, timeout=60)
    assert done.returncode == 0, done.stderr
    error, seconds = json.loads(done.stdout.splitlines()[-1])
    assert error.endswith(
        "did not start: ssh exited before the proxy said where it listens; "
        "last line from ssh: ssh: Could not resolve hostname node9: Temporary failure in name resolution"
    ), error
    assert "\n" not in error and seconds < 10


def test_a_host_that_cannot_be_reached_fails_within_seconds_with_ssh_s_words(over_ssh):
    """node2's cable pulled, and this host's memory of its hardware address forgotten: nobody answers for it."""
    over_ssh.link("node2", up=False)
    address = over_ssh.address("node2")
    subprocess.run(["ip", "neigh", "flush", "to", address, "dev", over_ssh.root_link], check=True, timeout=30)
    try:
        error, seconds = failed_over_ssh(over_ssh, "ssh")
    finally:
        over_ssh.link("node2", up=True)
    assert f"last line from ssh: ssh: connect to host {over_ssh.address('node2')} port 22: No route to host" in error
    assert seconds < 10


def test_a_node_that_cannot_see_the_connection_file_says_so_at_once(kernels_dir, ssh_node2, tmp_path):
    spec = installed(kernels_dir, "blind", ssh_spec())
    missing = str(tmp_path / "not-shared" / "kernel.json")
    spec["argv"] = [missing if arg == "{connection_file}" else arg for arg in spec["argv"]]
    write_spec(kernels_dir, "blind", with_provisioner(spec, server_ip=offered(ssh_node2)))
    error, seconds = failed_over_ssh(ssh_node2, "blind")
    assert (
        "ssh exited before the proxy said where it listens; last line from ssh: [ProxyKernelApp] CRITICAL | " in error
    )
    assert f"node2 cannot see the connection file {missing}: give Jupyter a runtime folder shared" in error
    assert seconds < 10


def test_a_proxy_whose_stdout_never_reaches_ssh_fails_after_the_report_timeout(kernels_dir, ssh_node2):
    """A wrapper that sends the kernel's stdout elsewhere: ssh lives on, the report never comes."""
    spec = installed(kernels_dir, "swallowed", ssh_spec())
    spec["argv"].append(">/dev/null")
    write_spec(kernels_dir, "swallowed", with_provisioner(spec, server_ip=offered(ssh_node2), report_timeout=3))
    error, seconds = failed_over_ssh(ssh_node2, "swallowed")
    assert (
        "did not start: the proxy did not say where it listens within 3 s while ssh ran "
        "(InPlaceProvisioner.report_timeout); the proxy's stdout must reach ssh's" in error
    ), error
    assert 3 <= seconds < 10


#: Start the kernel named in argv[1] as Jupyter does, which fails: print the error and the seconds it took, last
#: (after what the launcher wrote, which the server passes on to its own stdout).
FAILED_START = """
import json, sys, time
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
start = time.monotonic()
try:
    KernelManager(kernel_name=sys.argv[1], connection_file=f"{jupyter_runtime_dir()}/kernel-failed.json").start_kernel()
except RuntimeError as e:
    print(json.dumps([str(e), time.monotonic() - start]))
"""
