"""The proxy's parts without the proxy: an iopub relay on a loopback socket, a client subscribed to it, real kernels.

For the unit tests of the relay, the iopub relay and the restart object:
everything is real (zmq sockets, jupyter_client Sessions, ipykernels started
by InnerKernels), only the proxy's kernel class is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing as t
from collections.abc import AsyncIterator

import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.session import Session

from inplace_restarter.inner import InnerKernels
from inplace_restarter.iopub import IOPubRelay

from .spec_helpers import IPYKERNEL_ARGV

LOG = logging.getLogger("relay-harness")


class Subscriber:
    """The client's iopub: a SUB socket on the relay's XPUB, read with the client's Session."""

    def __init__(self, context: zmq.Context, url: str, session: Session):
        self.session = session
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.subscribe(b"")
        self.socket.connect(url)

    def frames(self, timeout: float = 10) -> list[bytes]:
        """The next message as it came, frame by frame; fails after ``timeout``."""
        assert self.socket.poll(int(timeout * 1000)), f"nothing on iopub within {timeout} s"
        return self.socket.recv_multipart()

    def message(self, timeout: float = 10) -> dict:
        _, frames = self.session.feed_identities(self.frames(timeout))
        return self.session.deserialize(frames)

    def until(self, done: t.Callable[[dict], bool], timeout: float = 30) -> list[dict]:
        """Messages up to and including the first for which ``done`` is true."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            seen.append(self.message(max(0.01, deadline - time.monotonic())))
            if done(seen[-1]):
                return seen

    async def until_async(self, done: t.Callable[[dict], bool], timeout: float = 30) -> list[dict]:
        """``until`` without blocking the event loop the relay's callbacks run on."""
        return await asyncio.get_running_loop().run_in_executor(None, self.until, done, timeout)

    def close(self) -> None:
        self.socket.close(linger=0)


def idle_of(msg_id: str) -> t.Callable[[dict], bool]:
    return lambda m: (
        m["msg_type"] == "status"
        and m["content"]["execution_state"] == "idle"
        and m["parent_header"].get("msg_id") == msg_id
    )


class Harness:
    """A client Session, the iopub relay and a subscriber to it, and the inner kernels of one spec."""

    def __init__(self, spec: KernelSpec):
        self.context = zmq.Context.instance()
        self.session = Session(key=b"unit-test-key", signature_scheme="hmac-sha256")
        xpub = self.context.socket(zmq.XPUB)
        port = xpub.bind_to_random_port("tcp://127.0.0.1")
        self.iopub = IOPubRelay(xpub, self.session, self.context)
        self.iopub.start()
        self.client = Subscriber(self.context, f"tcp://127.0.0.1:{port}", self.session)
        welcome = self.client.message()
        assert welcome["msg_type"] == "iopub_welcome"
        #: input_requests the kernels sent, with the pending request they belong to
        self.input_requests: list[tuple[dict, t.Any]] = []
        self.kernels = InnerKernels(spec, self.session, self.iopub, self._on_input_request, log=LOG)

    def _on_input_request(self, msg: dict, pending: t.Any) -> None:
        self.input_requests.append((msg, pending))

    def request(self, msg_type: str, content: dict, **header: t.Any) -> dict:
        """A request as the client would send it."""
        msg = self.session.msg(msg_type, content)
        msg["header"].update(header)
        return msg

    async def sent_so_far(self) -> list[dict]:
        """What has reached the client, up to a marker of the proxy's own sent now; startup output (no parent) left out.

        The iopub relay sends the proxy's own messages after all it relayed before them.
        """
        self.iopub.send_multipart(self.session.serialize(self.session.msg("status", {"execution_state": "marker"})))
        seen = await self.client.until_async(lambda m: m["content"].get("execution_state") == "marker")
        return [m for m in seen[:-1] if m["parent_header"]]

    @property
    def inner(self):
        """The current inner kernel."""
        return self.kernels.current

    def close(self) -> None:
        self.client.close()
        self.iopub.stop()
        self.iopub.socket.close(linger=0)


def ipykernel_spec(argv: list[str] = IPYKERNEL_ARGV) -> KernelSpec:
    return KernelSpec(argv=list(argv), display_name="Python", language="python")


@contextlib.asynccontextmanager
async def harness(spec: KernelSpec | None = None, serving: bool = True) -> AsyncIterator[Harness]:
    """A Harness (``serving``: with its first kernel started and current) whose kernels all stop afterwards."""
    made = Harness(spec or ipykernel_spec())
    try:
        if serving:
            made.kernels.use(await made.kernels.start())
        yield made
    finally:
        try:
            await made.kernels.shutdown()
        finally:
            made.kernels.kill_all()
            made.close()
