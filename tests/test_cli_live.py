"""Installed specs run for real: bash_kernel, remote_ikernel both ways round, and end to end.

Each test installs with the CLI, starts the kernel the way Jupyter does
(jupyter_client), runs ``%restart`` and checks that a fresh kernel answers on
the same connection, then removes and compares the kernel.json.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from .helpers import descendants_of, execute, running, stdout_of
from .spec_helpers import PYTHON_SPEC, load, make_spec, run_cli

pytestmark = pytest.mark.timeout(240)

IPYKERNEL_CMD = f"{sys.executable} -m ipykernel_launcher -f {{connection_file}}"


def cli_ok(*args: str) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def processes_running(km, module: str) -> list[int]:
    """Pids of ``python -m module`` among the kernel Jupyter started and its descendants."""
    tree = [psutil.Process(km.provisioner.pid), *descendants_of(km.provisioner.pid)]
    return sorted(p.pid for p in tree if p.cmdline()[1:3] == ["-m", module])


def python_restarts_in_place(km, kc) -> None:
    """%restart gives a fresh Python kernel behind the same client and the same top process."""
    top = km.provisioner.pid
    reply, outputs = execute(kc, "import os\nkept = 1\nprint(os.getpid())")
    assert reply["content"]["status"] == "ok", reply
    before = int(stdout_of(outputs))
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
    folder = make_spec(jupyter_dirs["JUPYTER_PATH"], "e2e", {k: v for k, v in PYTHON_SPEC.items() if k != "extra_field"})
    before = load(folder)
    cli_ok("install", "e2e")
    with running("e2e") as (km, kc):
        python_restarts_in_place(km, kc)
    assert cli_ok("remove", "e2e")
    assert load(folder) == before


def test_a_bash_kernel_spec_restarts_in_place(jupyter_dirs):
    pytest.importorskip("bash_kernel")
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


def test_the_proxy_in_front_of_a_remote_ikernel_spec_relaunches_the_remote_kernel(jupyter_dirs, tmp_path):
    pytest.importorskip("remote_ikernel")
    name = add_remote_ikernel("--interface=local", "--name=node", f"--kernel_cmd={IPYKERNEL_CMD}")
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


def test_remote_ikernel_launching_a_proxied_spec_restarts_only_the_remote_kernel(jupyter_dirs, tmp_path):
    """The other order: the proxy runs on the compute node, so --resource-dir is a path there."""
    pytest.importorskip("remote_ikernel")
    node_spec = make_spec(jupyter_dirs["JUPYTER_DATA_DIR"], "node-py", {k: v for k, v in PYTHON_SPEC.items() if k != "extra_field"})
    cli_ok("install", "node-py")
    proxy_cmd = f"{sys.executable} -m inplace_restarter -f {{connection_file}} --resource-dir={node_spec}"
    name = add_remote_ikernel("--interface=local", "--name=proxied node", f"--kernel_cmd={proxy_cmd}")
    with running(name, cwd=str(tmp_path)) as (km, kc):
        launchers = processes_running(km, "remote_ikernel")
        proxies = processes_running(km, "inplace_restarter")
        assert launchers and proxies
        python_restarts_in_place(km, kc)
        assert processes_running(km, "remote_ikernel") == launchers
        assert processes_running(km, "inplace_restarter") == proxies, "only the kernel behind the remote proxy restarted"
