"""Starting real kernels for the tests, and reading what they send."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from jupyter_client.manager import start_new_kernel

from inplace_restarter.kernelspec import METADATA_KEY, proxy_argv

PYTHON = sys.executable


def needs(available: object, what: str) -> None:
    """Skip a test whose prerequisite is missing here; in CI (``CI`` set) fail it instead.

    CI installs everything the tests use, so a missing piece there is a
    broken setup, never a reason to pass quietly.
    """
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} (required in CI)")
    pytest.skip(what)
#: The kernel used directly and behind the proxy throughout the tests.
IPYKERNEL_ARGV = [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def write_spec(kernels_dir: Path, name: str, spec: dict) -> Path:
    folder = kernels_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return folder


def proxied(inner_argv: list[str] = IPYKERNEL_ARGV, **fields) -> dict:
    """A kernel.json as install writes it: the proxy in front of ``inner_argv``."""
    return {
        "argv": proxy_argv(PYTHON),
        "display_name": "Python (in-place restart)",
        "language": "python",
        **fields,
        "metadata": {**fields.get("metadata", {}), METADATA_KEY: {"original_argv": inner_argv}},
    }


def direct(argv: list[str] = IPYKERNEL_ARGV, **fields) -> dict:
    return {"argv": argv, "display_name": "Python (direct)", "language": "python", **fields}


@contextmanager
def running(kernel_name: str, **kwargs):
    """Start a kernel as Jupyter does and make sure it is gone afterwards."""
    km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=60, **kwargs)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        pid = km.provisioner.pid if km.provisioner else None
        descendants = descendants_of(pid)
        km.shutdown_kernel(now=True)
        for proc in descendants:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def descendants_of(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def inner_pids(km) -> set[int]:
    """The pids of the live kernels behind the proxy that ``km`` started."""
    pids = set()
    for proc in descendants_of(km.provisioner.pid):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "ipykernel_launcher" in " ".join(proc.cmdline()):
                pids.add(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def inner_connection_file(km) -> str:
    """The connection file of the one kernel behind the proxy, as its command line names it."""
    argv = psutil.Process(inner_pid(km)).cmdline()
    return argv[argv.index("-f") + 1]


def inner_pid(km) -> int:
    """The pid of the one kernel behind the proxy that ``km`` started."""
    pids = inner_pids(km)
    assert len(pids) == 1, pids
    return pids.pop()


def execute(kc, code: str, timeout: float = 30, **kwargs) -> tuple[dict, list[dict]]:
    """Run ``code``; return the reply and the iopub messages it caused, in order."""
    outputs: list[dict] = []
    reply = kc.execute_interactive(code, output_hook=outputs.append, timeout=timeout, **kwargs)
    return reply, outputs


def stdout_of(outputs: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")



def reply_to(kc, msg_id: str, timeout: float = 10) -> dict:
    """The shell reply to ``msg_id``, skipping replies to earlier requests."""
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def wait_for_file(path: Path, timeout: float = 30) -> None:
    """Wait for a marker file that a cell creates once it runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)
