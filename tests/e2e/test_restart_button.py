"""Jupyter server's own restart (``POST /api/kernels/{id}/restart``) on a proxied kernel.

With inplace_restarter installed where the server runs (its server extension
enabled, as pip enables it), the restart keeps the proxy process and the
kernel id and restarts the kernel behind it.  A server whose environment
lacks the package lists, starts and restarts the same spec the ordinary way.
"""

from __future__ import annotations

import subprocess
import venv

import psutil
import pytest
from jupyter_client import BlockingKernelClient

from ..helpers import live_below, start_client
from ..spec_helpers import run_cli, write_spec
from ..test_slurm import SRUN_SPEC, QueueWatch, where
from .conftest import KERNEL_NAME, jupyter_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def kernel_processes(server) -> tuple[int, set[int]]:
    """The proxy's pid and the pids of the kernels behind it, among the server's processes."""
    proxies = live_below(server.process.pid, "-m inplace_restarter")
    assert len(proxies) == 1, proxies
    return proxies.pop(), live_below(server.process.pid, "ipykernel_launcher")


def connect(jupyter_dirs, kernel_id: str) -> BlockingKernelClient:
    client = BlockingKernelClient(connection_file=str(jupyter_dirs["JUPYTER_RUNTIME_DIR"] / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    start_client(client)
    return client


def run(client: BlockingKernelClient, code: str) -> dict:
    return client.execute_interactive(code, timeout=60)["content"]


def start_and_restart(server, jupyter_dirs) -> tuple[tuple[int, set[int]], tuple[int, set[int]]]:
    """Start the proxied kernel through the REST API, set a variable, restart it through the API.

    Returns the kernel's processes before and after; checks that the
    kernel id stays and the variable is gone.
    """
    assert KERNEL_NAME in server.api("/api/kernelspecs")["kernelspecs"]
    kernel = server.api("/api/kernels", "POST", {"name": KERNEL_NAME})
    client = connect(jupyter_dirs, kernel["id"])
    try:
        assert run(client, "x = 1")["status"] == "ok"
        before = kernel_processes(server)
        restarted = server.api(f"/api/kernels/{kernel['id']}/restart", "POST", {})
        assert restarted["id"] == kernel["id"]
        assert run(client, "x")["ename"] == "NameError"
        after = kernel_processes(server)
    finally:
        client.stop_channels()
    assert [k["id"] for k in server.api("/api/kernels")] == [kernel["id"]]
    return before, after


def test_rest_restart_keeps_the_proxy_and_restarts_the_kernel_behind_it(
    restart_button_enabled, proxied_kernel, jupyter_dirs, tmp_path
):
    with jupyter_server("jupyterlab", tmp_path) as server:
        (proxy, inner), (proxy_after, inner_after) = start_and_restart(server, jupyter_dirs)
        assert proxy_after == proxy
        assert inner_after and not inner_after & inner


@pytest.mark.parametrize("where", ["environment", "config"])
def test_with_another_default_provisioner_the_rest_restart_is_the_ordinary_one(
    restart_button_enabled, proxied_kernel, jupyter_dirs, tmp_path, monkeypatch, where
):
    if where == "environment":
        monkeypatch.setenv("JUPYTER_DEFAULT_PROVISIONER_NAME", "local-provisioner")
    else:
        setting = 'c.KernelProvisionerFactory.default_provisioner_name = "local-provisioner"\n'
        (jupyter_dirs["JUPYTER_CONFIG_DIR"] / "jupyter_server_config.py").write_text(setting)
    with jupyter_server("jupyterlab", tmp_path) as server:
        (proxy, _), (proxy_after, _) = start_and_restart(server, jupyter_dirs)
        assert proxy_after != proxy
        assert "keeping the default kernel provisioner 'local-provisioner'" in server.log()


@pytest.fixture(scope="session")
def python_without_the_package(tmp_path_factory) -> str:
    """A venv with jupyter_server only, installed by pip: a server environment without inplace_restarter."""
    folder = tmp_path_factory.mktemp("server-venv")
    venv.create(folder, with_pip=True)
    python = str(folder / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "jupyter_server"], check=True, capture_output=True, timeout=600
    )
    lacks = subprocess.run([python, "-c", "import inplace_restarter"], capture_output=True, check=False, cwd=folder)
    assert lacks.returncode != 0
    return python


@pytest.mark.packaging
@pytest.mark.timeout(900)
def test_a_server_without_the_package_starts_and_restarts_the_spec_the_ordinary_way(
    python_without_the_package, restart_button_enabled, proxied_kernel, jupyter_dirs, tmp_path
):
    # The extension is enabled in the user's config (as by `jupyter server extension
    # enable --user`), but the server's Python cannot import it.
    with jupyter_server("jupyter_server", tmp_path, python=python_without_the_package) as server:
        (proxy, inner), (proxy_after, inner_after) = start_and_restart(server, jupyter_dirs)
        assert proxy_after != proxy
        assert inner_after and not inner_after & inner
        assert not psutil.pid_exists(proxy) or psutil.Process(proxy).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slurm
def test_rest_restart_of_a_kernel_in_a_slurm_job_keeps_the_job(restart_button_enabled, slurm, jupyter_dirs, tmp_path):
    """On the single-node Slurm cluster: the server's restart keeps SLURM_JOB_ID, deleting the kernel ends the job."""
    write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "slurm-py", SRUN_SPEC)
    done = run_cli("install", "slurm-py")
    assert done.returncode == 0, done.stderr
    with jupyter_server("jupyterlab", tmp_path) as server:
        kernel = server.api("/api/kernels", "POST", {"name": "slurm-py"})
        client = connect(jupyter_dirs, kernel["id"])
        try:
            assert run(client, "x = 1")["status"] == "ok"
            job, pid, proxy = where(client)
            with QueueWatch(slurm) as watch:
                restarted = server.api(f"/api/kernels/{kernel['id']}/restart", "POST", {})
                assert restarted["id"] == kernel["id"]
                assert run(client, "x")["ename"] == "NameError"
                new_job, new_pid, new_proxy = where(client)
            assert (new_job, watch.seen) == (job, {job}), "one job, the same, throughout the restart"
            assert new_pid != pid and new_proxy == proxy
        finally:
            client.stop_channels()
        server.api(f"/api/kernels/{kernel['id']}", "DELETE")
        slurm.wait_for_empty_queue(15)
