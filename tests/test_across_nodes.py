"""The kernel on a compute node, the Jupyter server on a login node: where the kernel listens, and what is left.

On the multi-node test cluster (tests/slurm.py) the test process is a login
node and plays the Jupyter server: jupyter_client's KernelManager with the
package's provisioner.  The spec is a user's ``srun -w node2`` spec with
``install``'s proxy inside srun.  The proxy on node2 binds on node2's address
toward the login node, with ports of its own and CURVE, and tells the
provisioner so in one signed line on srun's stdout; restarts in place keep
job, node, address and ports; a launch that never says so ends with one line
and no job; a server killed with SIGKILL leaves no job.  On the single-node
cluster the same spec runs on the server's own host, as it always did.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from inplace_restarter import reach

from .e2e.conftest import jupyter_server, restart_button_enabled  # noqa: F401  (a fixture)
from .helpers import PYTHON, execute, kernel_manager, reply_to, running, stdout_of, wait_for_stream
from .slurm import installed, job_spec, reached, where
from .spec_helpers import run_cli, with_provisioner, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

SLEEPING = "import time\nprint('sleeping', flush=True)\ntime.sleep(600)"
PORTS = reach.PORTS


def failed_start(name: str) -> tuple[str, float]:
    """Start kernel ``name`` as Jupyter does, which must fail: the error's text and the seconds it took."""
    km = kernel_manager(name)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        km.start_kernel()
    return str(failure.value), time.monotonic() - start


def test_a_cell_runs_on_node2_and_the_server_reaches_it_there_encrypted(on_node2):
    seconds = []
    for _ in range(3):
        start = time.monotonic()
        with running("job", startup_timeout=120) as (km, kc):
            host, job, _, _ = where(kc)
            seconds.append(time.monotonic() - start)
            assert host == "node2"
            assert [j["id"] for j in on_node2.jobs()] == [job]
            info = km.get_connection_info()
            assert info["ip"] == on_node2.address("node2")
            assert info["curve_publickey"] and info["curve_secretkey"], "the provisioner gave the kernel CURVE keys"
            on_file = json.loads(Path(km.connection_file).read_text())
            assert {k: on_file[k] for k in ("ip", *PORTS)} == reached(km), "the connection file names the node"
        on_node2.wait_for_job_gone(job)
    print("launch on node2 from login to the first cell's reply:", ", ".join(f"{s:.2f} s" for s in seconds))


def test_restarts_in_place_keep_job_node_address_and_ports(on_node2):
    with running("job", startup_timeout=120) as (km, kc):
        host, job, pid, proxy = where(kc)
        before = reached(km)
        reply, _ = execute(kc, "%restart", timeout=120)
        assert reply["content"]["status"] == "ok", reply
        after_cell = where(kc)
        km.restart_kernel()
        kc.wait_for_ready(timeout=120)
        after_button = where(kc)
        assert (after_cell[:2], after_button[:2]) == ((host, job), (host, job))
        assert len({pid, after_cell[2], after_button[2]}) == 3, "a new kernel each time"
        assert after_cell[3] == after_button[3] == proxy, "the same proxy"
        assert reached(km) == before
        assert [j["id"] for j in on_node2.jobs()] == [job]


def test_after_the_proxy_dies_an_ordinary_restart_works_again_with_a_new_client(on_node2):
    with running("job", startup_timeout=120) as (km, kc):
        _, job, _, proxy = where(kc)
        os.kill(proxy, signal.SIGKILL)
        on_node2.wait_for_job_gone(job)
        km.restart_kernel(now=True)
        fresh = km.client()
        fresh.start_channels()
        try:
            fresh.wait_for_ready(timeout=120)
            host, new_job, _, _ = where(fresh)
            assert host == "node2" and new_job != job
            assert reached(km)["ip"] == on_node2.address("node2")
            assert [j["id"] for j in on_node2.jobs()] == [new_job]
        finally:
            fresh.stop_channels()


def test_an_interrupt_stops_a_cell_on_the_node(on_node2):
    with running("job", startup_timeout=120) as (km, kc):
        msg_id = kc.execute(SLEEPING)
        wait_for_stream(kc, msg_id, "sleeping", timeout=60)
        km.interrupt_kernel()
        assert reply_to(kc, msg_id, timeout=30)["content"]["ename"] == "KeyboardInterrupt"


def test_a_listener_without_the_keys_hears_nothing_of_a_cell_that_prints(on_node2):
    with running("job", startup_timeout=120) as (km, kc):
        info = reached(km)
        eavesdropper = zmq.Context.instance().socket(zmq.SUB)
        eavesdropper.linger = 0
        try:
            eavesdropper.subscribe(b"")
            eavesdropper.connect(f"tcp://{info['ip']}:{info['iopub_port']}")
            reply, outputs = execute(kc, "for i in range(20): print('secret', i, flush=True)", timeout=60)
            assert "secret 19" in stdout_of(outputs), "the client with the keys got the output"
            assert not eavesdropper.poll(1000), "a socket without the CURVE keys got a message"
        finally:
            eavesdropper.close()


