"""The kernel process: the sockets a client connects to, and what it imports."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import psutil
import pytest
import zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session

from inplace_restarter import reach

from .helpers import (
    PYTHON,
    descendants,
    execute,
    iopub_until_idle,
    kill,
    processes_gone,
    running,
    send,
    start_client,
    stdout_of,
    wait_for_file,
)
from .spec_helpers import IPYKERNEL_ARGV
from .test_reach import NODE, NOWHERE, PEER, SECOND, in_a_network_namespace

HEAVY = ("IPython.core.interactiveshell", "IPython.terminal", "prompt_toolkit", "jedi")


def test_the_kernel_process_leaves_ipythons_shell_unimported():
    """ipykernel's kernel base needs one IPython exception, not IPython's interactive shell."""
    code = (
        "import sys, json\n"
        "from inplace_restarter.__main__ import defer_ipython_init\n"
        "defer_ipython_init()\n"
        "import inplace_restarter.app\n"
        f"loaded = [m for m in sys.modules if m.startswith({HEAVY!r})]\n"
        "import IPython\n"
        "print(json.dumps([loaded, callable(IPython.get_ipython)]))\n"
    )
    loaded, usable = json.loads(subprocess.check_output([PYTHON, "-c", code], timeout=60))
    assert loaded == []
    assert usable, "IPython's package works once something uses it"


def test_without_a_connection_file_the_kernel_writes_one_and_serves(jupyter_dirs, tmp_path):
    runtime = jupyter_dirs["JUPYTER_RUNTIME_DIR"]
    proc = subprocess.Popen([PYTHON, "-m", "inplace_restarter", "--", *IPYKERNEL_ARGV], stderr=subprocess.DEVNULL)
    connection_file = runtime / f"kernel-{proc.pid}.json"
    kc = BlockingKernelClient(connection_file=str(connection_file))
    try:
        wait_for_file(connection_file)
        kc.load_connection_file()
        start_client(kc)
        _, outputs = execute(kc, "print('served')")
        assert stdout_of(outputs) == "served\n"
        kc.shutdown()
        proc.wait(timeout=30)
        assert not connection_file.exists(), "a connection file the kernel wrote is removed at exit"
    finally:
        kc.stop_channels()
        children = descendants(proc.pid) if proc.poll() is None else []
        proc.kill()
        kill(children)
        proc.wait(timeout=10)


def test_each_new_iopub_subscription_is_welcomed(proxy):
    """ipykernel 7 greets each new subscription, which proves to the client that it is subscribed."""
    km, _ = proxy
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.linger = 0
    try:
        socket.connect(f"tcp://{km.ip}:{km.iopub_port}")
        socket.subscribe(b"mine")
        assert socket.poll(10_000), "no iopub_welcome"
        session = Session(key=km.session.key)
        _, frames = session.feed_identities(socket.recv_multipart())
        msg = session.deserialize(frames)
        assert msg["header"]["msg_type"] == "iopub_welcome"
        assert msg["content"] == {"subscription": "mine"}
    finally:
        socket.close()


def test_control_requests_report_busy_and_idle_on_iopub(proxy):
    """The control thread's status messages reach iopub through the main loop, in order."""
    _, kc = proxy
    msg_id = send(kc, "control", "kernel_info_request")
    reply = kc.control_channel.get_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    statuses = [m for m in iopub_until_idle(kc, msg_id) if m["msg_type"] == "status"]
    assert [m["content"]["execution_state"] for m in statuses] == ["busy", "idle"]


LAUNCHER = """
import json, psutil, sys
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
km = KernelManager(kernel_name="proxied", connection_file=f"{jupyter_runtime_dir()}/kernel-launcher.json")
km.start_kernel()
kc = km.blocking_client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
proxy = km.provisioner.pid
print(json.dumps([proxy, [p.pid for p in psutil.Process(proxy).children()]]), flush=True)
sys.stdin.readline()
"""


