"""Through the proxy a client receives exactly what the kernel sends directly."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from jupyter_client import BlockingKernelClient

from inplace_restarter.relay import MAX_ROUTES

from .helpers import (
    execute,
    inner_connection_file,
    iopub_until,
    iopub_until_idle,
    reply_to,
    running,
    send,
    stream_text,
)

#: Cells whose iopub output covers every output message type.
CORPUS = [
    "print('hello')",
    "import sys; print('oops', file=sys.stderr)",
    "from IPython.display import display, update_display\n"
    "display('first', display_id='d1')\nupdate_display('second', display_id='d1')",
    "from IPython.display import clear_output\nprint('a')\nclear_output(wait=True)\nprint('b')",
    "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'), metadata={'isolated': True})",
    "{'a': 1, 'b': [1, 2]}",
    "1 / 0",
    "from comm import create_comm\n"
    "c = create_comm(target_name='t', comm_id='c1', data={'a': 1}, buffers=[b'\\x00\\x01'])\n"
    "c.send({'b': 2}, buffers=[memoryview(b'abc')])\nc.close()",
    "for i in range(3): print(i, flush=True)",
    "",
]

VOLATILE_METADATA = {"started", "engine"}


def normalised(msg: dict) -> dict:
    """What a client can rely on: no ids, dates, sessions or the kernel's own uuid."""
    content = dict(msg["content"])
    if "engine_info" in content:
        content["engine_info"] = {k: v for k, v in content["engine_info"].items() if k != "engine_uuid"}
    return {
        "msg_type": msg["msg_type"],
        "content": content,
        "metadata": {k: v for k, v in msg["metadata"].items() if k not in VOLATILE_METADATA},
        "buffers": [bytes(b) for b in msg.get("buffers", [])],
        "parent_msg_type": msg["parent_header"].get("msg_type"),
    }


def transcript(kc) -> list:
    record = []
    for code in CORPUS:
        reply, outputs = execute(kc, code)
        record.append((code, normalised(reply), [normalised(m) for m in outputs]))
    reply, outputs = execute(kc, "x = 2", user_expressions={"y": "x * 2"}, silent=False)
    record.append(("user_expressions", normalised(reply), [normalised(m) for m in outputs]))
    reply, outputs = execute(kc, "print('quiet')", silent=True)
    record.append(("silent", normalised(reply), [normalised(m) for m in outputs]))
    return record


@pytest.mark.timeout(180)
def test_the_transcript_through_the_proxy_equals_the_direct_one(specs):
    with running("direct") as (_, kc):
        expected = transcript(kc)
    with running("proxied") as (_, kc):
        actual = transcript(kc)
    for (code, want_reply, want_outputs), (_, reply, outputs) in zip(expected, actual, strict=True):
        assert outputs == want_outputs, code
        assert reply == want_reply, code


def test_output_carries_the_clients_own_request_as_parent(proxy):
    _, kc = proxy
    execute(kc, "pass")  # past the kernel_info replies of start-up
    msg_id = kc.execute("print(1)")
    assert kc.get_shell_msg(timeout=10)["parent_header"]["msg_id"] == msg_id
    seen = iopub_until_idle(kc, msg_id, everything=True)
    assert [m["msg_type"] for m in seen] == ["status", "execute_input", "stream", "status"]
    assert all(m["parent_header"]["msg_id"] == msg_id for m in seen)
    assert all(m["header"]["session"] == seen[0]["header"]["session"] for m in seen), "one kernel session"


def messages_of(kc, code: str) -> list[dict]:
    """The reply and every iopub message of one cell, as the client received them."""
    msg_id = kc.execute(code)
    return [reply_to(kc, msg_id, timeout=30), *iopub_until_idle(kc, msg_id)]


SESSION_OF_KERNEL = "print(get_ipython().kernel.session.session)"


def test_the_client_sees_one_session_the_kernels_own_which_a_restart_changes(proxy):
    """JupyterLab drops what it is still handling of any session but the newest message's."""
    _, kc = proxy
    for _ in range(2):
        seen = messages_of(kc, SESSION_OF_KERNEL)
        kernel_session = next(m for m in seen if m["msg_type"] == "stream")["content"]["text"].strip()
        assert {m["header"]["session"] for m in seen} == {kernel_session}
        assert execute(kc, "%restart")[0]["content"]["status"] == "ok"
    assert execute(kc, SESSION_OF_KERNEL)[0]["header"]["session"] != kernel_session


def test_a_restart_cell_ends_in_the_new_kernels_session(proxy):
    _, kc = proxy
    seen = messages_of(kc, "%restart\n" + SESSION_OF_KERNEL)
    new_session = next(m for m in seen if m["msg_type"] == "stream" and "Restarted" not in m["content"]["text"])
    new_session = new_session["content"]["text"].strip()
    reply, *_, idle = seen
    assert reply["header"]["session"] == idle["header"]["session"] == new_session


def forgeries(release) -> str:
    """A cell that makes the inner kernel publish, before its real output, an idle for the cell and a
    comm_open that it did not sign, and a message whose parent is not JSON; then it prints "forged" and
    waits for ``release`` before it prints "after"."""
    return f"""
k = get_ipython().kernel
s = k.session
parent = s.pack(k.get_parent()["header"])
def unsigned(msg_type, content):
    return [msg_type.encode(), b"<IDS|MSG>", b"0" * 64, s.pack(s.msg_header(msg_type)), parent, b"{{}}", content]
k.iopub_socket.send_multipart(unsigned("status", b'{{"execution_state": "idle"}}'))
k.iopub_socket.send_multipart(unsigned("comm_open", b'{{"comm_id": "forged", "target_name": "t", "data": {{}}}}'))
k.iopub_socket.send_multipart([b"execute_input", b"<IDS|MSG>", b"", s.pack(s.msg_header("execute_input")), b"not json", b"{{}}", b"{{}}"])
print("forged", flush=True)
import os, time
while not os.path.exists({str(release)!r}):
    time.sleep(0.01)
print("after")
"""