def test_a_launch_that_never_says_where_it_listens_ends_with_one_line_and_no_job(kernels_dir, multinode):
    silent = [PYTHON, "-c", "import time; print('not the line', flush=True); time.sleep(600)"]
    installed(kernels_dir, "silent", job_spec(), silent, report_timeout=3, launcher_grace=5)
    error, seconds = failed_start("silent")
    assert (
        "did not start: the proxy did not say where it listens within 3 s while srun ran "
        "(InPlaceProvisioner.report_timeout); the proxy's stdout must reach srun's" in error
    ), error
    assert "\n" not in error
    assert seconds < 10
    multinode.wait_for_empty_queue(15)


def test_a_launcher_that_exits_first_is_an_error_with_its_last_words(kernels_dir, multinode):
    failing = [PYTHON, "-c", "import sys; sys.exit('the node says no')"]
    installed(kernels_dir, "failing", job_spec(), failing, launch_timeout=60)
    error, seconds = failed_start("failing")
    assert (
        "did not start: srun exited before the proxy said where it listens; last line from srun: the node says no"
        in error
    )
    assert seconds < 30
    multinode.wait_for_empty_queue(15)


def test_a_node_that_cannot_see_the_connection_file_says_so_in_the_error(kernels_dir, multinode, tmp_path):
    spec = installed(kernels_dir, "blind", job_spec())
    missing = str(tmp_path / "not-shared" / "kernel.json")
    spec["argv"] = [missing if arg == "{connection_file}" else arg for arg in spec["argv"]]
    write_spec(kernels_dir, "blind", with_provisioner(spec, launch_timeout=60))
    error, _ = failed_start("blind")
    assert (
        "srun exited before the proxy said where it listens; last line from srun: [ProxyKernelApp] CRITICAL | " in error
    )
    assert f"node2 cannot see the connection file {missing}: give Jupyter a runtime folder shared" in error
    assert "JUPYTER_RUNTIME_DIR" in error
    multinode.wait_for_empty_queue(15)


