"""The proxy kernel as a client sees it, and what ``%restart`` does."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import socket

import psutil
import pytest
import zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.session import Session

from .helpers import (
    DEFINE_GO,
    create_subshell,
    execute,
    failing_after_go,
    inner_connection_file,
    inner_pid,
    iopub_until_idle,
    is_running,
    kernel_pid,
    on_subshell,
    replies,
    reply_to,
    running,
    send,
    stderr_of,
    stdout_of,
    wait_for_inner_count,
    wait_for_stream,
    wait_until,
)


def test_kernel_info_is_the_inner_kernels(proxy):
    km, kc = proxy
    proxied = kc.kernel_info(reply=True, timeout=10)["content"]
    inner = BlockingKernelClient(connection_file=inner_connection_file(km))
    inner.load_connection_file()
    inner.start_channels()
    try:
        own = inner.kernel_info(reply=True, timeout=10)["content"]
    finally:
        inner.stop_channels()
    for key in ("language_info", "help_links", "protocol_version", "implementation", "implementation_version"):
        assert proxied[key] == own[key]
    # IPython ends its banner with a tip it draws anew for every kernel_info.
    assert proxied["banner"].splitlines()[0] == own["banner"].splitlines()[0]
    # What the proxy forwards: the debugger, and subshells (see test_subshells).
    assert proxied["supported_features"] == own["supported_features"]
    assert "kernel subshells" in proxied["supported_features"]


def test_restart_gives_a_fresh_kernel_behind_the_same_client(proxy):
    km, kc = proxy
    execute(kc, "x = 42")
    before = inner_pid(km)

    reply, outputs = execute(kc, "%restart")

    assert reply["content"]["status"] == "ok"
    assert "Restarted the kernel in place in" in stdout_of(outputs)
    assert inner_pid(km) != before
    assert km.is_alive()
    reply, outputs = execute(kc, "x")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "NameError"
    assert reply["content"]["execution_count"] == 1, "execution counts start again at 1"


def test_the_restart_cell_sends_one_busy_and_one_idle_its_starting_status_has_no_parent(proxy):
    _, kc = proxy
    _, outputs = execute(kc, "%restart")
    states = [m["content"]["execution_state"] for m in outputs if m["msg_type"] == "status"]
    assert states == ["busy", "idle"]
    assert [m["msg_type"] for m in outputs if m["msg_type"] != "status"] == ["execute_input", "stream"]


def test_code_after_restart_runs_in_the_new_kernel(proxy):
    km, kc = proxy
    execute(kc, "x = 1")
    reply, outputs = execute(kc, "%restart\nimport os\nprint(os.getpid(), 'x' in globals())")
    assert reply["content"]["status"] == "ok"
    lines = stdout_of(outputs).splitlines()
    assert lines[0].startswith("Restarted the kernel in place")
    assert lines[1] == f"{inner_pid(km)} False"


def test_a_restart_is_logged_at_info_so_a_console_showing_stderr_prints_it_once(proxy_with, tmp_path):
    for level, logged in (("WARN", False), ("INFO", True)):
        log = tmp_path / f"{level}.log"
        with open(log, "wb") as stderr, proxy_with(f"--log-level={level}", stderr=stderr) as (_, kc):
            _, outputs = execute(kc, "%restart")
            assert stdout_of(outputs).startswith("Restarted the kernel in place in ")
        assert ("Restarted the kernel in place in " in log.read_text()) is logged, level


def test_restart_help_explains_and_restarts_nothing(proxy):
    km, kc = proxy
    before = inner_pid(km)
    for code in ("%restart --help", "%restart?"):
        reply, outputs = execute(kc, code)
        assert reply["content"]["status"] == "ok"
        assert "Restart the kernel behind this notebook in place" in stdout_of(outputs)
    assert inner_pid(km) == before


def test_restart_help_lists_info(proxy):
    _, kc = proxy
    _, outputs = execute(kc, "%restart --help")
    assert stdout_of(outputs).startswith("%restart [--cold] [--info] [--help]\n")
    assert "%restart --info says where the kernel runs" in stdout_of(outputs)


def test_restart_info_outside_slurm_names_the_host_and_restarts_nothing(proxy):
    km, kc = proxy
    before = inner_pid(km)
    reply, outputs = execute(kc, "%restart --info")
    assert reply["content"]["status"] == "ok"
    first, *rest = stdout_of(outputs).splitlines()
    assert first == f"The kernel runs on host {socket.gethostname()}"
    assert all(line.startswith("Memory: ") for line in rest), rest
    assert inner_pid(km) == before


def test_restart_with_an_unknown_option_is_an_error(proxy):
    _, kc = proxy
    reply, outputs = execute(kc, "%restart --sideways")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "UsageError"
    # As IPython shows a UsageError: one line on stderr, no traceback.
    assert stderr_of(outputs) == "UsageError: %restart takes no option '--sideways'; see %restart --help\n"
    assert len([m for m in outputs if m["msg_type"] == "stream"]) == 1
    assert not any(m["msg_type"] == "error" for m in outputs)


def test_when_restart_replies_the_old_kernel_and_every_process_it_started_are_gone(proxy):
    km, kc = proxy
    old = kernel_pid(kc)
    _, outputs = execute(kc, "import subprocess\nchild = subprocess.Popen(['sleep', '600'])\nprint(child.pid)")
    child = int(stdout_of(outputs))
    reply, _ = execute(kc, "%restart")
    assert reply["content"]["status"] == "ok"
    assert not is_running(old) and not is_running(child)
    assert kernel_pid(kc) == inner_pid(km) != old


def test_no_output_of_the_old_kernel_reaches_the_client_after_the_restart_message(proxy):
    _, kc = proxy
    ticking = kc.execute(
        "import threading, time\n"
        "def tick():\n"
        "    while True:\n"
        "        print('tick', flush=True)\n"
        "        time.sleep(0.001)\n"
        "threading.Thread(target=tick, daemon=True).start()"
    )
    wait_for_stream(kc, ticking, "tick")
    kc.execute("%restart")
    after = kc.execute("print('after')")
    seen = iopub_until_idle(kc, after, everything=True)
    texts = [m["content"]["text"] for m in seen if m["msg_type"] == "stream"]
    restarted = next(i for i, text in enumerate(texts) if text.startswith("Restarted the kernel in place"))
    assert not [text for text in texts[restarted:] if "tick" in text]
    assert texts[-1] == "after\n"


@pytest.mark.timeout(120)
def test_a_kernel_that_ignores_sigterm_and_hangs_on_its_way_out_is_replaced_all_the_same(proxy):
    km, kc = proxy
    old = kernel_pid(kc)
    execute(
        kc,
        "import atexit, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\natexit.register(time.sleep, 600)",
    )
    reply, outputs = execute(kc, "%restart", timeout=60)
    assert reply["content"]["status"] == "ok"
    assert stdout_of(outputs).startswith("Restarted the kernel in place in ")
    assert not is_running(old)
    assert kernel_pid(kc) == inner_pid(km) != old


def test_an_interrupt_during_a_restart_lets_it_finish_and_leaves_the_new_kernel_unharmed(proxy):
    _, kc = proxy
    old = kernel_pid(kc)
    restart = kc.execute("%restart")
    # The marker: the old kernel's priority drops as its shutdown begins (see inner.InnerKernel._yield_cpu).
    wait_until(lambda: not is_running(old) or psutil.Process(old).nice() == 19, "the restart to be under way")
    interrupt = send(kc, "control", "interrupt_request")
    assert reply_to(kc, interrupt, channel="control", timeout=30)["content"]["status"] == "ok"
    assert reply_to(kc, restart, timeout=60)["content"]["status"] == "ok"
    reply, outputs = execute(kc, "print('after')")
    assert reply["content"]["status"] == "ok"
    assert stdout_of(outputs) == "after\n"


def test_two_restarts_sent_at_once_restart_twice_and_leave_one_kernel(proxy):
    km, kc = proxy
    first, second = kc.execute("%restart"), kc.execute("%restart")
    for msg_id in (first, second):
        assert reply_to(kc, msg_id, timeout=60)["content"]["status"] == "ok"
        outputs = iopub_until_idle(kc, msg_id)
        assert stdout_of(outputs).startswith("Restarted the kernel in place in ")
    assert kernel_pid(kc) == inner_pid(km)


@pytest.mark.timeout(300)
def test_twenty_restarts_leave_no_extra_processes_or_open_files(proxy):
    km, kc = proxy
    proxy_process = psutil.Process(km.provisioner.pid)
    execute(kc, "%restart")
    execute(kc, "pass")
    files, children = proxy_process.num_fds(), len(proxy_process.children(recursive=True))
    for _ in range(20):
        reply, _ = execute(kc, "%restart")
        assert reply["content"]["status"] == "ok", reply["content"]
    assert len(proxy_process.children(recursive=True)) == children == 1
    # Closed zmq sockets linger a moment, and a loaded machine can leave a connection or two
    # of the client's being replaced; a leak of one file per restart would leave 20 open.
    wait_until(
        lambda: proxy_process.num_fds() <= files + 3,
        f"the proxy's open files back to about {files} (not one more per restart)",
        timeout=10,
    )
    reply, outputs = execute(kc, "print('still here')")
    assert stdout_of(outputs) == "still here\n"


@pytest.mark.timeout(120)
def test_malformed_and_wrongly_signed_messages_are_dropped_and_the_kernel_keeps_serving(proxy):
    km, kc = proxy
    rng = random.Random(4)
    key = km.session.key

    def signed(parts: list[bytes], good: bool = True) -> list[bytes]:
        mac = hmac.new(key if good else b"wrong", digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return [b"<IDS|MSG>", mac.hexdigest().encode(), *parts]

    def header(msg_type: str) -> bytes:
        return json.dumps(
            {
                "msg_id": str(rng.random()),
                "msg_type": msg_type,
                "session": "s",
                "username": "u",
                "date": "2026-01-01T00:00:00Z",
                "version": "5.3",
            }
        ).encode()

    bad_messages = [
        [b""],
        [rng.randbytes(rng.randrange(1, 64)) for _ in range(rng.randrange(1, 8))],
        signed([header("execute_request"), b"{}", b"{}", b'{"code": "1"}'], good=False),
        signed([b"not json", b"{}", b"{}", b"{}"]),
        signed([header("execute_request"), b"{}", b"{}", b"[1, 2]"]),
        signed([header("execute_request"), b"{}", b"{}", b"{}"]),
        signed([header("no_such_request"), b"{}", b"{}", b"{}"]),
        signed([header("complete_request"), b"{}", b"{}", b'{"code": 5}']),
        signed([header("comm_msg"), b"{}", b"{}", b'{"comm_id": null}']),
    ]
    bad_messages += [[rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 7))] for _ in range(200)]
    session = Session(key=key)
    context = zmq.Context()
    try:
        # stdin first: term() returns once its messages are delivered (stdin answers nothing to wait for).
        stdin_context = zmq.Context()
        try:
            socket = stdin_context.socket(zmq.DEALER)
            socket.linger = 10_000
            socket.connect(f"tcp://127.0.0.1:{km.stdin_port}")
            for frames in bad_messages:
                socket.send_multipart(frames)
            socket.close()
        finally:
            stdin_context.term()
        for channel in ("shell", "control"):
            socket = context.socket(zmq.DEALER)
            socket.linger = 0
            socket.connect(f"tcp://127.0.0.1:{getattr(km, channel + '_port')}")
            for frames in bad_messages:
                socket.send_multipart(frames)
            # The marker: a request after the bad ones on the same socket, answered in order after them.
            marker = session.send(socket, "kernel_info_request", {})["header"]["msg_id"]
            wait_until(lambda s=socket, m=marker: reply_on(session, s) == m, f"the {channel} marker's reply")
            socket.close()
    finally:
        context.term()
    reply, outputs = execute(kc, "print('still serving')")
    assert reply["content"]["status"] == "ok"
    assert stdout_of(outputs) == "still serving\n"
    assert kc.kernel_info(reply=True, timeout=10)["content"]["status"] == "ok"


def reply_on(session: Session, socket: zmq.Socket) -> str | None:
    """The msg_id that the next reply waiting on a raw ``socket`` answers, or None."""
    if not socket.poll(0):
        return None
    _, frames = session.feed_identities(socket.recv_multipart())
    return session.deserialize(frames)["parent_header"].get("msg_id")


@pytest.mark.timeout(120)
def test_with_standby_restart_swaps_to_the_spare_and_cold_starts_anew(proxy_with):
    with proxy_with("--standby") as (km, kc):
        execute(kc, "x = 1")
        current = kernel_pid(kc)
        spare = (wait_for_inner_count(km, 2) - {current}).pop()

        reply, outputs = execute(kc, "%restart\nprint('x' in globals())")
        assert stdout_of(outputs).startswith("Restarted the kernel in place in")
        assert stdout_of(outputs).endswith("False\n")
        assert kernel_pid(kc) == spare
        before_cold = wait_for_inner_count(km, 2)

        reply, outputs = execute(kc, "%restart --cold")
        assert reply["content"]["status"] == "ok"
        assert kernel_pid(kc) not in before_cold
        wait_for_inner_count(km, 2)
        km.shutdown_kernel()
        assert wait_for_inner_count(km, 0, 10) == set()


def test_the_inner_kernels_own_life_is_not_relayed(proxy):
    _, kc = proxy
    execute(kc, "pass")
    msg_id = kc.execute("%restart")
    reply_to(kc, msg_id, timeout=30)
    # The marker: a request after the restart; everything the restart caused is relayed before its idle.
    marker = kc.kernel_info()
    seen = iopub_until_idle(kc, marker, everything=True)
    seen = [m for m in seen if m["parent_header"].get("msg_id") != marker]
    summary = [(m["msg_type"], m["content"].get("execution_state"), m["parent_header"].get("msg_type")) for m in seen]
    assert not {"iopub_welcome", "shutdown_reply"} & {m["msg_type"] for m in seen}, summary
    starting = [m for m in seen if m["msg_type"] == "status" and m["content"]["execution_state"] == "starting"]
    assert len(starting) == 1 and starting[0]["parent_header"] == {}, summary
    # What the new kernel prints as it starts (debugpy's warnings, say) has no
    # parent, as from a kernel started directly; everything else is the cell's.
    startup_output = [m for m in seen if m["msg_type"] == "stream" and not m["parent_header"]]
    cells = [m for m in seen if m is not starting[0] and m not in startup_output]
    assert all(m["parent_header"].get("msg_id") == msg_id for m in cells), summary


@pytest.mark.parametrize("kernel", ["direct", "proxied"])
def test_a_failed_cell_aborts_the_cells_queued_behind_it_and_no_later_one(specs, kernel):
    """The failing cell waits for ``go``, set from a subshell by a request sent after the queued cell."""
    with running(kernel) as (_, kc):
        execute(kc, DEFINE_GO)
        subshell_id = create_subshell(kc)
        for _ in range(5):
            failing, queued = kc.execute(failing_after_go()), kc.execute("print('queued')")
            go = on_subshell(kc, subshell_id, "go.set()")
            got = replies(kc, [failing, queued, go])
            assert got[go]["content"]["status"] == "ok"
            assert got[failing]["content"]["ename"] == "ZeroDivisionError"
            assert got[queued]["content"]["status"] == "aborted"
            later = kc.execute("print('later')")
            assert reply_to(kc, later)["content"]["status"] == "ok"


def test_debug_logs_every_relayed_message_type_to_stderr(proxy_with, tmp_path):
    log = tmp_path / "kernel.log"
    with open(log, "wb") as stderr, proxy_with("--debug", graceful=True, stderr=stderr) as (_, kc):
        execute(kc, "print(1)")
    text = log.read_text()
    for line in ("-> inner shell execute_request", "<- inner iopub execute_input", "<- inner iopub stream"):
        assert line in text
