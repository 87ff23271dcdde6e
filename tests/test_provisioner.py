"""jupyter_client's own restart of a kernel launched by the inplace_restarter provisioner.

``KernelManager.restart_kernel()`` is what the Restart button, Restart & Run
All, nbclient and Jupyter server's REST call end in.  On a proxied kernel it
restarts the inner kernel and keeps the proxy (and whatever launched it);
everything else restarts as jupyter_client always has.  The specs here name
the provisioner, as a spec may where the package is known to be installed;
the server extension that makes it the default is tested in tests/e2e.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from inplace_restarter.provisioner import PROVISIONER_NAME, RESTART_FLAG

from .helpers import (
    ended,
    execute,
    inner_pid,
    kernel_pid,
    running,
    stdout_of,
    wait_for_inner_count,
    wait_until,
)
from .spec_helpers import direct, with_provisioner, write_spec

ROOT = Path(__file__).parents[1]


@pytest.fixture
def button(proxy_with, tmp_path):
    """A running proxied kernel launched by the provisioner; its stderr (the log, at INFO) in tmp_path/kernel.log."""
    with open(tmp_path / "kernel.log", "wb") as log, proxy_with("--log-level=INFO", provisioner={}, stderr=log) as pair:
        yield pair


def environment_variable(kc, name: str) -> str:
    _, outputs = execute(kc, f"import os; print(os.environ.get({name!r}))")
    return stdout_of(outputs).strip()


def asked_to_restart_in_place(km) -> bool:
    """Whether the kernel's process was given the provisioner's request on its command line."""
    return f"--{RESTART_FLAG}" in psutil.Process(km.provisioner.pid).cmdline()


def restarted_the_ordinary_way(km, kc, old_pid: int) -> None:
    """A new process replaced ``old_pid``, which is gone, and the kernel answers."""
    assert km.provisioner.pid != old_pid
    ended([old_pid])
    kc.wait_for_ready(timeout=60)
    assert execute(kc, "print('back')")[0]["content"]["status"] == "ok"


def test_restart_kernel_restarts_the_inner_kernel_and_keeps_the_proxy(button, tmp_path, record_property):
    km, kc = button
    execute(kc, "x = 42")
    proxy, inner = km.provisioner.pid, inner_pid(km)
    kernel_id, connection_file = km.kernel_id, km.connection_file
    connection = Path(connection_file).read_text()

    started = time.monotonic()
    km.restart_kernel()
    returned = time.monotonic() - started
    reply, _ = execute(kc, "x")
    answered = time.monotonic() - started

    assert reply["content"]["ename"] == "NameError"
    assert km.provisioner.pid == proxy and psutil.Process(proxy).is_running()
    assert inner_pid(km) != inner
    ended([inner])
    assert (km.kernel_id, km.connection_file) == (kernel_id, connection_file)
    assert Path(connection_file).read_text() == connection
    assert km.is_alive()
    # the log says so, as for %restart and a rescued kernel
    assert "Restarted the kernel in place in" in (tmp_path / "kernel.log").read_text()
    # How long, for the record (--junitxml); how fast is the benchmark's to say.
    record_property("restart_kernel_returned_s", round(returned, 3))
    record_property("new_kernel_answered_s", round(answered, 3))


def test_the_request_to_restart_in_place_travels_on_the_proxys_command_line_after_its_module(button):
    """Where every launcher carries it (ssh and mpirun pass no environment); the proxy's own options follow."""
    km, _ = button
    argv = psutil.Process(km.provisioner.pid).cmdline()
    start = argv.index("inplace_restarter")
    assert argv[start - 1 : start + 3] == ["-m", "inplace_restarter", f"--{RESTART_FLAG}", "-f"]


def test_the_servers_environment_reaches_the_kernel_behind_the_proxy(proxy_with, monkeypatch):
    """A launch that names no env gets the server's own, as with the local provisioner (a Slurm job needs SLURM_CONF)."""
    monkeypatch.setenv("SERVER_SIDE_SETTING", "kept")
    with proxy_with(provisioner={}) as (km, kc):
        assert environment_variable(kc, "SERVER_SIDE_SETTING") == "kept"
        km.restart_kernel()
        assert environment_variable(kc, "SERVER_SIDE_SETTING") == "kept"