def test_what_the_inner_kernel_did_not_sign_or_garbled_is_dropped_and_relaying_goes_on(proxy, tmp_path):
    _, kc = proxy
    msg_id = kc.execute(forgeries(tmp_path / "release"))
    # The marker: "forged" relayed means the proxy has read the forgeries before it; if it had taken
    # the forged idle for the cell's end, its idle would be out now, while the cell still runs.
    before = iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream" and "forged" in m["content"]["text"])
    (tmp_path / "release").touch()
    reply = reply_to(kc, msg_id, timeout=30)
    iopub = before + iopub_until_idle(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    assert [m["msg_type"] for m in iopub] == ["status", "execute_input", "stream", "stream", "status"], (
        "idle after the output"
    )
    assert stream_text(iopub, "stdout") == "forged\nafter\n"
    restart = messages_of(kc, "%restart")
    assert not [m for m in restart if m["msg_type"] == "comm_close"], "the forged comm was never taken as open"
    reply, outputs = execute(kc, "print('still relaying')")
    assert [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"] == ["still relaying\n"]


def test_completion_inspection_and_is_complete_come_from_the_inner_kernel(proxy):
    _, kc = proxy
    execute(kc, "import os")
    # The first completion imports and warms jedi: seconds on a loaded machine.
    matches = kc.complete("os.pa", reply=True, timeout=60)["content"]["matches"]
    assert "path" in matches
    inspected = kc.inspect("os.path.join", reply=True, timeout=30)["content"]
    assert inspected["found"] and "join" in inspected["data"]["text/plain"]
    assert reply_to(kc, kc.is_complete("for i in x:"))["content"]["status"] == "incomplete"
    history = kc.history(hist_access_type="tail", n=5, reply=True, timeout=10)["content"]
    assert history["status"] == "ok" and any("import os" in h[2] for h in history["history"])


#: What the kernel knows of whom it serves, read by a cell's user expressions.
WHO = {
    "shell": "get_ipython().kernel._parent_ident['shell']",
    "control": "get_ipython().kernel._parent_ident['control']",
    "session": "get_ipython().kernel.get_parent()['header']['session']",
}


def who_asks(kc, channel: str) -> tuple[str, str]:
    """The identity the kernel sees for a cell ``kc`` sends on ``channel``, and the session of its parent."""
    expressions = {"ident": WHO[channel], "session": WHO["session"]}
    msg_id = send(kc, channel, "execute_request", {"code": "", "silent": True, "user_expressions": expressions})
    found = reply_to(kc, msg_id, channel=channel)["content"]["user_expressions"]
    return found["ident"]["data"]["text/plain"], found["session"]["data"]["text/plain"]


def connected(km) -> BlockingKernelClient:
    """Another client of ``km``'s kernel, with a session (and so a zmq identity) of its own, as a second frontend."""
    kc = BlockingKernelClient()
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    return kc


@pytest.mark.parametrize("kernel", ["direct", "proxied"])
def test_the_kernel_sees_each_of_two_clients_as_itself_on_shell_and_control(specs, kernel):
    """ipykernel keeps the asking client's zmq identity (``_parent_ident``), which code may route by."""
    with running(kernel) as (km, first):
        second = connected(km)
        try:
            rounds = 2 if kernel == "proxied" else 1
            for _ in range(rounds):
                for kc in (first, second, first):
                    own = (repr([kc.session.bsession]), repr(kc.session.session))
                    assert who_asks(kc, "shell") == own
                    assert who_asks(kc, "control") == own
                if kernel == "proxied":
                    assert execute(second, "%restart", timeout=60)[0]["content"]["status"] == "ok"
        finally:
            second.stop_channels()


@pytest.mark.parametrize("kernel", ["direct", "proxied"])
def test_input_goes_to_the_client_whose_cell_asks_for_it(specs, kernel):
    with running(kernel) as (km, first):
        second = connected(km)
        try:
            for asking, other in ((second, first), (first, second)):
                msg_id = asking.execute("print('hello', input('who? '))", allow_stdin=True)
                request = asking.get_stdin_msg(timeout=10)
                assert request["parent_header"]["msg_id"] == msg_id
                asking.input("me")
                assert reply_to(asking, msg_id)["content"]["status"] == "ok"
                assert stream_text(iopub_until_idle(asking, msg_id), "stdout") == "hello me\n"
                assert not other.stdin_channel.msg_ready(), "the other client was not asked"
        finally:
            second.stop_channels()


def test_the_sockets_kept_for_clients_that_came_and_went_are_bounded(proxy):
    """Each client gets sockets of its own to the inner kernel; those of clients long gone are closed."""
    km, _ = proxy
    shell_port = json.loads(Path(inner_connection_file(km)).read_text())["shell_port"]
    for _ in range(MAX_ROUTES + 8):
        kc = connected(km)
        try:
            assert reply_to(kc, kc.is_complete("pri"), timeout=30)["content"]["status"] == "complete"
        finally:
            kc.stop_channels()
    to_shell = [
        c
        for c in psutil.Process(km.provisioner.pid).net_connections("tcp")
        if c.raddr and c.raddr.port == shell_port and c.status == psutil.CONN_ESTABLISHED
    ]
    # The proxy's own socket, and those of at most MAX_ROUTES clients.
    assert MAX_ROUTES // 2 < len(to_shell) <= MAX_ROUTES + 1
