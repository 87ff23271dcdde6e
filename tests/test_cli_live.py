"""Installed specs run for real: bash_kernel, remote_ikernel both ways round, and end to end.

Each test installs with the CLI, starts the kernel the way Jupyter does
(jupyter_client), runs ``%restart`` and checks that a fresh kernel answers on
the same connection, then removes and compares the kernel.json.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from .helpers import descendants, execute, kernel_pid, needs, running, stdout_of
from .spec_helpers import IPYKERNEL_ARGV, PYTHON_SPEC, load, run_cli, write_spec

pytestmark = pytest.mark.timeout(240)

IPYKERNEL_CMD = " ".join(IPYKERNEL_ARGV)


def cli_ok(*args: str) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def processes_running(km, module: str) -> list[int]:
    """Pids of ``python -m module`` among the kernel Jupyter started and its live descendants.

    One that exits meanwhile (the launcher of a kernel just restarted) is not running.
    """
    pids = []
    for p in [psutil.Process(km.provisioner.pid), *descendants(km.provisioner.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.cmdline()[1:3] == ["-m", module]:
                pids.append(p.pid)
    return sorted(pids)


def python_restarts_in_place(km, kc) -> None:
    """%restart gives a fresh Python kernel behind the same client and the same top process."""
    top = km.provisioner.pid
    assert execute(kc, "kept = 1")[0]["content"]["status"] == "ok"
    before = kernel_pid(kc)
    reply, _ = execute(kc, "%restart", timeout=90)
    assert reply["content"]["status"] == "ok", reply
    reply, outputs = execute(kc, "import os\nprint(os.getpid(), 'kept' in globals())")
    assert reply["content"]["status"] == "ok", reply
    pid, kept = stdout_of(outputs).split()
    assert int(pid) != before and kept == "False"
    assert km.provisioner.pid == top and km.is_alive()


def add_remote_ikernel(*args: str) -> str:
    """A spec written by remote_ikernel's own ``manage --add``; returns its name."""
    done = subprocess.run(
        [sys.executable, "-m", "remote_ikernel", "manage", "--add", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return re.search(r"Added kernel \['(.+?)'\]", done.stdout + done.stderr).group(1)


def test_end_to_end_install_start_restart_remove(jupyter_dirs):
    folder = write_spec(
        jupyter_dirs["JUPYTER_PATH"] / "kernels", "e2e", {k: v for k, v in PYTHON_SPEC.items() if k != "extra_field"}
    )
    before = load(folder)
    cli_ok("install", "e2e")
    with running("e2e") as (km, kc):
        python_restarts_in_place(km, kc)
    assert cli_ok("remove", "e2e")
    assert load(folder) == before


@pytest.mark.extras
def test_a_bash_kernel_spec_restarts_in_place(jupyter_dirs):
    needs(importlib.util.find_spec("bash_kernel"), "bash_kernel is needed")
    subprocess.run([sys.executable, "-m", "bash_kernel.install", "--user"], check=True, capture_output=True, timeout=60)
    folder = jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels" / "bash"
    before = load(folder)
    cli_ok("install", "bash")
    with running("bash") as (km, kc):
        top = km.provisioner.pid
        reply, outputs = execute(kc, "kept=yes; echo $$")
        assert reply["content"]["status"] == "ok", reply
        shell = stdout_of(outputs).strip()
        reply, _ = execute(kc, "%restart", timeout=90)
        assert reply["content"]["status"] == "ok", reply
        reply, outputs = execute(kc, 'echo "${kept:-gone}" $$')
        assert reply["content"]["status"] == "ok", reply
        kept, new_shell = stdout_of(outputs).split()
        assert kept == "gone" and new_shell != shell
        assert km.provisioner.pid == top
    cli_ok("remove", "bash")
    assert load(folder) == before


def in_namespace(ns_pid: int) -> list[psutil.Process]:
    """Every process in the network namespace of ``ns_pid``."""
    target = os.stat(f"/proc/{ns_pid}/ns/net").st_ino
    found = []
    for proc in psutil.process_iter():
        try:
            if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == target:
                found.append(proc)
        except OSError:
            pass
    return found


@pytest.fixture
def ssh_node(tmp_path, monkeypatch):
    """A compute node reached by ssh: Debian's sshd in its own network namespace.

    The node has its own 127.0.0.1, as a real remote host does: remote_ikernel
    tunnels each kernel port to the same port on the node, which cannot work if
    both ends share one loopback. ssh reaches the node's sshd (in inetd mode)
    through a ProxyCommand, configured like a user's ~/.ssh/config; an ``ssh``
    first on PATH passes that config, since remote_ikernel runs plain ``ssh``.
    """
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "unshare", "nsenter", "ip"):
        needs(shutil.which(tool), f"{tool} is needed (Debian: openssh-server openssh-client util-linux iproute2)")
    keys = tmp_path / "ssh"
    keys.mkdir()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True, timeout=30)
    shutil.copy(keys / "user_key.pub", keys / "authorized_keys")
    (keys / "sshd_config").write_text(
        f"HostKey {keys / 'host_key'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nAllowTcpForwarding yes\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    node = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 3600"])
    (keys / "ssh_config").write_text(
        f"Host node\n  User {pwd_name()}\n  IdentityFile {keys / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {keys / 'known_hosts'}\n  StrictHostKeyChecking no\n  LogLevel ERROR\n"
        f"  ProxyCommand nsenter --target {node.pid} --net /usr/sbin/sshd -i -f {keys / 'sshd_config'}\n"
    )
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {keys / "ssh_config"} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    try:
        check = subprocess.run(["ssh", "node", "echo ready"], capture_output=True, text=True, timeout=30)
        assert check.stdout.strip() == "ready", check.stderr
        yield "node"
    finally:
        for proc in in_namespace(node.pid):
            if proc.pid != node.pid:
                proc.kill()
        node.kill()
        node.wait(timeout=30)


