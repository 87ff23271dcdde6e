"""The inner kernel's lifecycle: private connection, and nothing outlives the proxy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
from pathlib import Path

import psutil
import pytest
import zmq

from .helpers import ended, execute, inner_pid, needs, running, stdout_of
from .spec_helpers import proxied, write_spec


def test_the_inner_kernel_gets_a_private_loopback_connection_with_the_clients_key(proxy):
    km, kc = proxy
    _, outputs = execute(kc, "from ipykernel.connect import get_connection_file; print(get_connection_file())")
    path = stdout_of(outputs).strip()
    info = json.loads(Path(path).read_text())
    assert info["ip"] == "127.0.0.1" and info["transport"] == "tcp"
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [info[name] for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")]
    assert len(set(ports)) == 5 and all(port < ephemeral_low for port in ports), "clear of connect()'s source ports"
    assert info["key"] == km.session.key.decode(), "signs its output for the client"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o777 == 0o700


#: ipykernel's warning when it listens on TCP without CurveZMQ keys
PLAIN_TEXT = "Kernel is running over TCP without encryption"


@pytest.mark.parametrize("takes_keys", [True, False])
def test_behind_an_encrypted_link_the_inner_kernel_is_encrypted_if_its_spec_says_it_can(
    kernels_dir, tmp_path, takes_keys
):
    """As jupyter_client's "auto": a kernel whose spec declares CurveZMQ gets keys; another warns, truly."""
    metadata = {"supported_encryption": ["curve"]} if takes_keys else {}
    write_spec(kernels_dir, "curve", proxied(metadata=metadata))
    public, secret = zmq.curve_keypair()
    keys = {"curve_publickey": public, "curve_secretkey": secret}
    with open(tmp_path / "kernel.log", "wb") as log, running("curve", manager=keys, stderr=log) as (km, kc):
        code = "from ipykernel.connect import get_connection_file; import json; print(get_connection_file())"
        _, outputs = execute(kc, code)
        info = json.loads(Path(stdout_of(outputs).strip()).read_text())
        execute(kc, "%restart")
        assert execute(kc, "print('relayed')")[1], "the output of the next kernel is relayed too"
    assert bool(info.get("curve_secretkey")) is takes_keys
    assert (PLAIN_TEXT in (tmp_path / "kernel.log").read_text()) is not takes_keys


def test_shutdown_request_shuts_the_inner_kernel_down_and_removes_its_files(specs):
    with running("proxied") as (km, kc):
        pid = inner_pid(km)
        _, outputs = execute(kc, "from ipykernel.connect import get_connection_file; print(get_connection_file())")
        folder = os.path.dirname(stdout_of(outputs).strip())
        km.shutdown_kernel()
        ended([pid])
    assert not os.path.exists(folder)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_proxy_killed_by_a_signal_leaves_no_inner_kernel(specs, signum):
    with running("proxied") as (km, kc):
        pid = inner_pid(km)
        os.kill(km.provisioner.pid, signum)
        ended([km.provisioner.pid, pid])


def test_a_restarted_kernel_is_also_taken_down_with_the_proxy(specs):
    with running("proxied") as (km, kc):
        execute(kc, "%restart")
        pid = inner_pid(km)
        os.kill(km.provisioner.pid, signal.SIGKILL)
        ended([pid])


def test_transport_encryption_from_the_client_is_honoured(proxy_with):
    fields = {"metadata": {"supported_encryption": "curve"}}
    with proxy_with(fields=fields, manager={"transport_encryption": "required"}) as (km, kc):
        assert km.curve_publickey is not None
        reply, outputs = execute(kc, "print('secret')")
        assert stdout_of(outputs) == "secret\n"
        reply, outputs = execute(kc, "%restart\nprint('still secret')")
        assert stdout_of(outputs).endswith("still secret\n")


def test_a_proxy_cleans_up_the_folders_of_proxies_killed_before_it(specs, jupyter_dirs):
    with running("proxied") as (km, kc):
        proxy_pid = km.provisioner.pid
        os.kill(proxy_pid, signal.SIGKILL)
        ended([proxy_pid])
    runtime = jupyter_dirs["JUPYTER_RUNTIME_DIR"]
    left = list(runtime.glob(f"inplace-restarter-{socket.gethostname()}-{proxy_pid}-*"))
    assert left, "SIGKILL leaves the killed proxy's folder behind"
    with running("proxied"):
        assert not any(folder.exists() for folder in left)


def test_a_kernel_shutting_down_for_a_restart_yields_the_cpu_to_its_successor(proxy, tmp_path):
    km, kc = proxy
    seen = tmp_path / "niceness"
    execute(kc, f"import atexit, os\natexit.register(lambda: open({str(seen)!r}, 'w').write(str(os.nice(0))))")
    reply, _ = execute(kc, "%restart")
    assert reply["content"]["status"] == "ok"
    assert seen.read_text() == "19", "the old kernel ran its exit at the lowest priority"
    _, outputs = execute(kc, "import os; print(os.nice(0))")
    assert stdout_of(outputs) == "0\n", "the new kernel runs at normal priority"


def unused_pid() -> int:
    """A pid no process here has: what a proxy on another node looks like from this one."""
    return next(pid for pid in range(30000, 1000, -1) if not psutil.pid_exists(pid))


@pytest.mark.timeout(180)
def test_a_proxy_on_another_host_sharing_the_runtime_folder_keeps_its_folder(specs, jupyter_dirs, kernels_dir):
    """Node B's proxy runs in a UTS and pid namespace of its own (hostname nodeb, a pid dead here).

    A proxy starting on this host must leave B's folder alone: B's next
    %restart writes its new kernel's connection file there.
    """
    needs(shutil.which("unshare") and os.geteuid() == 0, "unshare and root are needed for a second host's namespaces")
    last = unused_pid() - 1
    node_b = f'hostname nodeb && echo {last} > /proc/sys/kernel/ns_last_pid && "$@"'
    write_spec(
        kernels_dir,
        "on-nodeb",
        {
            **proxied(),
            "argv": [
                "unshare",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                node_b,
                "sh",
                *proxied()["argv"],
            ],
        },
    )
    (kernels_dir / "on-nodeb" / "kernel.json").write_text(
        (kernels_dir / "on-nodeb" / "kernel.json").read_text().replace("{resource_dir}", str(kernels_dir / "proxied"))
    )
    runtime = jupyter_dirs["JUPYTER_RUNTIME_DIR"]
    here = runtime / f"inplace-restarter-{socket.gethostname()}-{unused_pid()}-dead"
    here.mkdir()
    with running("on-nodeb") as (km_b, kc_b):
        (theirs,) = runtime.glob("inplace-restarter-nodeb-*")
        assert not psutil.pid_exists(int(theirs.name.split("-")[3])), "B's pid means nothing here"
        with running("proxied") as (km, kc):
            assert theirs.exists() and not here.exists(), "only this host's dead proxies' folders are swept"
            reply, _ = execute(kc_b, "%restart")
            assert reply["content"]["status"] == "ok", reply