def test_the_kernel_exits_with_the_process_that_started_it_leaving_nothing(specs, jupyter_dirs):
    """A Jupyter server that dies without shutting its kernels down leaves no proxy, inner kernel or folder."""
    launcher = subprocess.Popen([PYTHON, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proxy_pid, inner_pids = json.loads(launcher.stdout.readline())
    procs = [psutil.Process(pid) for pid in (proxy_pid, *inner_pids)]
    try:
        folders = list(
            jupyter_dirs["JUPYTER_RUNTIME_DIR"].glob(f"inplace-restarter-{socket.gethostname()}-{proxy_pid}-*")
        )
        assert inner_pids and folders
        launcher.communicate("exit\n", timeout=30)
        processes_gone(procs, "the process that started them")
        assert not any(folder.exists() for folder in folders)
    finally:
        launcher.kill()
        kill(procs)


def test_the_kernel_serves_over_ipc_when_the_client_asks(specs, tmp_path):
    with running("proxied", manager={"transport": "ipc", "ip": str(tmp_path / "kernel")}) as (_, kc):
        _, outputs = execute(kc, "print('over ipc')")
        assert stdout_of(outputs) == "over ipc\n"
        assert len(list(tmp_path.glob("kernel-*"))) == 5, "the proxy's sockets and heartbeat are files there"


def test_an_unreadable_connection_file_is_a_one_line_error_and_leaves_no_kernel(jupyter_dirs, tmp_path):
    connection_file = tmp_path / "kernel.json"
    connection_file.write_text("{not json")
    proc = subprocess.run(
        [PYTHON, "-m", "inplace_restarter", "-f", str(connection_file), "--", *IPYKERNEL_ARGV],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "CRITICAL" in line]
    assert len(errors) == 1 and f"Cannot read the connection file {connection_file}" in errors[0]
    runtime = jupyter_dirs["JUPYTER_RUNTIME_DIR"]
    assert not list(runtime.glob("inplace-restarter-*")), "the inner kernel launched early is gone with its folder"
    inner = [p for p in psutil.process_iter(["cmdline"]) if str(runtime) in " ".join(p.info["cmdline"] or [])]
    processes_gone(inner, "the proxy that failed", timeout=10)


def test_asked_for_a_report_the_kernel_says_where_it_listens_in_one_signed_line(jupyter_dirs, tmp_path):
    """On the server's own host (a route to it is local) the proxy binds what the connection file says."""
    connection_file, info = write_connection_file(str(tmp_path / "kernel.json"), ip="127.0.0.1", key=b"k3y")
    env = {**os.environ, "JPY_PARENT_PID": str(os.getpid())}
    proc = subprocess.Popen(
        [PYTHON, "-m", "inplace_restarter", "--report-to=127.0.0.1", "-f", connection_file, "--", *IPYKERNEL_ARGV],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        report = reach.parse_report(proc.stdout.readline(), b"k3y", "hmac-sha256")
        assert report is not None
        assert {name: report[name] for name in reach.FIELDS} == {name: info[name] for name in reach.FIELDS}
        assert (report["hostname"], report["pid"]) == (socket.gethostname(), proc.pid)
    finally:
        children = descendants(proc.pid)
        proc.kill()
        kill(children)
        proc.wait(timeout=10)


def test_asked_for_a_report_without_the_connection_file_it_says_the_node_cannot_see_it(jupyter_dirs, tmp_path):
    """A compute node whose files differ from the server's: one line that says what to share."""
    missing = tmp_path / "not-on-this-node" / "kernel-1.json"
    proc = subprocess.run(
        [PYTHON, "-m", "inplace_restarter", "--report-to=127.0.0.1", "-f", str(missing), "--", *IPYKERNEL_ARGV],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "CRITICAL" in line]
    assert len(errors) == 1, proc.stderr
    assert f"cannot see the connection file {missing}" in errors[0] and "JUPYTER_RUNTIME_DIR" in errors[0]
    assert proc.stdout == "" and not missing.parent.exists()


#: In a network namespace whose server is at argv[2]: start the proxy and serve a cell, or say how it ended.
ON_A_NODE = """
import json, os, subprocess, sys, zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from inplace_restarter import reach
folder, server, curve, options, *kernel = sys.argv[1:]
keys = zmq.curve_keypair() if curve == "curve" else (None, None)
connection_file, info = write_connection_file(
    os.path.join(folder, "kernel.json"), ip="127.0.0.1", key=b"k3y", curve_publickey=keys[0], curve_secretkey=keys[1]
)
env = {**os.environ, "JPY_PARENT_PID": str(os.getpid())}
proxy = subprocess.Popen(
    [sys.executable, "-m", "inplace_restarter", f"--report-to={server}", "-f", connection_file, *options.split(), "--", *kernel],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
)
report = reach.parse_report(proxy.stdout.readline(), b"k3y", "hmac-sha256")
if report is None:
    proxy.wait(60)
    print(json.dumps({"exit": proxy.returncode, "stderr": proxy.stderr.read().decode()}))
    sys.exit()
kc = BlockingKernelClient()
kc.load_connection_info({**info, **{k: report[k] for k in reach.FIELDS}})
kc.start_channels(hb=False)  # no manager: the kernel's reply, not a heartbeat, says it is ready
kc.wait_for_ready(timeout=60)
out = []
kc.execute_interactive("print('served from the node')", timeout=60, output_hook=lambda m: out.append(m["content"].get("text", "")))
kc.shutdown()
proxy.wait(60)
print(json.dumps({"report": report, "file ports": [info[k] for k in reach.PORTS], "out": "".join(out)}))
"""


def test_on_another_host_the_kernel_binds_its_address_toward_the_server_on_ports_of_its_own(jupyter_dirs, tmp_path):
    result = in_a_network_namespace(ON_A_NODE, str(tmp_path), PEER, "curve", "", *IPYKERNEL_ARGV)
    report = result["report"]
    assert report["ip"] == NODE
    assert not set(result["file ports"]) & {report[name] for name in reach.PORTS}, "the node picks its own ports"
    assert result["out"] == "served from the node\n"


def test_on_another_host_the_kernel_refuses_to_listen_unencrypted(jupyter_dirs, tmp_path):
    result = in_a_network_namespace(ON_A_NODE, str(tmp_path), PEER, "plain", "", *IPYKERNEL_ARGV)
    assert result["exit"] != 0
    errors = [line for line in result["stderr"].splitlines() if "CRITICAL" in line]
    assert len(errors) == 1 and f"Refusing to bind on {NODE} without CurveZMQ keys" in errors[0]
    assert "ProxyKernelApp.allow_unencrypted_across_nodes" in errors[0]


def test_on_another_host_the_kernel_listens_unencrypted_only_when_told_in_so_many_words(jupyter_dirs, tmp_path):
    told = "--ProxyKernelApp.allow_unencrypted_across_nodes=True"
    result = in_a_network_namespace(ON_A_NODE, str(tmp_path), PEER, "plain", told, *IPYKERNEL_ARGV)
    assert (result["report"]["ip"], result["out"]) == (NODE, "served from the node\n")


def test_an_address_given_to_bind_on_wins_over_the_route(jupyter_dirs, tmp_path):
    option = f"--ProxyKernelApp.bind_ip={SECOND}"
    result = in_a_network_namespace(ON_A_NODE, str(tmp_path), PEER, "curve", option, *IPYKERNEL_ARGV)
    assert (result["report"]["ip"], result["out"]) == (SECOND, "served from the node\n")


def test_with_no_route_to_the_server_the_kernel_names_the_options_that_fix_it(jupyter_dirs, tmp_path):
    result = in_a_network_namespace(ON_A_NODE, str(tmp_path), NOWHERE, "curve", "", *IPYKERNEL_ARGV)
    assert result["exit"] != 0
    errors = [line for line in result["stderr"].splitlines() if "CRITICAL" in line]
    assert (
        len(errors) == 1
        and f"no route from {socket.gethostname()} to the Jupyter server's host ({NOWHERE})" in errors[0]
    )
    assert "ProxyKernelApp.bind_ip" in errors[0]


def test_an_address_to_bind_on_that_is_not_the_nodes_is_a_one_line_error(jupyter_dirs, tmp_path):
    option = f"--ProxyKernelApp.bind_ip={PEER}"
    result = in_a_network_namespace(ON_A_NODE, str(tmp_path), PEER, "curve", option, *IPYKERNEL_ARGV)
    assert result["exit"] == 2
    errors = [line for line in result["stderr"].splitlines() if "CRITICAL" in line]
    assert len(errors) == 1 and f"Cannot listen on {PEER} on " in errors[0] and "(ProxyKernelApp.bind_ip)" in errors[0]
    assert "Traceback" not in result["stderr"]


#: What a cell prints of the options the kernel was started with.
SHOW_OPTIONS = "print(get_ipython().profile_dir.location, started_by, marker)"


@pytest.mark.parametrize("kernel", ["direct", "proxied"])
def test_arguments_a_client_appends_reach_the_kernel_and_a_restart_keeps_them(specs, tmp_path, kernel):
    """``extra_arguments``, as jupyter_client appends them after the spec's argv: a profile and an IPKernelApp trait."""
    profile = tmp_path / "profile_mine"
    (profile / "startup").mkdir(parents=True)
    (profile / "startup" / "00-mark.py").write_text("started_by = 'the profile'\n")
    extra = ["--profile-dir", str(profile), "--IPKernelApp.exec_lines=marker = 41 + 1"]
    with running(kernel, extra_arguments=extra) as (_, kc):
        reply, outputs = execute(kc, SHOW_OPTIONS)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert stdout_of(outputs) == f"{profile} the profile 42\n"
        if kernel == "proxied":
            reply, outputs = execute(kc, f"%restart\n{SHOW_OPTIONS}")
            assert reply["content"]["status"] == "ok", reply["content"]
            assert stdout_of(outputs).endswith(f"{profile} the profile 42\n")
