"""What the tests share: Jupyter folders, waiting for a marker, the processes a test started, kernels, messages.

Kernelspec folders (sample specs, writing and reading kernel.json, CLI runs)
are tests/spec_helpers.py's concern.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir

PYTHON = sys.executable

T = TypeVar("T")


def unavailable(reason: str) -> None:
    """Skip a test whose prerequisite is missing here; in CI (``CI`` set) fail it instead.

    CI installs everything the tests use, so a missing piece there is a
    broken setup, never a reason to pass quietly.
    """
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason)


def needs(available: object, what: str) -> None:
    """``unavailable(what)`` unless ``available``."""
    if not available:
        unavailable(what)


# --- private Jupyter folders ---------------------------------------------------------------


def private_jupyter_dirs(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every Jupyter and IPython folder at a fresh tree below ``root``; the folders by variable."""
    dirs = {
        "JUPYTER_PATH": root / "path",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "JUPYTER_CONFIG_DIR": root / "config",
        "IPYTHONDIR": root / "ipython",
    }
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    return dirs


# --- waiting for a marker ------------------------------------------------------------------


def wait_until(ready: Callable[[], T], what: str, timeout: float = 30, interval: float = 0.02) -> T:
    """Poll ``ready`` until it returns something true and return that; AssertionError after ``timeout``.

    What to wait for is a marker (a file, a process state, a queue), never a
    duration: the deadline only bounds a test that would otherwise hang.
    """
    deadline = time.monotonic() + timeout
    while not (result := ready()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)
    return result


def wait_for_file(path: Path, timeout: float = 30) -> None:
    """Wait for a marker file that a cell creates once it runs."""
    wait_until(Path(path).exists, f"{path} to appear", timeout)


def marker_cell(started: Path, code: str = "") -> str:
    """Code that creates ``started`` to say it runs, then runs ``code``."""
    return f"open({str(started)!r}, 'w').close()\n{code}"


# --- processes -----------------------------------------------------------------------------


def descendants(pid: int | None) -> list[psutil.Process]:
    """Every process below ``pid`` (none for a process already gone)."""
    if pid is None:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie has ended, it only waits for its parent to read its status."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live_below(pid: int, command: str = "") -> set[int]:
    """The pids of the running processes below ``pid`` whose command line contains ``command``."""
    found = set()
    for proc in descendants(pid):
        with suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE and command in " ".join(proc.cmdline()):
                found.add(proc.pid)
    return found


def ended(pids: Iterable[int], timeout: float = 10) -> None:
    """Wait until none of ``pids`` runs; AssertionError naming those that still do."""
    pids = list(pids)
    wait_until(lambda: not any(map(is_running, pids)), f"{[p for p in pids if is_running(p)]} to end", timeout)