def test_a_pending_job_is_logged_with_its_id_and_given_up_with_no_job_left(kernels_dir, multinode, caplog):
    """A job waiting in the queue is no failure: the short wait for the report stands until the job starts."""
    installed(kernels_dir, "pending", job_spec(), launch_timeout=5, report_timeout=1, launcher_grace=5)
    held = subprocess.run(
        ["salloc", "-N1", "-w", "node2", "--exclusive", "--no-shell", "--job-name=holder"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    holder = next(j["id"] for j in multinode.jobs() if j["name"] == "holder")
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
        multinode.wait_for_job_gone(job)
        assert [j["id"] for j in multinode.jobs()] == [holder], held.stderr
    finally:
        subprocess.run(["scancel", holder], timeout=30, check=False)
        multinode.wait_for_job_gone(holder)


#: A Jupyter server in miniature: start the kernel, say so, run each line read as a cell, until killed.
SERVER = """
import json, sys
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
km = KernelManager(kernel_name=sys.argv[1], connection_file=f"{jupyter_runtime_dir()}/kernel-server.json")
km.start_kernel()
kc = km.blocking_client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
print(km.get_connection_info()["ip"], flush=True)
for line in sys.stdin:
    reply = kc.execute_interactive(json.loads(line), timeout=120, output_hook=lambda msg: None)
    print("reply:", reply["content"]["status"], flush=True)
"""


def test_a_server_killed_with_sigkill_leaves_no_job(on_node2):
    server = subprocess.Popen([PYTHON, "-c", SERVER, "job"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == on_node2.address("node2"), "the server started its kernel"
        assert len(on_node2.jobs()) == 1
        os.kill(server.pid, signal.SIGKILL)
        server.wait(15)
        print(f"queue empty {on_node2.wait_for_empty_queue(15):.1f} s after the server's SIGKILL")
    finally:
        server.kill()
        server.wait(15)


def test_notebooks_in_one_allocation_run_as_its_steps_on_the_nodes_named(kernels_dir, multinode):
    """``salloc -N2 --no-shell``, then a spec per node with ``srun --jobid=ID --overlap -w NODE``."""
    subprocess.run(["salloc", "-N2", "--no-shell", "--job-name=notebooks"], capture_output=True, timeout=60, check=True)
    allocation = next(j["id"] for j in multinode.jobs() if j["name"] == "notebooks")
    offered = ",".join([*reach.server_ips(), multinode.login_address])
    try:
        for node in ("node1", "node2"):
            spec = job_spec(f"--jobid={allocation}", "--overlap")
            spec["argv"][spec["argv"].index("node2")] = node
            installed(kernels_dir, node, spec, server_ip=offered)
        with running("node1", startup_timeout=120) as (km1, kc1), running("node2", startup_timeout=120) as (km2, kc2):
            assert [where(kc)[:2] for kc in (kc1, kc2)] == [("node1", allocation), ("node2", allocation)]
            assert [reached(km)["ip"] for km in (km1, km2)] == [multinode.address(n) for n in ("node1", "node2")]
        assert [j["id"] for j in multinode.jobs()] == [allocation], "shutting the kernels down kept the allocation"
    finally:
        subprocess.run(["scancel", allocation], timeout=30, check=False)
        multinode.wait_for_job_gone(allocation)


def test_in_a_job_on_the_servers_own_host_the_kernel_listens_where_the_connection_file_says(kernels_dir, slurm):
    """A route to the server that is local means the same host: the connection file's loopback and ports, encrypted."""
    spec = job_spec()
    spec["argv"].remove("-w")
    spec["argv"].remove("node2")
    installed(kernels_dir, "here", spec)
    with running("here", startup_timeout=120) as (km, kc):
        host, job, _, _ = where(kc)
        assert (host, [j["id"] for j in slurm.jobs()]) == (socket.gethostname(), [job])
        info = km.get_connection_info()
        assert info["ip"] == "127.0.0.1" and info["curve_secretkey"]
    slurm.wait_for_empty_queue(15)


def test_what_the_kernel_writes_to_its_own_stdout_reaches_the_servers_and_a_flood_of_it_blocks_nothing(on_node2):
    """srun's stdout is read for the report and passed on: the kernel's output must not fill the pipe and stall."""
    # Into the proxy's stdout (srun's pipe) itself: ipykernel takes its own fd 1 over for the notebook.
    flood = (
        "import os\nwith open(f'/proc/{os.getppid()}/fd/1', 'wb', buffering=0) as out:\n"
        "    for i in range(400):\n        out.write(b'x' * 8191 + b'\\n')\n    out.write(b'end of the flood\\n')"
    )
    server = subprocess.Popen([PYTHON, "-c", SERVER, "job"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == on_node2.address("node2")
        server.stdin.write(json.dumps(flood) + "\n")
        server.stdin.flush()
        lines = []
        while not ("end of the flood\n" in lines and "reply: ok\n" in lines):
            lines.append(server.stdout.readline())
            assert lines[-1], "the server's stdout ended"
        assert lines.count("x" * 8191 + "\n") == 400, "every line, unchanged"
    finally:
        server.stdin.close()
        server.kill()
        server.wait(15)


def test_an_ordinary_restart_may_land_on_another_node_and_clients_follow(kernels_dir, multinode):
    spec = job_spec()
    spec["argv"].remove("-w")
    spec["argv"].remove("node2")
    offered = ",".join([*reach.server_ips(), multinode.login_address])
    installed(kernels_dir, "anywhere", spec, server_ip=offered)
    with running("anywhere", startup_timeout=120) as (km, kc):
        first, job, _, proxy = where(kc)
        assert reached(km)["ip"] == multinode.address(first)
        os.kill(proxy, signal.SIGKILL)
        multinode.wait_for_job_gone(job)
        subprocess.run(
            ["salloc", "-w", first, "--exclusive", "--no-shell", "--job-name=holder"], timeout=60, check=True
        )
        holder = next(j["id"] for j in multinode.jobs() if j["name"] == "holder")
        try:
            km.restart_kernel(now=True)
            fresh = km.client()
            fresh.start_channels()
            try:
                fresh.wait_for_ready(timeout=120)
                second, _, _, _ = where(fresh)
            finally:
                fresh.stop_channels()
            assert second != first
            assert reached(km)["ip"] == multinode.address(second)
        finally:
            subprocess.run(["scancel", holder], timeout=30, check=False)
    multinode.wait_for_empty_queue(15)


@pytest.mark.usefixtures("restart_button_enabled")
def test_a_jupyter_server_starts_the_kernel_on_node2_and_killed_with_sigkill_leaves_no_job(
    kernels_dir, multinode, tmp_path
):
    """The real thing: ``jupyter server`` with the extension (the provisioner its default), the spec as install left it."""
    done = run_cli("install", write_spec(kernels_dir, "plain", job_spec()).name)
    assert done.returncode == 0, done.stderr
    with jupyter_server("jupyter_server", tmp_path) as server:
        kernel = server.api("/api/kernels", "POST", {"name": "plain"})
        assert [j["state"] for j in multinode.jobs()] == ["RUNNING"]
        log = server.log()
        assert f"Kernel {kernel['id']}: the proxy listens on node2 ({multinode.address('node2')}), ports " in log
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(15)
        print(f"queue empty {multinode.wait_for_empty_queue(15):.1f} s after the Jupyter server's SIGKILL")