def pwd_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(params=["local", "ssh"])
def interface(request, jupyter_dirs) -> list[str]:
    """remote_ikernel ``manage --add`` options for each interface tested."""
    if request.param == "local":
        return ["--interface=local"]
    host = request.getfixturevalue("ssh_node")
    # a login shell on the node does not inherit the test's private Jupyter folders
    exports = " ".join(f"{k}={jupyter_dirs[k]}" for k in ("JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "JUPYTER_DATA_DIR"))
    return ["--interface=ssh", f"--host={host}", f"--remote-precmd=export {exports}"]


@pytest.mark.extras
def test_the_proxy_in_front_of_a_remote_ikernel_spec_relaunches_the_remote_kernel(jupyter_dirs, tmp_path, interface):
    needs(importlib.util.find_spec("remote_ikernel"), "remote_ikernel is needed")
    name = add_remote_ikernel(*interface, "--name=node", f"--kernel_cmd={IPYKERNEL_CMD}")
    folder = jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels" / name
    before = load(folder)
    cli_ok("install", name)
    with running(name, cwd=str(tmp_path)) as (km, kc):
        launchers = processes_running(km, "remote_ikernel")
        assert launchers
        python_restarts_in_place(km, kc)
        assert set(processes_running(km, "remote_ikernel")).isdisjoint(launchers), "remote_ikernel was relaunched"
    cli_ok("remove", name)
    assert load(folder) == before


@pytest.mark.extras
def test_remote_ikernel_launching_a_proxied_spec_restarts_only_the_remote_kernel(jupyter_dirs, tmp_path, interface):
    """The other order: the proxy runs on the compute node, so --resource-dir is a path there."""
    needs(importlib.util.find_spec("remote_ikernel"), "remote_ikernel is needed")
    node_spec = write_spec(
        jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels",
        "node-py",
        {k: v for k, v in PYTHON_SPEC.items() if k != "extra_field"},
    )
    cli_ok("install", "node-py")
    proxy_cmd = f"{sys.executable} -m inplace_restarter -f {{connection_file}} --resource-dir={node_spec}"
    name = add_remote_ikernel(*interface, "--name=proxied node", f"--kernel_cmd={proxy_cmd}")
    with running(name, cwd=str(tmp_path)) as (km, kc):
        python_restarts_in_place(km, kc)
        assert km.provisioner.pid == processes_running(km, "remote_ikernel")[0], "remote_ikernel kept running"
