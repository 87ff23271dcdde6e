"""stdin, comms, interrupts and control work through the proxy as against the kernel."""

from __future__ import annotations

from pprint import pformat

import pytest
from jupyter_client.session import DELIM

from .helpers import (
    execute,
    inner_pid,
    iopub_until_idle,
    marker_cell,
    reply_to,
    running,
    send,
    stdout_of,
    wait_for_file,
)
from .test_subshells import blocking_cell, create_subshell, on_subshell

ECHO_TARGET = """
def _echo(comm, open_msg):
    comm.send({"opened": open_msg["content"]["data"]}, buffers=open_msg["buffers"])
    @comm.on_msg
    def _(msg):
        comm.send({"echo": msg["content"]["data"]}, buffers=msg["buffers"])
get_ipython().kernel.comm_manager.register_target("echo", _echo)
"""

RECORDING_TARGET = """
seen = []
def _record(comm, open_msg):
    comm.on_msg(lambda msg: seen.append(msg["content"]["data"]["n"]))
get_ipython().kernel.comm_manager.register_target("record", _record)
"""


def test_input_reaches_the_client_and_the_answer_the_kernel(proxy):
    _, kc = proxy
    msg_id = kc.execute("name = input('name? ')\nprint('hello', name)", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=10)
    assert request["msg_type"] == "input_request"
    assert request["content"]["prompt"] == "name? " and request["content"]["password"] is False
    assert request["parent_header"]["msg_id"] == msg_id
    kc.input("Ada")
    assert reply_to(kc, msg_id)["content"]["status"] == "ok"
    assert "hello Ada" in stdout_of(iopub_until_idle(kc, msg_id))


def test_getpass_asks_for_a_password(proxy):
    _, kc = proxy
    msg_id = kc.execute("import getpass\nsecret = getpass.getpass('pw: ')", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=10)
    assert request["content"]["password"] is True
    kc.input("s3cret")
    assert reply_to(kc, msg_id)["content"]["status"] == "ok"
    assert execute(kc, "secret")[0]["content"]["status"] == "ok"


def test_input_without_stdin_fails_as_it_does_directly(specs):
    code = "input('name? ')"
    with running("direct") as (_, kc):
        want = execute(kc, code, allow_stdin=False)[0]["content"]
    with running("proxied") as (_, kc):
        got = execute(kc, code, allow_stdin=False)[0]["content"]
    assert (got["status"], got["ename"], got["evalue"]) == (want["status"], want["ename"], want["evalue"])


def test_comms_go_both_ways_with_buffers(proxy):
    _, kc = proxy
    execute(kc, ECHO_TARGET)
    open_id = send(kc, "shell", "comm_open", {"comm_id": "c1", "target_name": "echo", "data": {"x": 1}}, [b"\x01"])
    opened = [m for m in iopub_until_idle(kc, open_id) if m["msg_type"] == "comm_msg"]
    assert opened[0]["content"]["data"] == {"opened": {"x": 1}}
    assert [bytes(b) for b in opened[0]["buffers"]] == [b"\x01"]

    msg_id = send(kc, "shell", "comm_msg", {"comm_id": "c1", "data": {"y": 2}}, [b"\x02\x03"])
    echoed = [m for m in iopub_until_idle(kc, msg_id) if m["msg_type"] == "comm_msg"]
    assert echoed[0]["content"]["data"] == {"echo": {"y": 2}}
    assert [bytes(b) for b in echoed[0]["buffers"]] == [b"\x02\x03"]

    info = reply_to(kc, send(kc, "shell", "comm_info_request", {"target_name": "echo"}))
    assert info["content"]["comms"] == {"c1": {"target_name": "echo"}}


def test_restart_closes_the_old_kernels_comms(proxy):
    _, kc = proxy
    execute(kc, "from comm import create_comm\nc = create_comm(target_name='w', comm_id='w1')")
    msg_id = kc.execute("%restart")
    closed = [m for m in iopub_until_idle(kc, msg_id, timeout=30) if m["msg_type"] == "comm_close"]
    assert [m["content"]["comm_id"] for m in closed] == ["w1"]
    info = reply_to(kc, send(kc, "shell", "comm_info_request", {}))
    assert info["content"]["comms"] == {}


def sleeping_cell(started) -> str:
    """A cell that says it runs by creating ``started``, then sleeps far longer than any test."""
    return marker_cell(started, "import time\ntime.sleep(600)")


@pytest.mark.parametrize("interrupt_mode", ["signal", "message"])
def test_interrupt_ends_a_sleeping_cell(proxy_with, tmp_path, interrupt_mode):
    """How fast is the benchmark's to say; here the cell, which would sleep ten minutes, ends."""
    with proxy_with(fields={"interrupt_mode": interrupt_mode}) as (km, kc):
        msg_id = kc.execute(sleeping_cell(tmp_path / "started"))
        wait_for_file(tmp_path / "started")
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert execute(kc, "print('after')")[0]["content"]["status"] == "ok"


