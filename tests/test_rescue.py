"""A dying or hung inner kernel is noticed, explained, and restarted in place."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from .helpers import (
    execute,
    inner_pid,
    inner_pids,
    iopub_until_idle,
    marker_cell,
    reply_to,
    send,
    stderr_of,
    wait_for_file,
    wait_for_stream,
    wait_until,
)


def wait_for_new_inner(km, old: int) -> int:
    """The pid of the one kernel behind the proxy once it is not ``old``."""
    [pid] = wait_until(lambda: [pids.pop()] if len(pids := inner_pids(km) - {old}) == 1 else None, "a new inner kernel")
    return pid


@pytest.mark.parametrize(
    "code, reason",
    [
        ("import os; os._exit(3)", "The kernel exited with code 3"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "The kernel died of SIGKILL"),
    ],
)
def test_a_kernel_dying_in_a_cell_fails_that_cell_and_comes_back(proxy, code, reason):
    km, kc = proxy
    before = inner_pid(km)
    reply, outputs = execute(kc, code)
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "DeadKernelError"
    assert content["evalue"] == f"{reason}; it was restarted in place"
    assert f"{reason}; restarting it in place." in stderr_of(outputs)
    assert any(m["msg_type"] == "error" for m in outputs)
    assert inner_pid(km) != before
    reply, outputs = execute(kc, "print('alive')")
    assert reply["content"]["status"] == "ok" and reply["content"]["execution_count"] == 1


def test_a_kernel_killed_while_idle_is_restarted_at_once_and_the_next_cell_says_so(proxy):
    km, kc = proxy
    before = inner_pid(km)
    os.kill(before, signal.SIGKILL)
    wait_for_new_inner(km, before)  # with no request from the client
    reply, outputs = execute(kc, "print('alive')")
    assert reply["content"]["status"] == "ok"
    assert "The kernel died of SIGKILL at" in stderr_of(outputs)
    assert "its variables are gone" in stderr_of(outputs)
    _, outputs = execute(kc, "print('again')")
    assert stderr_of(outputs) == "", "told once"


@pytest.mark.parametrize("configured_by", ["kernelspec argv", "Jupyter config file"])
def test_restarts_stop_past_the_limit_until_the_user_restarts(proxy_with, jupyter_dirs, configured_by):
    options = []
    if configured_by == "kernelspec argv":
        options.append("--RescuePolicy.restart_limit=1")
    else:
        config = jupyter_dirs["JUPYTER_CONFIG_DIR"] / "inplace_restarter_config.py"
        config.write_text("c.RescuePolicy.restart_limit = 1\n")
    with proxy_with(*options) as (km, kc):
        reply, _ = execute(kc, "import os; os._exit(1)")
        assert reply["content"]["evalue"].endswith("it was restarted in place")
        reply, outputs = execute(kc, "import os; os._exit(1)")
        assert "so it is not restarted again: run %restart to start it" in reply["content"]["evalue"]
        reply, _ = execute(kc, "1")
        assert reply["content"]["evalue"] == "The kernel is not running; run %restart to start it"
        # With no kernel to take it, a comm is closed again, as a kernel closes one it has no target for.
        opened = send(kc, "shell", "comm_open", {"comm_id": "c1", "target_name": "jupyter.widget", "data": {}})
        closes = [m for m in iopub_until_idle(kc, opened) if m["msg_type"] == "comm_close"]
        assert [m["content"]["comm_id"] for m in closes] == ["c1"]
        completion = reply_to(kc, send(kc, "shell", "complete_request", {"code": "pri", "cursor_pos": 3}))
        assert completion["content"]["ename"] == "DeadKernelError"
        reply, outputs = execute(kc, "%restart\nprint('back')")
        assert reply["content"]["status"] == "ok"
        assert km.is_alive() and inner_pid(km)


def spinning_ignoring_sigint(started: Path) -> str:
    """A cell that ignores SIGINT, then says so by creating ``started``, and spins for ever."""
    return "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n" + marker_cell(
        started, "while True:\n    pass"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("interrupt_mode", ["signal", "message"])
def test_a_hung_kernel_is_restarted_by_a_second_interrupt(proxy_with, tmp_path, interrupt_mode):
    with proxy_with("--RescuePolicy.interrupt_grace=1", fields={"interrupt_mode": interrupt_mode}) as (km, kc):
        before = inner_pid(km)
        msg_id = kc.execute(spinning_ignoring_sigint(tmp_path / "spinning"))
        wait_for_file(tmp_path / "spinning")
        km.interrupt_kernel()
        warning = wait_for_stream(kc, msg_id, "does not respond to interrupts")
        assert "Interrupt again to restart it in place" in warning
        assert inner_pid(km) == before, "not restarted before the user asks"

        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=10)
        assert reply["content"]["ename"] == "DeadKernelError"
        assert reply["content"]["evalue"] == "The kernel did not respond to interrupts, so it was restarted in place"
        assert inner_pid(km) != before
        assert execute(kc, "print('carry on')")[0]["content"]["status"] == "ok"


@pytest.mark.timeout(60)
def test_a_hung_kernel_can_be_restarted_automatically(proxy_with, tmp_path):
    options = ("--RescuePolicy.interrupt_grace=1", "--RescuePolicy.restart_hung=True")
    with proxy_with(*options) as (km, kc):
        before = inner_pid(km)
        msg_id = kc.execute(spinning_ignoring_sigint(tmp_path / "spinning"))
        wait_for_file(tmp_path / "spinning")
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=10)
        assert reply["content"]["ename"] == "DeadKernelError"
        assert inner_pid(km) != before
