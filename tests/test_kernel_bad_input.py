"""Malformed input: the proxy refuses what the kernel used directly refuses, the same way, and goes on.

Each case sends one bad message (or ``%restart`` line) on shell to the kernel
used directly and to the proxied one, idle and while a cell runs, then an
``is_complete_request`` as a marker: the kernel handles shell messages in
order, so everything the bad message caused has arrived once the marker is
answered and idle.  What the two kernels sent for the bad message must be the same,
and both must still run a cell afterwards.  The two kernels serve every case in
turn, as one kernel meets one bad message after another.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from pprint import pformat

import pytest
import zmq
from jupyter_client.session import DELIM, Session

from .helpers import private_jupyter_dirs, running
from .spec_helpers import write_direct_and_proxied

Frames = list[bytes]


class RawClient:
    """Raw shell and iopub sockets to a kernel, to send what jupyter_client would never build."""

    def __init__(self, km):
        info = km.get_connection_info(session=False)
        self.session = Session(key=info["key"], signature_scheme=info["signature_scheme"])
        self.context = zmq.Context()
        self.shell = self.context.socket(zmq.DEALER)
        self.shell.connect(f"tcp://{info['ip']}:{info['shell_port']}")
        self.iopub = self.context.socket(zmq.SUB)
        self.iopub.subscribe(b"")
        self.iopub.connect(f"tcp://{info['ip']}:{info['iopub_port']}")
        self._wait_subscribed()

    def close(self) -> None:
        self.context.destroy(linger=0)

    def request(self, msg_type: str, content: dict) -> dict:
        msg = self.session.msg(msg_type, content)
        self.shell.send_multipart(self.session.serialize(msg))
        return msg

    def signed(self, header: bytes, parent: bytes, metadata: bytes, content: bytes) -> Frames:
        parts = [header, parent, metadata, content]
        return [DELIM, self.session.sign(parts), *parts]

    def frames(self, msg_type: str = "execute_request", content: dict | None = None, **header: object) -> Frames:
        """A well-signed message's frames, its header fields overridden by ``header``."""
        msg = self.session.msg(msg_type, {"code": "1", "silent": False} if content is None else content)
        msg["header"].update(header)
        return self.session.serialize(msg)

    def read(self, socket: zmq.Socket, deadline: float) -> dict | None:
        if not socket.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            return None
        _, frames = self.session.feed_identities(socket.recv_multipart())
        return self.session.deserialize(frames)

    def _wait_subscribed(self) -> None:
        """Ask kernel_info until iopub shows its status: no later output is lost to the slow joiner."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.request("kernel_info_request", {})
            msg = self.read(self.iopub, time.monotonic() + 0.5)
            if msg is not None:
                while self.read(self.iopub, time.monotonic() + 0.2) is not None:
                    pass
                while self.read(self.shell, time.monotonic() + 0.2) is not None:
                    pass
                return
        raise TimeoutError("iopub never delivered a message")

    def until_idle(self, msg_id: str, what: str, timeout: float = 30) -> tuple[list[dict], list[dict]]:
        """Shell replies and iopub messages until ``msg_id`` is answered and idle."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        replies, outputs, replied, idle = [], [], False, False
        while not (replied and idle):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no reply and idle for {what} within {timeout} s"
            for socket, _ in poller.poll(remaining * 1000):
                msg = self.read(socket, deadline)
                is_answer = msg["parent_header"].get("msg_id") == msg_id
                if socket is self.shell:
                    replies.append(msg)
                    replied |= is_answer
                else:
                    outputs.append(msg)
                    idle |= is_answer and msg["content"].get("execution_state") == "idle"
        return replies, outputs


def summary(msg: dict) -> tuple:
    """What a client acts on in a message: its type, and its status, state or error name."""
    content = msg["content"]
    return (msg["msg_type"], content.get("status") or content.get("execution_state"), content.get("ename"))


def replayed(client: RawClient) -> Frames:
    """A valid message sent and answered before: its signature is spent."""
    frames = client.frames(content={"code": "replayed = 1", "silent": False})
    client.shell.send_multipart(frames)
    msg_id = json.loads(frames[2])["msg_id"]
    client.until_idle(msg_id, "the message to replay")
    return frames


def execute(code: str) -> Callable[[RawClient], Frames]:
    return lambda c: c.frames(content={"code": code, "silent": False})


