"""The messages between the client and one inner kernel.

Requests are forwarded with the client's own header, so the inner kernel's
replies and iopub output already carry the client's request as parent.  The
inner kernel signs with the client's key, and the proxy takes on its session
id, so iopub output goes to the client frame for frame as the kernel sent it.
Content is never decoded on the way out, except for the few messages whose
meaning the proxy needs (status, and comm_open/comm_close to know which comms
to close on restart).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import typing as t
from dataclasses import dataclass, field
from hmac import compare_digest

import zmq
from jupyter_client.session import DELIM, Session
from zmq.eventloop.zmqstream import ZMQStream

if t.TYPE_CHECKING:
    from jupyter_client.blocking import BlockingKernelClient

    from .kernel import ProxyKernel

#: iopub messages that belong to the inner kernel's own life, not to a request.
NOT_RELAYED = frozenset({"status", "iopub_welcome", "shutdown_reply"})
#: iopub messages dropped for requests that asked for it.
SKIPPABLE = frozenset({"execute_input"})
#: iopub messages relayed and also read, to know which comms to close on restart.
TRACKED = frozenset({"comm_open", "comm_close"})


class InnerKernelDied(Exception):
    """The inner kernel exited while a request was pending."""

    def __init__(self, returncode: int | None):
        self.returncode = returncode
        super().__init__(describe_exit(returncode))


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "The kernel died"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"The kernel died of {name}"
    return f"The kernel exited with code {returncode}"


_SNDMORE = int(zmq.SNDMORE)


def send_frames(socket: zmq.Socket, frames: list, copy: bool = True) -> None:
    """``socket.send_multipart``, without its enum arithmetic on every frame.

    pyzmq computes ``zmq.SNDMORE | flags`` per frame, which builds an IntFlag
    member each time: a tenth of the proxy's CPU on the relay path.
    """
    for frame in frames[:-1]:
        socket.send(frame, _SNDMORE, copy=copy)
    socket.send(frames[-1], 0, copy=copy)


def delimiter(frames: list) -> int:
    """The index of the frame that ends the identities (or topic) of a raw message."""
    return next(i for i, frame in enumerate(frames) if frame.bytes == DELIM)


def verified(session: Session, frames: list) -> tuple[list[bytes], str, list, list]:
    """Split a raw message (of zmq Frames) and check its signature.

    Returns the identities (or topic), the message type, [header, parent,
    metadata, content] (content as the received frame) and the buffers.
    """
    delim = delimiter(frames)
    idents = [frame.bytes for frame in frames[:delim]]
    signature = frames[delim + 1].bytes
    header, parent, metadata = (frame.bytes for frame in frames[delim + 2 : delim + 5])
    content = frames[delim + 5]
    parts = [header, parent, metadata, content.buffer]
    if session.auth is not None and not compare_digest(signature, session.sign(parts)):
        raise ValueError("invalid signature")
    parts[3] = content
    return idents, json.loads(header)["msg_type"], parts, frames[delim + 6 :]


def decoded(session: Session, frames: list) -> tuple[list[bytes], dict]:
    """The identities and the verified message as a dict, its dates left as the strings they came as.

    Unlike ``Session.deserialize`` this does not record the signature
    against replays, so the same message can be read again by ipykernel.
    """
    idents, _, parts, buffers = verified(session, frames)
    return idents, unpacked(parts, buffers)


def unpacked(parts: list, buffers: list) -> dict:
    """The message of ``verified``'s parts and buffers, as a dict."""
    header, parent, metadata, content = (json.loads(part if isinstance(part, bytes) else part.bytes) for part in parts)
    return {"header": header, "parent_header": parent, "metadata": metadata, "content": content, "buffers": buffers}


@dataclass
class Pending:
    """A forwarded request, until its reply and its idle status are back."""

    parent: dict
    ident: list
    reply: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    idle: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    skip_execute_input: bool = False
    #: the client gets the inner kernel's busy and idle for it, not the proxy's
    relay_status: bool = False
    #: with relay_status: the inner kernel's busy has gone to the client
    busy_relayed: bool = False

    @property
    def has_reply(self) -> bool:
        """Comm messages have none."""
        return self.parent["header"]["msg_type"].endswith("_request")