def test_a_cell_sent_right_after_the_restart_runs_in_the_new_kernel(button):
    km, kc = button
    execute(kc, "x = 1")
    km.restart_kernel()
    reply, outputs = execute(kc, "print('x' in globals())")
    assert reply["content"]["status"] == "ok"
    assert stdout_of(outputs) == "False\n"


def test_restart_kernel_after_a_restart_cell_restarts_again(button):
    km, kc = button
    inner = inner_pid(km)
    execute(kc, "%restart\nx = 2")
    after_cell = inner_pid(km)
    km.restart_kernel()
    assert execute(kc, "x")[0]["content"]["ename"] == "NameError"
    assert len({inner, after_cell, inner_pid(km)}) == 3


def test_shutdown_still_ends_the_proxy_and_its_kernel(button):
    km, _ = button
    proxy, inner = km.provisioner.pid, inner_pid(km)
    km.shutdown_kernel()
    ended([proxy, inner])
    assert not km.is_alive()


def test_restart_now_is_the_ordinary_restart(button):
    km, kc = button
    proxy, inner = km.provisioner.pid, inner_pid(km)
    km.restart_kernel(now=True)
    restarted_the_ordinary_way(km, kc, proxy)
    ended([inner])


def test_a_dead_proxy_is_restarted_the_ordinary_way(button):
    km, kc = button
    proxy = km.provisioner.pid
    os.kill(proxy, signal.SIGKILL)
    wait_until(lambda: not km.is_alive(), "the killed proxy to be seen dead")
    km.restart_kernel()
    restarted_the_ordinary_way(km, kc, proxy)


def test_a_proxy_that_does_not_answer_gets_the_ordinary_restart(proxy_with):
    with proxy_with(provisioner={"reply_timeout": 1.0}) as (km, kc):
        proxy, inner = km.provisioner.pid, inner_pid(km)
        os.kill(proxy, signal.SIGSTOP)
        try:
            km.restart_kernel()
        finally:
            try:
                os.kill(proxy, signal.SIGCONT)
            except ProcessLookupError:
                pass
        restarted_the_ordinary_way(km, kc, proxy)
        ended([inner])


def test_a_kernel_that_is_not_proxied_restarts_as_with_the_local_provisioner(kernels_dir):
    write_spec(kernels_dir, "plain", with_provisioner(direct()))
    with running("plain") as (km, kc):
        assert not asked_to_restart_in_place(km)
        pid = km.provisioner.pid
        km.restart_kernel()
        restarted_the_ordinary_way(km, kc, pid)


def test_a_proxy_launched_by_another_provisioner_restarts_the_ordinary_way(specs):
    with running("proxied") as (km, kc):
        assert not asked_to_restart_in_place(km)
        proxy = km.provisioner.pid
        km.restart_kernel()
        restarted_the_ordinary_way(km, kc, proxy)


@pytest.mark.timeout(180)
def test_with_standby_the_restart_swaps_to_the_spare(proxy_with):
    with proxy_with("--standby", provisioner={}) as (km, kc):
        current = kernel_pid(kc)
        spare = (wait_for_inner_count(km, 2) - {current}).pop()
        km.restart_kernel()
        assert kernel_pid(kc) == spare


@pytest.mark.packaging
@pytest.mark.timeout(300)
def test_a_pip_install_enables_the_server_extension(tmp_path):
    """pip installs the jpserver_extensions entry in etc/jupyter (an editable install does not: PEP 660 has no data files)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    [wheel] = tmp_path.glob("inplace_restarter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [entry] = [
            n for n in archive.namelist() if n.endswith("etc/jupyter/jupyter_server_config.d/inplace_restarter.json")
        ]
        assert ".data/data/" in entry
        config = json.loads(archive.read(entry))
        entry_points = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt"))
    assert config == {"ServerApp": {"jpserver_extensions": {"inplace_restarter": True}}}
    assert f"{PROVISIONER_NAME} = inplace_restarter.provisioner:InPlaceProvisioner" in entry_points