def test_interrupt_request_on_shell_is_served_while_a_cell_runs(proxy, tmp_path):
    _, kc = proxy
    msg_id = kc.execute(sleeping_cell(tmp_path / "started"))
    wait_for_file(tmp_path / "started")
    interrupt_id = send(kc, "shell", "interrupt_request", {})
    assert reply_to(kc, interrupt_id, timeout=30)["content"]["status"] == "ok"
    assert reply_to(kc, msg_id, timeout=30)["content"]["ename"] == "KeyboardInterrupt"


def test_the_debugger_initializes_and_attaches_through_the_control_channel(proxy):
    _, kc = proxy
    assert "debugger" in kc.kernel_info(reply=True, timeout=10)["content"]["supported_features"]
    arguments = {
        "clientID": "test",
        "adapterID": "python",
        "pathFormat": "path",
        "linesStartAt1": True,
        "columnsStartAt1": True,
        "locale": "en",
    }
    events = []
    for seq, (command, args) in enumerate([("initialize", arguments), ("attach", {})], 1):
        msg_id = send(
            kc, "control", "debug_request", {"type": "request", "seq": seq, "command": command, "arguments": args}
        )
        reply = kc.get_control_msg(timeout=20)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["success"] is True and reply["content"]["command"] == command
        events += [m["content"]["event"] for m in iopub_until_idle(kc, msg_id) if m["msg_type"] == "debug_event"]
    assert {"initialized", "process", "thread"} <= set(events)


def test_usage_request_is_answered_by_the_inner_kernel(proxy):
    km, kc = proxy
    msg_id = send(kc, "control", "usage_request", {})
    reply = kc.get_control_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["pid"] == inner_pid(km)


def test_requests_sent_during_a_restart_are_answered_once_after_it(proxy):
    _, kc = proxy
    execute(kc, "pass")  # past any duplicate kernel_info reply of a slow start-up
    restart_id = kc.execute("%restart")
    ids = [kc.kernel_info(), kc.complete("pri"), kc.execute("print('after')")]
    control_id = send(kc, "control", "kernel_info_request", {})
    replies = [kc.get_shell_msg(timeout=30) for _ in range(4)]
    assert [r["parent_header"]["msg_id"] for r in replies] == [restart_id, *ids]
    assert kc.get_control_msg(timeout=10)["parent_header"]["msg_id"] == control_id
    assert "after" in stdout_of(iopub_until_idle(kc, ids[2]))
    # No second reply to any of them: the next reply is a later request's.
    marker = kc.kernel_info()
    assert kc.get_shell_msg(timeout=30)["parent_header"]["msg_id"] == marker


def test_a_burst_of_requests_gets_one_busy_and_one_idle_each_as_from_a_kernel(proxy):
    """What JupyterLab sends on connect: history, a widget comm, and comm_info, back to back."""
    _, kc = proxy
    execute(kc, ECHO_TARGET)
    ids = {
        "history": kc.history(hist_access_type="tail", n=10, output=False, raw=True),
        "comm_open": send(kc, "shell", "comm_open", {"comm_id": "b1", "target_name": "echo", "data": {}}),
        "comm_msg": send(kc, "shell", "comm_msg", {"comm_id": "b1", "data": {"ping": 1}}),
        "comm_info": send(kc, "shell", "comm_info_request", {}),
    }
    statuses = []
    while len([s for s in statuses if s[1] == "idle"]) < len(ids):
        msg = kc.get_iopub_msg(timeout=10)
        if msg["msg_type"] == "status":
            statuses.append((msg["parent_header"].get("msg_id"), msg["content"]["execution_state"]))
    assert statuses == [(msg_id, state) for msg_id in ids.values() for state in ("busy", "idle")]
    assert reply_to(kc, ids["history"])["msg_type"] == "history_reply"
    assert reply_to(kc, ids["comm_info"])["content"]["comms"] == {"b1": {"target_name": "echo"}}


def test_a_cell_sent_right_after_comm_messages_runs_after_them(proxy):
    """As a widget's changes reach a kernel before the next cell: the shell channel keeps its order."""
    _, kc = proxy
    execute(kc, RECORDING_TARGET)
    iopub_until_idle(kc, send(kc, "shell", "comm_open", {"comm_id": "r1", "target_name": "record", "data": {}}))
    for n in range(0, 60, 2):
        send(kc, "shell", "comm_msg", {"comm_id": "r1", "data": {"n": n}})
        send(kc, "shell", "comm_msg", {"comm_id": "r1", "data": {"n": n + 1}})
        _, outputs = execute(kc, "print(seen[-1])")
        assert stdout_of(outputs) == f"{n + 1}\n"


#: Cells sent on control: each sleeps, then says which it is; the first sleeps longest.
CONTROL_CELLS = [f"import time\ntime.sleep({s})\nprint({s})" for s in ("0.6", "0.3", "0.1")]