class Relay:
    """Forwards requests to one inner kernel and relays what it sends back."""

    def __init__(
        self,
        client: BlockingKernelClient,
        proxy: ProxyKernel,
        exited: asyncio.Future,
        log: logging.Logger,
    ):
        self.client = client
        self.session: Session = client.session
        self.proxy = proxy
        self.exited = exited
        self.log = log
        self.pending: dict[str, Pending] = {}
        #: comm_id -> target_name of the comms open in this inner kernel
        self.comms: dict[str, str] = {}
        self._input_request: dict | None = None
        #: msg_id -> the client's header, of requests forwarded under another subshell id
        self._renamed: dict[str, dict] = {}
        self._subscribed = asyncio.Event()
        self._closed = False
        exited.add_done_callback(self._abandon)
        # Callbacks on the event loop, not awaited receives: a future per
        # message was a sixth of the proxy's CPU on the relay path.
        self._streams = []
        for channel, handler in (
            (client.iopub_channel, self._on_iopub),
            (client.shell_channel, self._on_reply),
            (client.control_channel, self._on_reply),
            (client.stdin_channel, self._on_stdin),
        ):
            stream = ZMQStream(channel.socket)
            stream.on_recv(handler, copy=False)
            self._streams.append(stream)

    # -- requests -------------------------------------------------------------

    def send(
        self,
        parent: dict,
        ident: list,
        channel: str = "shell",
        content: dict | None = None,
        skip_execute_input: bool = False,
        relay_status: bool = False,
        subshell_id: str | None = None,
    ) -> Pending:
        """Forward the client's request ``parent`` to the inner kernel as it is.

        ``content`` replaces the request's content (``%restart`` forwards the
        rest of its cell); ``skip_execute_input`` drops the inner kernel's
        echo of it, when the proxy has already published one; with
        ``relay_status`` the inner kernel's busy and idle for it are relayed,
        and it is forgotten at its idle (a request with a reply once it is
        settled); ``subshell_id`` is the inner kernel's id of the client's
        subshell, which the client sees back in the parent of what it causes.
        """
        header = parent["header"]
        pending = Pending(parent, ident, skip_execute_input=skip_execute_input, relay_status=relay_status)
        self.pending[header["msg_id"]] = pending
        if subshell_id is not None and subshell_id != header.get("subshell_id"):
            self._renamed[header["msg_id"]] = header
            header = {**header, "subshell_id": subshell_id}
        msg = self.session.msg(
            header["msg_type"],
            content=parent["content"] if content is None else content,
            parent=parent.get("parent_header") or {},
            header=header,
            metadata=parent.get("metadata") or {},
        )
        socket = getattr(self.client, f"{channel}_channel").socket
        send_frames(socket, [*self.session.serialize(msg), *(parent.get("buffers") or ())], copy=False)
        if self.proxy.log.isEnabledFor(logging.DEBUG):
            self.log.debug("-> inner %s %s", channel, header["msg_type"])
        return pending

    async def request(
        self,
        parent: dict,
        ident: list,
        channel: str = "shell",
        wait_idle: bool = True,
        **options: t.Any,
    ) -> dict:
        """Forward a request and return the inner kernel's reply message.

        Returns once the reply is in and, with ``wait_idle``, all the output
        the request caused has been relayed, so the proxy's own idle status
        comes last, as a kernel's does.  Without, the caller owes a
        :meth:`settle` once it has answered the client.
        """
        msg_id = parent["header"]["msg_id"]
        # A request the proxy forwarded as it arrived is pending already.
        pending = self.pending.get(msg_id) or self.send(parent, ident, channel, **options)
        try:
            await self._until(pending.reply)
        except BaseException:
            self.pending.pop(msg_id, None)
            raise
        if wait_idle:
            await self.settle(msg_id)
        return pending.reply.result()

    async def settle(self, msg_id: str) -> None:
        """Wait until all the output of request ``msg_id`` has been relayed."""
        pending = self.pending.get(msg_id)
        if pending is None:
            return
        try:
            await self._until(pending.idle)
        finally:
            self.pending.pop(msg_id, None)

    async def _until(self, future: asyncio.Future) -> None:
        """Wait for ``future`` unless the inner kernel dies (or the relay closes) first.

        Both cancel every pending future, so a wait costs one await.
        """
        try:
            if self._gone and not future.done():
                future.cancel()
            await future
        except asyncio.CancelledError:
            if self._gone and future.cancelled():
                raise InnerKernelDied(self.exited.result() if self.exited.done() else None) from None
            raise

    @property
    def _gone(self) -> bool:
        return self._closed or self.exited.done()

    def _abandon(self, *_: t.Any) -> None:
        """The inner kernel is gone: no reply or idle will come."""
        for pending in self.pending.values():
            for future in (pending.reply, pending.idle):
                future.cancel()

    async def wait_ready(self, timeout: float) -> dict:
        """Ask kernel_info until the reply (returned) is in and iopub is known to be subscribed.

        Any iopub message proves the subscription (ipykernel 7 greets each
        subscriber with ``iopub_welcome``; older kernels' status of the request
        will do), so no output of the first real request can be lost to zmq's
        slow-joiner window.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        subscribed = asyncio.ensure_future(self._subscribed.wait())
        while True:
            msg = self.session.msg("kernel_info_request", {})
            pending = self.send(msg, [])
            try:
                await asyncio.wait_for(self._until(pending.reply), max(0.1, min(2.0, deadline - loop.time())))
                await asyncio.wait_for(asyncio.shield(subscribed), 0.2)
                return pending.reply.result()
            except asyncio.TimeoutError:
                if loop.time() > deadline:
                    subscribed.cancel()
                    raise TimeoutError(f"the kernel did not answer kernel_info within {timeout:g} s") from None
            except BaseException:
                subscribed.cancel()
                raise
            finally:
                self.pending.pop(msg["header"]["msg_id"], None)

    # -- what the inner kernel sends ------------------------------------------

    def _answer(self, frames: list, channel: str) -> tuple[dict, Pending | None] | None:
        """A verified message from the inner kernel and the pending request it answers.

        None (and a warning) for a malformed message.
        """
        try:
            msg = decoded(self.session, frames)[1]
        except Exception:
            self.log.warning("Dropped a malformed %s message from the inner kernel", channel, exc_info=True)
            return None
        return msg, self.pending.get(msg["parent_header"].get("msg_id"))

    def _on_reply(self, frames: list) -> None:
        answer = self._answer(frames, "shell or control")
        if answer is None:
            return
        msg, pending = answer
        if pending is not None and not pending.reply.done():
            pending.reply.set_result(msg)

    def _on_iopub(self, frames: list) -> None:
        """Relay iopub frames to the client as they came, signature and all.

        The inner kernel signs with the client's key, and the proxy speaks
        with the inner kernel's session id, so output needs no re-signing:
        the client checks it as it would the kernel's own.  Output is the bulk
        of what a kernel sends; the proxy reads only its header, and checks
        the signature only of what it acts on (status, comm_open/comm_close).
        """
        try:
            msg_type = self._take_iopub(frames)
        except Exception:
            self.log.warning("Dropped a malformed iopub message from the inner kernel", exc_info=True)
            return
        if msg_type is None:
            return
        if self.proxy.log.isEnabledFor(logging.DEBUG):
            self.log.debug("<- inner iopub %s", msg_type)
        if self._renamed:
            frames = self._restore_parent(frames)
        self.proxy.iopub_socket.send_multipart(frames, copy=False)

    def _restore_parent(self, frames: list) -> list:
        """The client's own request as parent of what a request forwarded under another subshell id caused."""
        delim = delimiter(frames)
        header = self._renamed.get(json.loads(frames[delim + 3].bytes).get("msg_id"))
        if header is None:
            return frames
        idents, _, parts, buffers = verified(self.session, frames)
        msg = unpacked(parts, buffers)
        msg["parent_header"] = header
        if msg["header"]["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
            del self._renamed[header["msg_id"]]
        return [*self.session.serialize(msg, ident=idents), *buffers]

    def _take_iopub(self, frames: list) -> str | None:
        """Note what the proxy needs of an iopub message; its type if it goes to the client, else None."""
        delim = delimiter(frames)
        msg_type = json.loads(frames[delim + 2].bytes)["msg_type"]
        self._subscribed.set()
        if msg_type in NOT_RELAYED:
            _, _, parts, _ = verified(self.session, frames)
            if msg_type != "status":
                return None
            parent_id = json.loads(parts[1]).get("msg_id")
            pending = self.pending.get(parent_id)
            idle = json.loads(parts[3].bytes).get("execution_state") == "idle"
            if pending is not None and pending.relay_status:
                if not idle:
                    pending.busy_relayed = True
                elif pending.has_reply:
                    if not pending.idle.done():
                        pending.idle.set_result(None)
                else:
                    del self.pending[parent_id]
                return msg_type
            if idle and pending is not None and not pending.idle.done():
                pending.idle.set_result(None)
            return None
        if msg_type in SKIPPABLE:
            pending = self.pending.get(json.loads(frames[delim + 3].bytes).get("msg_id"))
            if pending is not None and pending.skip_execute_input:
                return None
        elif msg_type in TRACKED:
            _, _, parts, _ = verified(self.session, frames)
            self._track_comm(msg_type, json.loads(parts[3].bytes))
        return msg_type

    async def create_subshell(self, timeout: float = 10) -> str:
        """Create a subshell in the inner kernel; its id."""
        msg = self.session.msg("create_subshell_request", {})
        reply = await asyncio.wait_for(self.request(msg, [], "control"), timeout)
        content = reply["content"]
        if content.get("status") != "ok" or not isinstance(content.get("subshell_id"), str):
            raise RuntimeError(content.get("evalue") or f"create_subshell_request: {content}")
        return content["subshell_id"]

    def _on_stdin(self, frames: list) -> None:
        answer = self._answer(frames, "stdin")
        if answer is None:
            return
        msg, pending = answer
        if msg["header"]["msg_type"] != "input_request" or pending is None:
            self.log.warning("Dropped an unexpected %s on stdin", msg["header"]["msg_type"])
            return
        self._input_request = msg
        self.proxy.session.send(
            self.proxy.stdin_socket, "input_request", msg["content"], parent=pending.parent, ident=pending.ident
        )

    def input_reply(self, msg: dict) -> None:
        """Pass the client's input_reply to the inner kernel's pending input_request."""
        request, self._input_request = self._input_request, None
        if request is None:
            self.log.warning("Dropped an input_reply nobody asked for")
            return
        self.session.send(
            self.client.stdin_channel.socket, "input_reply", msg["content"], parent=request["header"]
        )

    def _track_comm(self, msg_type: str, content: dict) -> None:
        comm_id = content.get("comm_id")
        if not isinstance(comm_id, str):
            return
        if msg_type == "comm_open":
            self.comms[comm_id] = content.get("target_name", "")
        else:
            self.comms.pop(comm_id, None)

    def track_client_comm(self, msg: dict) -> None:
        """Note comms the client opens or closes, so restart can close them."""
        msg_type = msg["header"]["msg_type"]
        if msg_type in ("comm_open", "comm_close"):
            self._track_comm(msg_type, msg["content"])

    def close(self) -> None:
        for stream in self._streams:
            # Unregisters the socket from the loop before closing it, so its
            # file descriptor can serve a later incarnation's socket.
            stream.close(linger=0)
        self._closed = True
        self._abandon()
        self.client.stop_channels()
