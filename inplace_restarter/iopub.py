"""The client's iopub socket, in a thread that relays the inner kernels' output outside the event loop.

Output is most of what a kernel sends.  Relaying it on the proxy's asyncio
loop cost a socket callback, a loop turn and a thread switch per message; here
one thread owns the client's XPUB socket, reads each inner kernel's iopub
directly and passes its frames on as they came (the inner kernel signs with
the client's key).  The proxy's own messages (its status, ``%restart``'s
output, notices) reach the same socket through an inproc pipe from whichever
thread sends them, so they keep the order they were sent in.

What the proxy must know of the output (an idle, a comm opened or closed) is
read here by each source's ``take`` and handed to the event loop by the
source itself.
"""

from __future__ import annotations

import threading
import typing as t

import zmq
from jupyter_client.session import Session

from .frames import recv_frames, send_frames

#: first frame of a command to the thread, on the pipe of the proxy's own messages
_COMMAND = b"\x00inplace-restarter"
_PIPE = "inproc://inplace-restarter-iopub-{}"
#: messages read from one inner kernel before polling again
_BATCH = 64


class Source(t.Protocol):
    """One inner kernel's iopub, as the relay thread reads it."""

    url: str
    #: the kernel's CurveZMQ public and secret key, or None for a kernel without encryption
    curve_keys: tuple[bytes, bytes] | None

    def take(self, frames: list[zmq.Frame]) -> list[zmq.Frame] | None:
        """Called in the relay thread: the frames to send on to the client, or None to drop them."""


class IOPubRelay:
    """The client's iopub socket and the thread that serves it.

    Stands in for ipykernel's ``IOPubThread`` (and, as ``background_socket``,
    for the socket ipykernel sends on): ``send_multipart`` may be called from
    any thread.
    """

    def __init__(self, socket: zmq.Socket, session: Session, context: zmq.Context):
        self.socket = socket
        self.session = session
        self.context = context
        self.background_socket = self
        self._pipe_url = _PIPE.format(id(self))
        self._pipe = context.socket(zmq.PULL)
        self._pipe.bind(self._pipe_url)
        self._senders = threading.local()
        self._all_senders: list[zmq.Socket] = []
        #: source id -> source, for the thread to find what a command names
        self._sources: dict[int, Source] = {}
        self._thread = threading.Thread(target=self._run, name="IOPubRelay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- any thread -------------------------------------------------------------

    def send_multipart(self, frames: list, copy: bool = True, **kwargs: t.Any) -> None:
        """Send a message of the proxy's own to the client, after everything sent before it."""
        send_frames(self._sender(), frames, copy)

    def _sender(self) -> zmq.Socket:
        sender = getattr(self._senders, "socket", None)
        if sender is None:
            sender = self._senders.socket = self.context.socket(zmq.PUSH)
            sender.connect(self._pipe_url)
            self._all_senders.append(sender)
        return sender

    def watch(self, source: Source) -> None:
        """Relay ``source``'s output from now on."""
        self._sources[id(source)] = source
        self._command(b"watch", source)

    def unwatch(self, source: Source) -> None:
        """Stop relaying ``source``: what it sends from now on is dropped."""
        self._command(b"unwatch", source)

    def _command(self, verb: bytes, source: Source) -> None:
        send_frames(self._sender(), [_COMMAND, verb, str(id(source)).encode()])

    def stop(self) -> None:
        """End the thread once everything sent before has gone out."""
        if self._thread.is_alive():
            send_frames(self._sender(), [_COMMAND, b"stop", b""])
            self._thread.join(5)
        for sender in self._all_senders:
            sender.close(linger=0)
        self._pipe.close(linger=0)

    # -- the relay thread -------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pipe, zmq.POLLIN)
        poller.register(self.socket, zmq.POLLIN)
        watched: dict[zmq.Socket, Source] = {}
        by_id: dict[int, zmq.Socket] = {}
        while True:
            ready = dict(poller.poll())
            # The proxy's own messages first: what it sent before an inner
            # message arrived (the busy before a request it forwards) goes
            # out before that message.
            if self._drain_pipe(poller, watched, by_id) is False:
                break
            if self.socket in ready:
                self._welcome(self.socket.recv_multipart())
            for sub in [s for s in ready if s in watched]:
                source = watched[sub]
                for _ in range(_BATCH):
                    try:
                        frames = recv_frames(sub, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if self._pipe.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        if self._drain_pipe(poller, watched, by_id) is False:
                            self._close(watched)
                            return
                        if sub not in watched:
                            break
                    out = source.take(frames)
                    if out is not None:
                        send_frames(self.socket, out, copy=False)
        self._close(watched)

    @staticmethod
    def _close(watched: dict) -> None:
        for sub in watched:
            sub.close(linger=0)

    def _drain_pipe(self, poller: zmq.Poller, watched: dict, by_id: dict) -> bool:
        """Send the proxy's own messages and carry out commands; False once told to stop."""
        while True:
            try:
                frames = recv_frames(self._pipe, zmq.NOBLOCK)
            except zmq.Again:
                return True
            if frames[0].bytes != _COMMAND:
                send_frames(self.socket, frames, copy=False)
                continue
            verb, key = frames[1].bytes, int(frames[2].bytes or 0)
            if verb == b"stop":
                return False
            if verb == b"watch":
                source = self._sources[key]
                sub = self.context.socket(zmq.SUB)
                sub.setsockopt(zmq.LINGER, 0)
                # A starting kernel binds its ports late; zmq retries every 0.1 s by default.
                sub.setsockopt(zmq.RECONNECT_IVL, 10)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                if source.curve_keys is not None:
                    # As jupyter_client's clients do: the kernel's own keypair, and its public key as the server's.
                    sub.curve_publickey, sub.curve_secretkey = source.curve_keys
                    sub.curve_serverkey = source.curve_keys[0]
                sub.connect(source.url)
                watched[sub], by_id[key] = source, sub
                poller.register(sub, zmq.POLLIN)
            elif verb == b"unwatch" and key in by_id:
                sub = by_id.pop(key)
                poller.unregister(sub)
                del watched[sub]
                del self._sources[key]
                sub.close(linger=0)

    def _welcome(self, frames: list[bytes]) -> None:
        """Greet each new subscriber with ``iopub_welcome``, as ipykernel 7 does."""
        for frame in frames:
            if frame[:1] == b"\x01":
                topic = frame[1:]
                self.session.send(
                    self.socket,
                    "iopub_welcome",
                    {"subscription": topic.decode("utf-8", "replace")},
                    ident=topic or None,
                )
