"""The multi-node cluster the tests run kernels across: a login node, node1 and node2, each its own machine.

The test process is a login node too: srun and salloc from it place jobs on
either node, and what a job serves on its node's address is reachable from
it, as a Jupyter server on a login node reaches a kernel on a compute node.
Only the cluster's /24 goes by the test process's leg on the cluster's
bridge; stopping the cluster leaves nothing of it on the machine.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient, write_connection_file

from .helpers import PYTHON, execute, start_client, stdout_of, wait_until
from .slurm import MultiNodeCluster, Unavailable, multinode_cluster_up, temporary_folder

pytestmark = pytest.mark.slurm

#: A server in a job: listen on the node's address, say on which port in a marker file, answer with the hostname.
SERVE_HOSTNAME = """
import os, socket, sys
server = socket.create_server((sys.argv[1], 0))
with open(sys.argv[2] + ".part", "w") as marker:
    marker.write(str(server.getsockname()[1]))
os.rename(sys.argv[2] + ".part", sys.argv[2])
connection, _ = server.accept()
connection.sendall(socket.gethostname().encode())
connection.close()
"""

KERNEL_PORTS = range(20001, 20006)


def run(cluster, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr
    return done


def reachable(address: str) -> bool:
    """Whether a machine answers at ``address``: a closed port refuses at once; a pulled cable answers nothing."""
    try:
        socket.create_connection((address, 9), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    raise AssertionError(f"something accepted a connection to {address}:9, which no node listens on")


def test_srun_from_the_test_process_runs_on_the_node_asked_for(multinode):
    assert run(multinode, "srun", "-N1", "-w", "node2", "hostname").stdout == "node2\n"
    assert run(multinode, "srun", "-N1", "-w", "node1", "hostname").stdout == "node1\n"


def test_a_job_has_its_nodes_address(multinode):
    for node in multinode.nodes:
        assert run(multinode, "srun", "-N1", "-w", node, "hostname", "-I").stdout.split() == [multinode.address(node)]


def test_a_server_in_a_job_on_node2_is_reachable_from_the_test_process(multinode, tmp_path):
    marker = tmp_path / "port"
    address = multinode.address("node2")
    job = subprocess.Popen(
        ["srun", "-N1", "-w", "node2", PYTHON, "-c", SERVE_HOSTNAME, address, str(marker)],
        env=multinode.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: marker.exists() or job.poll() is not None, "the server in the job to listen", 60)
        assert marker.exists(), job.communicate()[1]
        with socket.create_connection((address, int(marker.read_text())), timeout=10) as connection:
            assert connection.recv(100) == b"node2"
            assert connection.getsockname()[0] == multinode.login_address
        assert job.wait(30) == 0, job.communicate()[1]
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


@pytest.mark.timeout(180)
def test_a_kernel_in_a_job_on_node2_answers_a_client_in_the_test_process(multinode, tmp_path):
    # Ports below the ephemeral range, where nothing on the otherwise empty node listens.
    ports = dict(zip(("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"), KERNEL_PORTS, strict=True))
    connection_file, _ = write_connection_file(str(tmp_path / "kernel.json"), ip=multinode.address("node2"), **ports)
    job = subprocess.Popen(
        [
            "srun",
            "-N1",
            "-w",
            "node2",
            "--job-name=nbkernel",
            PYTHON,
            "-m",
            "ipykernel_launcher",
            "-f",
            connection_file,
        ],
        env=multinode.env,
    )
    client = BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    try:
        start_client(client, timeout=120)
        reply, outputs = execute(client, "import socket\nprint(socket.gethostname())")
        assert reply["content"]["status"] == "ok", reply
        assert stdout_of(outputs) == "node2\n"
        client.shutdown()
        assert job.wait(60) == 0, "the kernel's shutdown ended its job"
    finally:
        client.stop_channels()
        if job.poll() is None:
            job.kill()
            job.wait()


def test_one_allocation_on_both_nodes_takes_steps_on_either(multinode):
    granted = run(multinode, "salloc", "-N2", "--no-shell", "--job-name=notebooks").stderr
    job = re.search(r"Granted job allocation (\d+)", granted).group(1)
    try:
        for node in ("node1", "node2", "node1"):
            step = run(multinode, "srun", f"--jobid={job}", "--overlap", "-N1", "-w", node, "hostname")
            assert step.stdout == f"{node}\n"
        assert [j["id"] for j in multinode.jobs()] == [job]
    finally:
        run(multinode, "scancel", job)
        multinode.wait_for_job_gone(job)


def test_the_root_namespace_reaches_the_cluster_only_by_its_leg(multinode):
    leg = f"dev {multinode.root_link} src {multinode.login_address}"
    for role in ("login", *multinode.nodes):
        assert leg in multinode.route(role), multinode.route(role)
    routes = subprocess.run(["ip", "route", "show", "root", f"{multinode.net}.0/24"], capture_output=True, text=True)
    assert routes.stdout.split()[:3] == [f"{multinode.net}.0/24", "dev", multinode.root_link]
    assert len(routes.stdout.splitlines()) == 1, routes.stdout


def test_on_runs_a_command_as_the_node(multinode):
    done = multinode.on("node1", ["sh", "-c", "hostname; getent hosts node2 rootns"])
    assert done.stdout.split() == [
        "node1",
        *(multinode.address("node2"), "node2"),
        *(multinode.login_address, "rootns"),
    ], done.stderr


def test_a_pulled_link_cuts_the_node_off_until_plugged_back(multinode):
    address = multinode.address("node2")
    assert reachable(address)
    multinode.link("node2", up=False)
    try:
        assert not reachable(address)
        assert reachable(multinode.address("node1"))
    finally:
        multinode.link("node2", up=True)
    wait_until(lambda: reachable(address), "node2 to answer again", 10)
    assert run(multinode, "srun", "-N1", "-w", "node2", "hostname").stdout == "node2\n"


def _namespaces_of(cluster: MultiNodeCluster) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(cluster.prefix)]


@pytest.mark.timeout(180)
def test_stopping_leaves_nothing_even_with_a_job_and_a_stray_process_running(multinode):
    with multinode_cluster_up(f"{os.getpid()}t") as cluster:
        assert cluster.prefix != multinode.prefix and cluster.net != multinode.net
        assert len(_namespaces_of(cluster)) == 4
        job = subprocess.Popen(
            ["srun", "-N1", "-w", "node1", "sleep", "600"], env=cluster.env, stderr=subprocess.DEVNULL
        )
        stray = subprocess.Popen([*cluster.enter("node2"), "sleep", "600"])
        wait_until(lambda: [j["state"] for j in cluster.jobs()] == ["RUNNING"], "the job to run", 30)
        daemons = [p.pid for p in cluster.spawned.values()]
    assert cluster.leftovers() == []
    assert _namespaces_of(cluster) == []
    assert job.wait(30) != 0, "the job was cancelled"
    assert stray.wait(30) != 0, "the stray process was ended"
    assert not [pid for pid in daemons if Path(f"/proc/{pid}").exists()]
    assert run(multinode, "srun", "-N1", "-w", "node1", "hostname").stdout == "node1\n", "the session's is untouched"


class _BrokenController(MultiNodeCluster):
    def _settings(self, munge_socket: Path) -> dict[str, object]:
        return super()._settings(munge_socket) | {"NoSuchSetting": 1}


def test_a_start_that_fails_half_way_leaves_nothing():
    cluster = _BrokenController(temporary_folder("mnslurm-broken-"), f"{os.getpid()}b")
    try:
        with pytest.raises(Unavailable, match="slurmctld exited"):
            cluster.start()
        assert _namespaces_of(cluster), "the network and munged were up when slurmctld failed"
    finally:
        cluster.stop()
    assert cluster.leftovers() == []