def control_cells_beside_a_running_cell(kernel: str, tmp_path, subshell: bool = False) -> list[tuple]:
    """Three cells sent on control while a cell runs on shell: what the client sees of them, in order.

    Each reply on control, and each iopub message up to the last one's idle,
    as (type, which request is its parent, content).
    """
    started, release = tmp_path / f"started-{kernel}", tmp_path / f"release-{kernel}"
    with running(kernel) as (_, kc):
        cell = blocking_cell(started, release)
        on_shell = on_subshell(kc, create_subshell(kc), cell) if subshell else kc.execute(cell)
        wait_for_file(started)
        ids = [send(kc, "control", "execute_request", {"code": code, "silent": False}) for code in CONTROL_CELLS]
        names = {on_shell: "the shell's cell", **{msg_id: f"control {n}" for n, msg_id in enumerate(ids)}}
        seen = [kc.get_control_msg(timeout=30) for _ in ids]
        seen += iopub_until_idle(kc, ids[-1], everything=True)
        release.touch()
        assert reply_to(kc, on_shell, timeout=30)["content"]["status"] == "ok"
    # The shell's cell names the kernel's own marker files.
    content = {on_shell: lambda m: m["content"].get("execution_state")}
    return [
        (m["msg_type"], names.get(parent, "other"), content.get(parent, lambda m: m["content"])(m))
        for m in seen
        for parent in [m["parent_header"].get("msg_id")]
    ]


@pytest.mark.parametrize("subshell", [False, True], ids=["main shell", "subshell"])
def test_cells_on_control_are_answered_there_in_order_beside_a_cell_running_on_shell(specs, tmp_path, subshell):
    """ipykernel serves any request on control, one at a time in arrival order: a cell's reply there, output on iopub."""
    direct, proxied = (
        control_cells_beside_a_running_cell(kernel, tmp_path, subshell) for kernel in ("direct", "proxied")
    )
    replies = [(kind, parent, content["status"]) for kind, parent, content in proxied[:3]]
    assert replies == [("execute_reply", f"control {n}", "ok") for n in range(3)]
    # The shell cell's own (None here): IPython may say there that the control cells' history moved.
    assert "".join(c["text"] for kind, _, c in proxied if kind == "stream" and c is not None) == "0.6\n0.3\n0.1\n"
    assert proxied == direct, pformat({"direct": direct, "proxied": proxied}, width=140)


@pytest.mark.parametrize(
    "msg_type, content",
    [
        ("complete_request", {"code": "impor", "cursor_pos": 5}),
        ("inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 0}),
        ("is_complete_request", {"code": "for i in x:"}),
        ("comm_info_request", {}),
        ("history_request", {"hist_access_type": "range", "session": 0, "start": 0, "output": False, "raw": True}),
    ],
)
def test_shell_requests_on_control_get_the_kernels_own_answers_there(specs, msg_type, content):
    answers = {}
    for kernel in ("direct", "proxied"):
        with running(kernel) as (_, kc):
            execute(kc, "x = 1")
            msg_id = send(kc, "control", msg_type, content)
            reply = reply_to(kc, msg_id, channel="control")
            answers[kernel] = (reply["msg_type"], reply["content"])
    assert answers["proxied"] == answers["direct"]


def test_a_control_request_the_kernel_does_not_answer_gets_an_error_reply_not_silence(proxy):
    """ipykernel logs an unknown control request and ends it without a reply; a client would wait forever."""
    _, kc = proxy
    msg_id = send(kc, "control", "no_such_request", {})
    reply = reply_to(kc, msg_id, channel="control")
    assert reply["msg_type"] == "no_such_reply"
    assert reply["content"]["status"] == "error" and "no_such_request" in reply["content"]["evalue"]
    assert kc.kernel_info(reply=True, timeout=10)["content"]["status"] == "ok"


def test_a_control_request_while_no_kernel_runs_gets_an_error_reply(proxy_with):
    with proxy_with("--RescuePolicy.restart_limit=0") as (_, kc):
        execute(kc, "import os; os._exit(1)")
        msg_id = send(kc, "control", "execute_request", {"code": "1"})
        reply = reply_to(kc, msg_id, channel="control")
        assert (reply["msg_type"], reply["content"]["ename"]) == ("execute_reply", "DeadKernelError")


def test_restart_on_control_is_a_usage_error_and_restarts_nothing(proxy):
    km, kc = proxy
    pid = inner_pid(km)
    msg_id = send(kc, "control", "execute_request", {"code": "%restart"})
    reply = reply_to(kc, msg_id, channel="control")
    assert reply["content"]["ename"] == "UsageError"
    assert inner_pid(km) == pid


@pytest.mark.parametrize("kernel", ["direct", "proxied"])
def test_a_control_request_whose_content_is_not_an_object_holds_up_no_later_one(specs, kernel):
    """ipykernel refuses it without a reply; the control channel goes on."""
    with running(kernel) as (_, kc):
        header, parent, metadata, _ = kc.session.serialize(kc.session.msg("execute_request", {}))[2:]
        parts = [header, parent, metadata, b"[1]"]
        kc.control_channel.socket.send_multipart([DELIM, kc.session.sign(parts), *parts])
        msg_id = send(kc, "control", "execute_request", {"code": "1 + 1"})
        reply = kc.get_control_msg(timeout=30)
        assert (reply["parent_header"]["msg_id"], reply["content"]["status"]) == (msg_id, "ok")
