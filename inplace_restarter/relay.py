"""The messages between the client and one inner kernel.

Requests are forwarded with the client's own header, so the inner kernel's
replies and iopub output already carry the client's request as parent.  The
inner kernel signs with the client's key, and the proxy takes on its session
id, so iopub output goes to the client frame for frame as the kernel sent it,
from the iopub relay's thread (see iopub); so do plain requests on their way
in (:meth:`Relay.forward`) and their replies on the way out.  Content is never
decoded on the way out, except for the few messages whose meaning the proxy
needs (a reply, status, and comm_open/comm_close to know which comms to close
on restart).

Each client reaches the inner kernel under its own zmq identity: a request
goes out on sockets of that client's (:class:`Route`), so the kernel sees the
client that asked as its parent's identity (ipykernel's ``_parent_ident``)
and sends an ``input_request`` back to that client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import typing as t
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
import zmq.utils.monitor
from jupyter_client.session import DELIM, Session

from .death import describe_exit
from .frames import decoded, delimiter, recv_frames, send_frames, unpacked, verified

if t.TYPE_CHECKING:
    from jupyter_client.blocking import BlockingKernelClient

    from .iopub import IOPubRelay

#: iopub messages that belong to the inner kernel's own life, not to a request.
NOT_RELAYED = frozenset({"status", "iopub_welcome", "shutdown_reply"})
#: iopub messages dropped for requests that asked for it.
SKIPPABLE = frozenset({"execute_input"})
#: iopub messages relayed and also read, to know which comms to close on restart.
TRACKED = frozenset({"comm_open", "comm_close"})


class InnerKernelDied(Exception):
    """The inner kernel exited while a request was pending; the message says why (see death)."""

    def __init__(self, returncode: int | None, reason: str | None = None):
        super().__init__(reason or describe_exit(returncode))
        self.returncode = returncode


#: the inner kernel's channels a client's requests and input replies go on
ROUTED = ("stdin", "shell", "control")
#: clients whose sockets are kept; beyond, the least recently heard from without a pending request is closed
MAX_ROUTES = 32


class Route:
    """One client's sockets to the inner kernel, under the client's own identity.

    zmq gives a ROUTER the identity of the socket a message came in on:
    for the kernel to see the client's, the proxy speaks from a socket of
    that identity.  Identities a socket cannot take (zmq's own, which start
    with a zero byte) keep the proxy's shared sockets.
    """

    def __init__(self, client: BlockingKernelClient, urls: dict[str, str], identity: bytes):
        """Sockets like ``client``'s own (its context, its CurveZMQ keys for an encrypted kernel), ``identity``'s."""
        self.sockets: dict[str, zmq.Socket] = {}
        for channel in ROUTED:
            socket = self.sockets[channel] = client.context.socket(zmq.DEALER)
            socket.linger = 1000
            socket.identity = identity
            if client.curve_publickey is not None:
                # As jupyter_client's own sockets: the connection file's keypair, the kernel's key as the server's.
                socket.curve_secretkey = client.curve_secretkey
                socket.curve_publickey = socket.curve_serverkey = client.curve_publickey
            if channel == "stdin":
                # Connected before any request of the client's can make the kernel ask for input.
                self.monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            socket.connect(urls[channel])
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()

    @staticmethod
    def takes(identity: bytes) -> bool:
        return 0 < len(identity) <= 255 and not identity.startswith(b"\0")

    def stop_monitor(self) -> None:
        if not self.monitor.closed:
            self.sockets["stdin"].disable_monitor()
            self.monitor.close()

    def on_monitor(self) -> None:
        while not self.ready.done():
            try:
                event = zmq.utils.monitor.recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.ready.set_result(None)

    def close(self) -> None:
        self.stop_monitor()
        for socket in self.sockets.values():
            socket.close()


class Unanswered(Exception):
    """The inner kernel ended a request without replying to it (a control request of a type it does not know)."""


@dataclass
class Pending:
    """A forwarded request, until its reply and its idle status are back."""

    parent: dict
    ident: list
    #: the inner kernel's channel it went on
    channel: str = "shell"
    reply: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    idle: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    skip_execute_input: bool = False
    #: the client gets the inner kernel's busy and idle for it, not the proxy's
    relay_status: bool = False
    #: with relay_status: the inner kernel's busy has gone to the client
    busy_relayed: bool = False
    #: the reply as the inner kernel sent it, from its delimiter on
    reply_frames: list = field(default_factory=list)

    @property
    def has_reply(self) -> bool:
        """Comm messages have none."""
        return self.parent["header"]["msg_type"].endswith("_request")


class Relay:
    """Forwards requests to one inner kernel and relays what it sends back."""

    def __init__(
        self,
        client: BlockingKernelClient,
        exited: asyncio.Future,
        log: logging.Logger,
        iopub: IOPubRelay,
        on_input_request: Callable[[dict, Pending], None],
        describe_death: Callable[[int | None], str] = describe_exit,
    ):
        """``describe_death(returncode)`` says why the kernel died, for InnerKernelDied (see death.Witness)."""
        self.client = client
        self._describe_death = describe_death
        self.session: Session = client.session
        self.exited = exited
        self.log = log
        self.pending: dict[str, Pending] = {}
        #: comm_id -> target_name of the comms open in this inner kernel
        self.comms: dict[str, str] = {}
        self._input_request: dict | None = None
        self._on_input_request = on_input_request
        #: msg_id -> the client's header, of requests forwarded under another subshell id
        self._renamed: dict[str, dict] = {}
        self._subscribed = asyncio.Event()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        exited.add_done_callback(self._abandon)
        info = client.get_connection_info()
        #: where the inner kernel publishes; the iopub relay's thread reads it (see take)
        self.url = f"{info['transport']}://{info['ip']}:{info['iopub_port']}"
        #: the inner kernel's CurveZMQ keys, which a client uses as its own too, if it has them
        self.curve_keys = (
            (info["curve_publickey"].encode(), info["curve_secretkey"].encode())
            if info.get("curve_secretkey")
            else None
        )
        self._iopub = iopub
        self._seen_iopub = False
        # Replies are read by callbacks on the event loop, not awaited
        # receives (a future per message was a sixth of the proxy's CPU), and
        # by a plain reader: ZMQStream polled each socket again per message.
        self._handlers = {
            client.shell_channel.socket: self._on_reply,
            client.control_channel.socket: self._on_reply,
            client.stdin_channel.socket: self._on_stdin,
        }
        for socket in self._handlers:
            self._loop.add_reader(socket.FD, self._drain, socket)
        #: where each channel of the inner kernel listens, for the clients' own sockets
        self._urls = {channel: f"{info['transport']}://{info['ip']}:{info[f'{channel}_port']}" for channel in ROUTED}
        #: each client's sockets, by its identity, least recently used first
        self._routes: dict[bytes, Route] = {}
        iopub.watch(self)

    # -- requests -------------------------------------------------------------

    def forward(
        self,
        parent: dict,
        ident: list,
        frames: list | None = None,
        *,
        channel: str = "shell",
        relay_status: bool = True,
        content: dict | None = None,
        skip_execute_input: bool = False,
        subshell_id: str | None = None,
    ) -> Pending:
        """Forward the client's request ``parent``: the one way a client's request reaches the inner kernel.

        ``frames`` (from the signature on) are sent as the client signed them
        when nothing in the request changes: the inner kernel shares the
        client's key.  Else the request is signed again: with ``content`` in
        place of its own (``%restart`` forwards the rest of its cell), or
        under ``subshell_id``, the inner kernel's id of the client's subshell
        (the client sees its own request back as the parent of what it
        causes).  With ``relay_status`` the inner kernel's busy and idle for
        it go to the client, and it is forgotten at its idle; without, the
        proxy sends its own and awaits :meth:`settle`.
        ``skip_execute_input`` drops the inner kernel's echo of the request.
        """
        header = parent["header"]
        msg_type = header["msg_type"]
        pending = self.pending[header["msg_id"]] = Pending(
            parent, ident, channel, skip_execute_input=skip_execute_input, relay_status=relay_status
        )
        if subshell_id is not None and subshell_id != header.get("subshell_id"):
            self._renamed[header["msg_id"]] = header
            header = {**header, "subshell_id": subshell_id}
        elif frames is not None and content is None:
            self._send(channel, [*self._beyond(ident), DELIM, *frames], msg_type, ident)
            return pending
        msg = self.session.msg(
            msg_type,
            content=parent["content"] if content is None else content,
            parent=parent.get("parent_header") or {},
            header=header,
            metadata=parent.get("metadata") or {},
        )
        serialized = self.session.serialize(msg, ident=self._beyond(ident))
        self._send(channel, [*serialized, *(parent.get("buffers") or ())], msg_type, ident)
        return pending

    def _beyond(self, ident: list) -> list:
        """The identities a client's own socket does not carry: those of routers between it and the proxy."""
        return list(ident[1:]) if self._route(ident) is not None else []

    def _route(self, ident: list) -> Route | None:
        key = bytes(ident[0]) if ident else b""
        return self._routes.get(key)

    async def connect(self, ident: list) -> None:
        """Give the client of ``ident`` its own sockets to the inner kernel, if it has none yet.

        Returns once the kernel knows the client's stdin (or is gone), so an
        ``input_request`` cannot be sent to a client it does not know yet.
        Requests already on their way keep their order: they wait for the same future.
        """
        if not ident:
            return
        key = bytes(ident[0])
        route = self._routes.pop(key, None)
        if route is None:
            if not Route.takes(key):
                return
            route = Route(self.client, self._urls, key)
            for channel, socket in route.sockets.items():
                self._handlers[socket] = self._on_stdin if channel == "stdin" else self._on_reply
                self._loop.add_reader(socket.FD, self._drain, socket)
            self._loop.add_reader(route.monitor.FD, route.on_monitor)
            route.ready.add_done_callback(lambda _: self._stop_monitor(route))
            route.on_monitor()
            self._evict()
        self._routes[key] = route
        try:
            await self._until(route.ready)
        except InnerKernelDied:
            pass

    def _stop_monitor(self, route: Route) -> None:
        if not route.monitor.closed:
            self._loop.remove_reader(route.monitor.FD)
            route.stop_monitor()

    def _evict(self) -> None:
        """Close the sockets of the clients least recently heard from, beyond MAX_ROUTES, with nothing pending.

        One still connecting has a request waiting to go out on it.
        """
        busy = {bytes(p.ident[0]) for p in self.pending.values() if p.ident}
        for key, route in list(self._routes.items()):
            if len(self._routes) < MAX_ROUTES:
                return
            if key not in busy and route.ready.done():
                self._close_route(self._routes.pop(key))

    def _close_route(self, route: Route) -> None:
        self._stop_monitor(route)
        # A request waiting to go out on it then finds the relay closed (see connect).
        route.ready.cancel()
        for socket in route.sockets.values():
            self._loop.remove_reader(socket.FD)
            self._handlers.pop(socket, None)
        route.close()

    def ask(self, msg_type: str, content: dict, channel: str = "shell", ident: list = ()) -> Pending:
        """Send a request of the proxy's own (kernel_info, shutdown, a subshell to create); ``ident``: on a client's sockets."""
        return self.forward(self.session.msg(msg_type, content), list(ident), channel=channel, relay_status=False)

    def _send(self, channel: str, frames: list, msg_type: str, ident: list = ()) -> None:
        if self._closed:
            # Replaced meanwhile (a restart): the request's reply raises InnerKernelDied.
            return
        route = self._route(ident)
        socket = route.sockets[channel] if route is not None else getattr(self.client, f"{channel}_channel").socket
        send_frames(socket, frames, copy=False)
        # A send can take in what arrived meanwhile without waking the reader (zmq's edge-triggered FD).
        if socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._loop.call_soon(self._drain, socket)
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("-> inner %s %s", channel, msg_type)

    async def reply(self, pending: Pending, wait_idle: bool = False) -> dict:
        """The inner kernel's reply to a forwarded request; raises InnerKernelDied.

        With ``wait_idle``, also waits until all the output the request
        caused has been relayed, so that the proxy's own idle comes last, as
        a kernel's does.  A request whose status is the inner kernel's needs
        no wait: it is forgotten at its idle.
        """
        msg_id = pending.parent["header"]["msg_id"]
        try:
            await self._until(pending.reply)
        except BaseException:
            self.pending.pop(msg_id, None)
            raise
        if pending.relay_status:
            if pending.idle.done():
                self.pending.pop(msg_id, None)
        elif wait_idle:
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
                returncode = self.exited.result() if self.exited.done() else None
                raise InnerKernelDied(returncode, self._describe_death(returncode)) from None
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
            pending = self.ask("kernel_info_request", {})
            try:
                await asyncio.wait_for(self._until(pending.reply), max(0.1, min(2.0, deadline - loop.time())))
                await asyncio.wait_for(asyncio.shield(subscribed), 0.2)
                return pending.reply.result()
            except TimeoutError:
                if loop.time() > deadline:
                    subscribed.cancel()
                    raise TimeoutError(f"the kernel did not answer kernel_info within {timeout:g} s") from None
            except BaseException:
                subscribed.cancel()
                raise
            finally:
                self.pending.pop(pending.parent["header"]["msg_id"], None)

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

    def _drain(self, socket: zmq.Socket) -> None:
        """Hand every message waiting on ``socket`` to its handler."""
        handler = self._handlers.get(socket)
        while handler is not None and not self._closed:
            try:
                frames = recv_frames(socket, zmq.NOBLOCK)
            except zmq.Again:
                return
            handler(frames)

    def _on_reply(self, frames: list) -> None:
        answer = self._answer(frames, "shell or control")
        if answer is None:
            return
        msg, pending = answer
        if pending is not None and not pending.reply.done():
            header = pending.parent["header"]
            if msg["parent_header"].get("subshell_id") == header.get("subshell_id"):
                pending.reply_frames = frames[delimiter(frames) :]
            else:
                # Forwarded under another subshell id: the client's own request is the parent.
                msg["parent_header"] = header
                pending.reply_frames = self.session.serialize(msg)
            pending.reply.set_result(msg)

    # -- in the iopub relay's thread ---------------------------------------------

    def take(self, frames: list) -> list | None:
        """The frames to send on to the client, or None; what the proxy must know goes to its loop.

        Runs in the iopub relay's thread, for every message the inner kernel
        publishes.  Output is relayed frame for frame as the kernel signed it:
        only the header is read, and the signature checked only of what the
        proxy acts on (status, comm_open/comm_close).
        """
        try:
            msg_type = self._take(frames)
        except Exception:
            self.log.warning("Dropped a malformed iopub message from the inner kernel", exc_info=True)
            return None
        if msg_type is None:
            return None
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("<- inner iopub %s", msg_type)
        if self._renamed:
            return self._restore_parent(frames)
        return frames

    def _take(self, frames: list) -> str | None:
        delim = delimiter(frames)
        msg_type = json.loads(frames[delim + 2].bytes)["msg_type"]
        if not self._seen_iopub:
            self._seen_iopub = True
            self._loop.call_soon_threadsafe(self._subscribed.set)
        if msg_type in NOT_RELAYED:
            _, _, parts, _ = verified(self.session, frames)
            if msg_type != "status":
                return None
            parent_id = json.loads(parts[1]).get("msg_id")
            pending = self.pending.get(parent_id)
            if pending is None:
                return None
            idle = json.loads(parts[3].bytes).get("execution_state") == "idle"
            if idle:
                self._loop.call_soon_threadsafe(self._idle_seen, parent_id, pending)
            if not pending.relay_status:
                return None
            if not idle:
                pending.busy_relayed = True
            return msg_type
        if msg_type in SKIPPABLE:
            pending = self.pending.get(json.loads(frames[delim + 3].bytes).get("msg_id"))
            if pending is not None and pending.skip_execute_input:
                return None
        elif msg_type in TRACKED:
            _, _, parts, _ = verified(self.session, frames)
            self._loop.call_soon_threadsafe(self._track_comm, msg_type, json.loads(parts[3].bytes))
        return msg_type

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
            self._renamed.pop(header["msg_id"], None)
        return [*self.session.serialize(msg, ident=idents), *buffers]

    # -- on the event loop --------------------------------------------------------

    def _idle_seen(self, msg_id: str, pending: Pending) -> None:
        """All the output of request ``msg_id`` has gone to the client."""
        if not pending.idle.done():
            pending.idle.set_result(None)
        # A request whose status is the inner kernel's needs no settle: it
        # ends here, or at its reply if that comes later (comm messages have none).
        finished = pending.reply.done() or not pending.has_reply
        if pending.relay_status and finished and self.pending.get(msg_id) is pending:
            del self.pending[msg_id]
        elif pending.relay_status and not finished and pending.channel == "control":
            self._unless_answered(pending)

    def _unless_answered(self, pending: Pending) -> None:
        """A control request idle before its reply: fail it with Unanswered unless a reply is on its way.

        A kernel takes control requests one at a time and replies before its
        idle; the reply to a request sent after this one, on the same socket,
        comes after any reply to this one.  Only a reply overtaken by the idle
        (they come on different sockets) costs that round trip.
        """
        marker = self.ask("kernel_info_request", {}, pending.channel, pending.ident)

        def answered(future: asyncio.Future) -> None:
            self.pending.pop(marker.parent["header"]["msg_id"], None)
            if not future.cancelled() and not pending.reply.done():
                pending.reply.set_exception(Unanswered(pending.parent["header"]["msg_type"]))

        marker.reply.add_done_callback(answered)

    async def create_subshell(self, timeout: float = 10) -> str:
        """Create a subshell in the inner kernel; its id."""
        pending = self.ask("create_subshell_request", {}, "control")
        reply = await asyncio.wait_for(self.reply(pending, wait_idle=True), timeout)
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
        self._on_input_request(msg, pending)

    def input_reply(self, msg: dict, ident: list) -> None:
        """Pass the client's input_reply to the inner kernel's pending input_request, from the client's socket."""
        request, self._input_request = self._input_request, None
        if request is None:
            self.log.warning("Dropped an input_reply nobody asked for")
            return
        reply = self.session.msg("input_reply", msg["content"], parent=request["header"])
        self._send("stdin", self.session.serialize(reply, ident=self._beyond(ident)), "input_reply", ident)

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
        self._iopub.unwatch(self)
        for route in self._routes.values():
            self._close_route(route)
        self._routes.clear()
        for socket in self._handlers:
            # Before the socket closes, so its file descriptor can serve a
            # later incarnation's socket.
            self._loop.remove_reader(socket.FD)
        self._closed = True
        self._abandon()
        self.client.stop_channels()