def kill(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL each of ``procs`` that is still there."""
    for proc in procs:
        with suppress(psutil.NoSuchProcess):
            proc.kill()


def processes_gone(procs: list[psutil.Process], what: str, timeout: float = 10) -> None:
    """Wait for ``procs`` to end; kill and report any that outlive ``timeout``."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    kill(alive)
    if alive:
        raise AssertionError(f"processes outlived {what}: {[p.pid for p in alive]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- kernels -------------------------------------------------------------------------------


def kernel_manager(kernel_name: str, **options) -> KernelManager:
    """A KernelManager whose connection file is in the runtime folder, named as Jupyter's server names it.

    A bare KernelManager writes a temporary file in /tmp instead, which a
    failed start or a killed process leaves behind, outside the test's folders.
    """
    path = os.path.join(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json")
    return KernelManager(kernel_name=kernel_name, connection_file=path, **options)


@contextmanager
def running(kernel_name: str, *, startup_timeout: float = 60, graceful: bool = False, manager=None, **launch):
    """Start a kernel as Jupyter does: ``(KernelManager, BlockingKernelClient)``; it is gone afterwards.

    ``manager`` holds KernelManager options (transport, encryption), ``launch``
    ``start_kernel``'s (stderr, cwd).  By default the kernel is killed at the
    end, and whatever it started with it; ``graceful`` shuts it down as
    Jupyter does (a ``shutdown_request``) and fails if anything it started
    outlives that.
    """
    km = kernel_manager(kernel_name, **(manager or {}))
    km.start_kernel(**launch)
    kc = km.client()
    started: list[psutil.Process] = []
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=startup_timeout)
        yield km, kc
    finally:
        kc.stop_channels()
        if km.has_kernel:
            started = descendants(km.provisioner.pid)
        if graceful:
            if km.is_alive():
                km.shutdown_kernel()
            processes_gone(started, f"the shutdown of {kernel_name!r}", timeout=30)
        else:
            km.shutdown_kernel(now=True)
            kill(started)


def start_client(kc, timeout: float = 60) -> None:
    """Start ``kc``'s channels and wait until its kernel answers, for a client that no KernelManager owns.

    Without a manager, wait_for_ready takes a heartbeat unanswered for one
    second as a dead kernel, which a kernel still starting on a loaded machine
    is not; without the heartbeat it waits for the kernel's own kernel_info
    reply, and iopub connected, up to ``timeout``.
    """
    kc.start_channels(hb=False)
    kc.wait_for_ready(timeout=timeout)


def inner_pids(km) -> set[int]:
    """The pids of the live kernels behind the proxy that ``km`` started."""
    return live_below(km.provisioner.pid, "ipykernel_launcher")


def inner_pid(km) -> int:
    """The pid of the one kernel behind the proxy that ``km`` started."""
    pids = inner_pids(km)
    assert len(pids) == 1, pids
    return pids.pop()


def wait_for_inner_count(km, count: int, timeout: float = 30) -> set[int]:
    """Wait until ``count`` kernels run behind the proxy (a spare among them); their pids."""
    [pids] = wait_until(
        lambda: [pids] if len(pids := inner_pids(km)) == count else None, f"{count} inner kernels", timeout
    )
    return pids


def inner_connection_file(km) -> str:
    """The connection file of the one kernel behind the proxy, as its command line names it."""
    argv = psutil.Process(inner_pid(km)).cmdline()
    return argv[argv.index("-f") + 1]


def kernel_pid(kc) -> int:
    """The pid of the kernel that runs ``kc``'s cells, as it says itself."""
    return int(stdout_of(execute(kc, "import os; print(os.getpid())")[1]))


# --- messages ------------------------------------------------------------------------------


def execute(kc, code: str, timeout: float = 30, **kwargs) -> tuple[dict, list[dict]]:
    """Run ``code``; return the reply and the iopub messages it caused, in order."""
    outputs: list[dict] = []
    reply = kc.execute_interactive(code, output_hook=outputs.append, timeout=timeout, **kwargs)
    return reply, outputs


def stream_text(outputs: list[dict], name: str) -> str:
    """What ``outputs`` wrote to the stream ``name`` (stdout or stderr)."""
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream" and m["content"]["name"] == name)


def stdout_of(outputs: list[dict]) -> str:
    return stream_text(outputs, "stdout")


def stderr_of(outputs: list[dict]) -> str:
    return stream_text(outputs, "stderr")


def send(kc, channel: str, msg_type: str, content: dict | None = None, buffers=None, **header) -> str:
    """Send a request on ``channel`` ("shell", "control", ...), ``header`` fields added; its msg_id."""
    msg = kc.session.msg(msg_type, content or {})
    msg["header"].update(header)
    kc.session.send(getattr(kc, f"{channel}_channel").socket, msg, buffers=buffers)
    return msg["header"]["msg_id"]


def reply_to(kc, msg_id: str, timeout: float = 10, channel: str = "shell") -> dict:
    """The reply to ``msg_id`` on ``channel``, skipping replies to earlier requests."""
    while True:
        reply = getattr(kc, f"{channel}_channel").get_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def replies(kc, msg_ids: Iterable[str], timeout: float = 30) -> dict[str, dict]:
    """The shell replies to ``msg_ids``, in whatever order they come, by msg_id; replies to other requests skipped."""
    wanted, got = set(msg_ids), {}
    deadline = time.monotonic() + timeout
    while wanted - got.keys():
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no reply to {sorted(wanted - got.keys())} within {timeout} s"
        reply = kc.shell_channel.get_msg(timeout=remaining)
        if (msg_id := reply["parent_header"].get("msg_id")) in wanted:
            got[msg_id] = reply
    return got


def control(kc, msg_type: str, **content) -> dict:
    """Send a control request; its reply's content."""
    return reply_to(kc, send(kc, "control", msg_type, content), timeout=30, channel="control")["content"]


def create_subshell(kc) -> str:
    reply = control(kc, "create_subshell_request")
    assert reply["status"] == "ok", reply
    return reply["subshell_id"]


def on_subshell(kc, subshell_id: str, code: str) -> str:
    """Send an execute request to a subshell; its msg_id."""
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}}
    return send(
        kc,
        "shell",
        "execute_request",
        {**content, "allow_stdin": False, "stop_on_error": True},
        subshell_id=subshell_id,
    )


#: Defines ``go``, the event a :func:`failing_after_go` cell waits for.
DEFINE_GO = "import threading\ngo = threading.Event()"


def failing_after_go() -> str:
    """A cell that fails once ``go`` is set (see DEFINE_GO), and fails differently if it never is.

    ipykernel 7 aborts only the requests its shell channel thread has read
    before the failure; that thread reads the shell socket in order and passes
    a subshell's requests on while the main shell is busy.  So a cell sent
    behind this one is surely read before it fails when ``go`` is set by a
    request sent later still, on another shell.
    """
    return "if not go.wait(60):\n    raise TimeoutError('go was never set')\ngo.clear()\n1 / 0"


def is_idle(msg: dict) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def iopub_until(
    kc, msg_id: str, done: Callable[[dict], bool], timeout: float = 30, everything: bool = False
) -> list[dict]:
    """The iopub messages of request ``msg_id``, up to the first one that is ``done``.

    With ``everything``, the messages of other parents received meanwhile are kept too.
    """
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"iopub of {msg_id}: no end within {timeout} s; got {[m['msg_type'] for m in seen]}"
        msg = kc.get_iopub_msg(timeout=remaining)
        mine = msg["parent_header"].get("msg_id") == msg_id
        if mine or everything:
            seen.append(msg)
        if mine and done(msg):
            return seen


def iopub_until_idle(kc, msg_id: str, timeout: float = 30, everything: bool = False) -> list[dict]:
    """The iopub messages of request ``msg_id``, through its idle status."""
    return iopub_until(kc, msg_id, is_idle, timeout, everything)


def wait_for_stream(kc, msg_id: str, text: str, timeout: float = 30) -> str:
    """Wait until the cell ``msg_id`` writes ``text`` to a stream; that stream message's text."""
    found = iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream" and text in m["content"]["text"], timeout)
    return found[-1]["content"]["text"]
