"""The first inner kernel, launched before the proxy's imports, is the one KernelManager would launch."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import psutil
import pytest
from jupyter_client.connect import write_connection_file
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import KernelManager

from inplace_restarter import prelaunch as prelaunch_
from inplace_restarter.inner import _OneSpec
from inplace_restarter.prelaunch import kernel_command, kernel_env, prelaunch

from .helpers import execute, inner_connection_file, inner_pid, kernel_pid, live_below, running, stdout_of
from .spec_helpers import IPYKERNEL_ARGV


@pytest.mark.parametrize(
    "option", [["-f", "{file}"], ["-f={file}"], ["--f={file}"], ["--ProxyKernelApp.connection_file", "{file}"]]
)
def test_the_inner_kernel_is_launched_first_with_the_key_of_the_clients_connection_file(
    specs, kernels_dir, tmp_path, option
):
    connection_file = tmp_path / "kernel.json"
    write_connection_file(str(connection_file), key=b"the client's key", signature_scheme="hmac-sha512")
    argv = [arg.format(file=connection_file) for arg in option] + ["--resource-dir", str(kernels_dir / "proxied")]
    early = prelaunch(argv)
    try:
        info = json.loads(early.connection_file.read_text())
        assert (info["key"], info["signature_scheme"]) == ("the client's key", "hmac-sha512")
        assert early.process.poll() is None
    finally:
        prelaunch_.stop(early.process, is_launcher=False)
        shutil.rmtree(early.runtime_dir)


def test_without_a_connection_file_to_read_the_key_from_the_proxy_launches_the_kernel_later(
    specs, kernels_dir, tmp_path
):
    spec_dir = f"--resource-dir={kernels_dir / 'proxied'}"
    assert prelaunch([spec_dir]) is None
    assert prelaunch(["-f", str(tmp_path / "not-there.json"), spec_dir]) is None


def test_the_first_inner_kernel_is_the_prelaunched_one_and_a_restart_launches_the_usual_way(proxy):
    km, kc = proxy
    assert Path(inner_connection_file(km)).name == "inner-prelaunched.json"
    first = inner_pid(km)
    execute(kc, "%restart")
    assert inner_pid(km) != first
    assert Path(inner_connection_file(km)).name != "inner-prelaunched.json"


def test_a_clients_extra_arguments_are_in_the_prelaunched_kernels_command_and_it_is_taken_over(specs):
    with running("proxied", extra_arguments=["--IPKernelApp.log_level=WARN"]) as (km, kc):
        argv = psutil.Process(inner_pid(km)).cmdline()
        assert Path(inner_connection_file(km)).name == "inner-prelaunched.json"
        assert argv[-1] == "--IPKernelApp.log_level=WARN"
        assert kernel_pid(kc) == inner_pid(km)


def test_a_kernel_prelaunched_for_another_command_gives_way_to_the_one_the_config_asks_for(
    specs, proxy_with, jupyter_dirs
):
    """The command line names the spec; inplace_restarter_config.py, read only later, overrides its argv."""
    argv = [*IPYKERNEL_ARGV, "--IPKernelApp.log_level=WARN"]
    config = jupyter_dirs["JUPYTER_CONFIG_DIR"] / "inplace_restarter_config.py"
    config.write_text(f"c.ProxyKernelApp.inner_argv = {argv!r}\n")
    with proxy_with() as (km, kc):
        _, outputs = execute(kc, "import sys; print(sys.argv[-1])")
        assert stdout_of(outputs) == "--IPKernelApp.log_level=WARN\n"
        assert live_below(km.provisioner.pid, "ipykernel_launcher") == {kernel_pid(kc)}, "the prelaunched one is gone"


def test_the_command_and_environment_are_formatted_as_kernel_manager_formats_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONEXECUTABLE", "/somewhere/python")
    monkeypatch.setenv("FROM_SERVER", "server")
    fields = {
        "argv": [
            "python3",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "{resource_dir}/x",
            "{prefix}",
            "{unknown}",
        ],
        "env": {"DERIVED": "${FROM_SERVER}/sub", "UNSET": "${NOT_SET_ANYWHERE}", "PLAIN": "1"},
        "language": "python",
        "display_name": "inner",
        "resource_dir": str(tmp_path / "spec"),
    }
    connection_file = tmp_path / "inner.json"
    km = KernelManager(kernel_spec_manager=_OneSpec(spec=KernelSpec(**fields)), connection_file=str(connection_file))
    cmd, kwargs = km.pre_start_kernel()
    try:
        assert kernel_command(fields, connection_file) == cmd
        assert kernel_env(fields) == kwargs["env"]
        assert cmd[0] == sys.executable and "PYTHONEXECUTABLE" not in kwargs["env"]
    finally:
        km.cleanup_resources()
