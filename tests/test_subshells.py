"""Kernel subshells through the proxy: as with the kernel used directly, and across restarts in place.

A subshell (ipykernel 7's ``create_subshell_request``) runs its requests
beside the main shell's; JupyterLab's subshell console uses one to look into
a notebook whose cell is still running.  Cells here block on marker files the
test creates, so "while the main shell is busy" is a fact, not a timing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .helpers import (
    DEFINE_GO,
    control,
    create_subshell,
    execute,
    failing_after_go,
    iopub_until_idle,
    marker_cell,
    on_subshell,
    replies,
    reply_to,
    running,
    wait_for_file,
)


def blocking_cell(started: Path, release: Path) -> str:
    """Code that says it runs (``started``), then waits, interruptibly, for ``release``."""
    return marker_cell(
        started,
        f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\nprint('released')",
    )


def assert_subshell_answers_while_main_is_busy(kc, subshell_id: str, tmp_path: Path, x: int) -> float:
    """``x + 1`` on the subshell while the main shell is held by a cell; the seconds it took."""
    started, release = tmp_path / f"started-{x}", tmp_path / f"release-{x}"
    main = kc.execute(blocking_cell(started, release))
    wait_for_file(started)

    begun = time.monotonic()
    request = on_subshell(kc, subshell_id, "x + 1")
    reply = kc.get_shell_msg(timeout=30)
    took = time.monotonic() - begun
    assert reply["parent_header"]["msg_id"] == request, "the subshell answers first: the main cell waits for the test"
    assert reply["content"]["status"] == "ok", reply["content"]
    assert reply["parent_header"]["subshell_id"] == subshell_id
    outputs = iopub_until_idle(kc, request)
    [result] = [m for m in outputs if m["msg_type"] == "execute_result"]
    assert result["content"]["data"]["text/plain"] == str(x + 1)
    states = [m["content"]["execution_state"] for m in outputs if m["msg_type"] == "status"]
    assert states == ["busy", "idle"]
    assert all(m["parent_header"]["subshell_id"] == subshell_id for m in outputs)

    release.touch()
    assert reply_to(kc, main, timeout=30)["content"]["status"] == "ok"
    return took


@pytest.mark.timeout(180)
@pytest.mark.parametrize("restart", ["%restart", "%restart --cold", "death", "Restart button"])
@pytest.mark.parametrize("standby", [False, True], ids=["", "standby"])
def test_a_subshell_answers_while_the_main_shell_is_busy_before_and_after_a_restart(
    proxy_with, tmp_path, record_property, restart, standby
):
    options = ["--standby"] if standby else []
    provisioner = {} if restart == "Restart button" else None
    with proxy_with(*options, provisioner=provisioner) as (km, kc):
        subshell_id = create_subshell(kc)
        execute(kc, "x = 42")
        took = assert_subshell_answers_while_main_is_busy(kc, subshell_id, tmp_path, 42)
        # For the record (--junitxml): that the subshell answers first is what is asserted.
        record_property("subshell_reply_s", round(took, 4))

        if restart == "death":
            # The proxy restarts a kernel that died by itself: a rescue, not a %restart.
            reply, _ = execute(kc, "import os; os._exit(1)")
            assert reply["content"]["ename"] == "DeadKernelError"
        elif restart == "Restart button":
            # jupyter_client's restart_kernel, with the provisioner that keeps the proxy
            km.restart_kernel()
        else:
            reply, _ = execute(kc, restart)
            assert reply["content"]["status"] == "ok"
        assert control(kc, "list_subshell_request") == {"status": "ok", "subshell_id": [subshell_id]}
        execute(kc, "x = 7")
        took = assert_subshell_answers_while_main_is_busy(kc, subshell_id, tmp_path, 7)
        record_property("subshell_reply_after_restart_s", round(took, 4))


def test_a_deleted_subshell_is_gone_also_after_restart(proxy):
    _, kc = proxy
    kept, deleted, deleted_after_restart = (create_subshell(kc) for _ in range(3))
    assert control(kc, "delete_subshell_request", subshell_id=deleted) == {"status": "ok"}
    assert sorted(control(kc, "list_subshell_request")["subshell_id"]) == sorted([kept, deleted_after_restart])

    execute(kc, "%restart")
    assert control(kc, "delete_subshell_request", subshell_id=deleted_after_restart) == {"status": "ok"}
    assert control(kc, "list_subshell_request") == {"status": "ok", "subshell_id": [kept]}

    for gone in (deleted, deleted_after_restart):
        assert control(kc, "delete_subshell_request", subshell_id=gone)["status"] == "error"
        request = on_subshell(kc, gone, "1")
        reply = reply_to(kc, request)
        assert reply["content"]["status"] == "error"
        assert gone in reply["content"]["evalue"]


@pytest.mark.parametrize("kernel", ["direct", "proxied"])
def test_interrupt_stops_the_main_shells_cell_and_a_subshells_runs_on_as_in_the_kernel(specs, tmp_path, kernel):
    """ipykernel interrupts with SIGINT, which reaches only its main thread, not a subshell's."""
    with running(kernel) as (km, kc):
        subshell_id = create_subshell(kc)
        sub_started, sub_release = tmp_path / "sub-started", tmp_path / "sub-release"
        main_started = tmp_path / "main-started"
        on_sub = on_subshell(kc, subshell_id, blocking_cell(sub_started, sub_release))
        wait_for_file(sub_started)
        main = kc.execute(blocking_cell(main_started, tmp_path / "never"))
        wait_for_file(main_started)

        assert control(kc, "interrupt_request")["status"] == "ok"
        reply = reply_to(kc, main, timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        sub_release.touch()
        reply = reply_to(kc, on_sub, timeout=30)
        assert reply["content"]["status"] == "ok"
        assert execute(kc, "1")[0]["content"]["status"] == "ok"


@pytest.mark.parametrize("kernel", ["direct", "proxied"])
def test_an_error_on_a_subshell_aborts_its_queued_cells_not_the_main_shells(specs, kernel):
    """The failing cell waits for ``go``, set by a main shell cell sent after the queued one."""
    with running(kernel) as (_, kc):
        execute(kc, DEFINE_GO)
        subshell_id = create_subshell(kc)
        failing = on_subshell(kc, subshell_id, failing_after_go())
        queued = on_subshell(kc, subshell_id, "print('queued')")
        main, main_queued = kc.execute("go.set()"), kc.execute("print('main')")
        got = replies(kc, [failing, queued, main, main_queued])
        assert got[failing]["content"]["ename"] == "ZeroDivisionError"
        assert got[queued]["content"]["status"] == "aborted"
        assert got[main]["content"]["status"] == "ok"
        assert got[main_queued]["content"]["status"] == "ok"
        later = on_subshell(kc, subshell_id, "print('later')")
        assert reply_to(kc, later)["content"]["status"] == "ok"


def test_restart_on_a_subshell_is_a_usage_error_and_restarts_nothing(proxy):
    km, kc = proxy
    execute(kc, "x = 1")
    subshell_id = create_subshell(kc)
    request = on_subshell(kc, subshell_id, "%restart")
    reply = reply_to(kc, request)
    assert reply["content"]["ename"] == "UsageError"
    outputs = iopub_until_idle(kc, request)
    assert [m["content"]["execution_state"] for m in outputs if m["msg_type"] == "status"] == ["busy", "idle"]
    [stderr] = [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"]
    assert stderr.startswith("UsageError: %restart restarts the whole kernel")
    assert execute(kc, "x")[0]["content"]["status"] == "ok"


def test_a_subshell_of_a_kernel_that_is_not_running_says_so(proxy_with):
    """After too many deaths the proxy waits for %restart; a subshell's request is answered, not lost."""
    with proxy_with("--RescuePolicy.restart_limit=0") as (_, kc):
        subshell_id = create_subshell(kc)
        execute(kc, "import os; os._exit(1)")
        request = on_subshell(kc, subshell_id, "1")
        reply = reply_to(kc, request)
        assert reply["content"]["ename"] == "DeadKernelError"
        states = [m["content"]["execution_state"] for m in iopub_until_idle(kc, request) if m["msg_type"] == "status"]
        assert states == ["busy", "idle"]