CASES: dict[str, Callable[[RawClient], Frames]] = {
    "header not JSON": lambda c: c.signed(b"{", *c.frames()[3:]),
    "parent header not JSON": lambda c: c.signed(c.frames()[2], b"{", *c.frames()[4:]),
    "metadata not JSON": lambda c: c.signed(*c.frames()[2:4], b"{", c.frames()[5]),
    "content not JSON": lambda c: c.signed(*c.frames()[2:5], b"{"),
    "header null": lambda c: c.signed(b"null", *c.frames()[3:]),
    "metadata null": lambda c: c.signed(*c.frames()[2:4], b"null", c.frames()[5]),
    "content null": lambda c: c.signed(*c.frames()[2:5], b"null"),
    "msg_type a number": lambda c: c.frames(msg_type=42),
    "msg_type unknown": lambda c: c.frames("bogus_request", {}),
    "code a number": lambda c: c.frames(content={"code": 42}),
    "code missing": lambda c: c.frames(content={}),
    "user_expressions a list": lambda c: c.frames(content={"code": "1", "user_expressions": []}),
    "comm_msg content null": lambda c: c.signed(*c.frames("comm_msg", {})[2:5], b"null"),
    "comm_open without comm_id": lambda c: c.frames("comm_open", {"target_name": "t", "data": {}}),
    "signature missing": lambda c: [DELIM, b"", *c.frames()[2:]],
    "signature wrong": lambda c: [DELIM, b"0" * 64, *c.frames()[2:]],
    "signature replayed": replayed,
    "frames missing": lambda c: c.frames()[:3],
    "no delimiter": lambda c: c.frames()[2:],
    "%restart 'x": execute("%restart 'x"),
    '%restart "': execute('%restart "\nprint(1)'),
    "%restart --bogus": execute("%restart --bogus"),
}


def transcript(km, name: str, case: Callable[[RawClient], Frames], busy: bool, tmp_path: Path) -> list[tuple]:
    """What the kernel sent because of the bad message; asserts it still runs a cell afterwards."""
    client = RawClient(km)
    try:
        bad = case(client)
        ignored = set()
        if busy:
            go = tmp_path / f"go-{uuid.uuid4().hex}"
            cell = client.request(
                "execute_request",
                {"code": f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.005)", "silent": False},
            )
            ignored.add(cell["header"]["msg_id"])
            outputs: list[dict] = []
            while not any(m["content"].get("execution_state") == "busy" for m in outputs):
                msg = client.read(client.iopub, time.monotonic() + 10)
                assert msg is not None, "the blocking cell never started"
                outputs.append(msg)
        client.shell.send_multipart(bad)
        marker = client.request("is_complete_request", {"code": "1"})
        ignored.add(marker["header"]["msg_id"])
        if busy:
            go.touch()
        replies, outputs = client.until_idle(marker["header"]["msg_id"], f"{name}: the marker after it")
        after = client.request("execute_request", {"code": "40 + 2", "silent": False})
        answer, results = client.until_idle(after["header"]["msg_id"], f"{name}: the cell after it")
        assert [
            r["content"]["status"] for r in answer if r["parent_header"].get("msg_id") == after["header"]["msg_id"]
        ] == ["ok"]
        assert any(m["msg_type"] == "execute_result" and m["content"]["data"]["text/plain"] == "42" for m in results)
        return [summary(m) for m in replies + outputs if m["parent_header"].get("msg_id") not in ignored]
    finally:
        client.close()


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """The kernel used directly and the proxied one, started once for all cases, in Jupyter folders of their own."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        dirs = private_jupyter_dirs(tmp_path_factory.mktemp("jupyter"), monkeypatch)
        write_direct_and_proxied(dirs["JUPYTER_PATH"] / "kernels")
        with running("direct") as (direct_km, _), running("proxied") as (proxied_km, _):
            yield direct_km, proxied_km


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_bad_input_is_refused_as_the_kernel_used_directly_refuses_it_and_the_kernel_goes_on(
    kernels, name, busy, tmp_path
):
    direct, proxied = (transcript(km, name, CASES[name], busy, tmp_path) for km in kernels)
    if name.startswith("%restart"):
        # The kernel used directly has no %restart: both fail the cell with UsageError.
        direct = [s for s in direct if s[0] not in ("stream", "execute_input")]
        proxied = [s for s in proxied if s[0] not in ("stream", "execute_input")]
        assert ("execute_reply", "error", "UsageError") in proxied, name
    assert direct == proxied, pformat({"direct": direct, "proxied": proxied}, width=140)
