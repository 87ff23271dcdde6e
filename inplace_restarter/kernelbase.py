"""The private parts of ipykernel and jupyter_client the proxy uses, in one place, with the versions they hold for.

The proxy is an ipykernel ``Kernel`` (the project's shape), but the base
offers a kernel that forwards requests no public hook for the few things
below.  They hold for ipykernel 7.4 and jupyter_client 8.10, the floors in
setup.cfg; when a newer release breaks the proxy, look here first.

ipykernel 7.4:

- ``shell_main(subshell_id, msg)`` and ``dispatch_shell(msg, subshell_id,
  concurrent=)``: their signatures; ``_main_asyncio_lock`` is held while the
  main shell handles a message.
- ``_aborting`` and ``_abort_queues``: after a failed cell 7.4 aborts the
  execute requests queued before its reply, ending that with a message its
  shell channel thread queues; the proxy runs no such thread, so it numbers
  the messages it receives and aborts exactly those received before.
- ``_control_lock``, held while ``dispatch_control`` handles a control
  request, one at a time.
- ``_publish_status`` (the proxy's own busy and idle, for what it answers
  itself), ``_topic`` (its iopub topics), ``_parent_ident`` (the identities
  of the request being handled) and ``_execute_sleep``.

jupyter_client 8.10:

- ``Session._add_digest``: records a signature against replays, as
  ``Session.deserialize`` does when it reads a message's content.
- ``KernelManager._control_socket``: the socket a manager sent its
  shutdown_request on, whose reply it never reads (see provisioner).
- ``ConnectionFileMixin._connection_file_written``: a manager that did not
  write its connection file neither rewrites it (while the kernel reads it)
  nor removes it (see inner.new_manager, for a prelaunched kernel).

This module imports ipykernel: import the jupyter_client helpers where they
are used, so that code running before ipykernel is loaded (prelaunch)
does not load it.
"""

from __future__ import annotations

import asyncio
import typing as t

import zmq
from ipykernel.kernelbase import Kernel
from jupyter_client.session import Session

# -- jupyter_client 8.10 --------------------------------------------------------


def add_digest(session: Session, signature: bytes) -> None:
    """Record ``signature`` against replays, culling the history as Session does."""
    session._add_digest(signature)


def written_by(manager: t.Any) -> None:
    """Make ``manager`` treat the connection file it loaded as its own: kept as it is, removed at cleanup."""
    manager._connection_file_written = True


def control_socket(manager: t.Any) -> zmq.Socket | None:
    """A plain view of the control socket ``manager`` sent its shutdown_request on, if it has one."""
    control = getattr(manager, "_control_socket", None)
    if control is None:
        return None
    return zmq.Socket.shadow(getattr(control, "underlying", control))


# -- ipykernel 7.4 --------------------------------------------------------------


class WrapperKernelBase(Kernel):
    """ipykernel's base with the hooks the proxy needs; see the module docstring."""

    #: 7.4 sleeps this long after each cell for its own stdout to flush; a wrapper has none.
    _execute_sleep = 0.0

    def __init__(self, **kwargs: t.Any):
        super().__init__(**kwargs)
        #: shell messages received so far, each message's number, and the last to abort
        self._received = 0
        self._sequence: dict[int, int] = {}
        self._abort_through = 0
        #: cells that failed so far (with stop_on_error)
        self.failures = 0

    def start(self) -> None:
        super().start()
        self.shell_stream.on_recv(self._on_shell, copy=False)

    def _on_shell(self, msg: list) -> asyncio.Task:
        """Each shell message in a task of its own (with a copy of the context, as any task)."""
        self._received += 1
        self._sequence[id(msg)] = self._received
        return asyncio.create_task(self._numbered_shell_main(msg))

    async def _numbered_shell_main(self, msg: list) -> None:
        try:
            await self.shell_main(None, msg)
        finally:
            self._sequence.pop(id(msg), None)

    # -- the main shell's order ---------------------------------------------------

    @property
    def main_shell(self) -> asyncio.Lock:
        """Held while the main shell handles a message: requests take it in turn."""
        return self._main_asyncio_lock

    async def dispatch(self, msg: list, concurrent: bool = False) -> None:
        """ipykernel's own handling of a shell message: its handler, and (unless ``concurrent``) busy and idle."""
        await self.dispatch_shell(msg, concurrent=concurrent)

    async def dispatch_shell(self, msg: list, /, subshell_id: str | None = None, *, concurrent: bool = False):
        """Abort exactly the execute requests received before a failed cell's reply.

        Without ipykernel's shell channel thread its base resets the abort on a
        timer, which can also abort a request sent right after the error reply.
        """
        self._aborting = self.aborts(msg)
        await super().dispatch_shell(msg, subshell_id, concurrent=concurrent)

    def _abort_queues(self, subshell_id: str | None = None) -> None:
        self._abort_through = self._received
        self.failures += 1

    def abort_queued(self) -> None:
        """After a failed cell: abort the execute requests received before its reply."""
        self._abort_queues()

    def aborts(self, msg: list) -> bool:
        """Whether a failed cell aborts ``msg``, a message not dispatched yet."""
        return self._sequence.get(id(msg), 0) <= self._abort_through

    # -- the proxy's own messages -------------------------------------------------

    def publish_status(self, status: str, parent: dict) -> None:
        """The proxy's own busy or idle for shell request ``parent``."""
        self._publish_status(status, "shell", parent)

    @property
    def control_turn(self) -> asyncio.Lock:
        """Held while a control request is handled: they take it in turn, in the order they came."""
        return self._control_lock

    def parent_ident(self, channel: str) -> list:
        """The identities of the request ``channel`` is handling, to route its input_request."""
        return self._parent_ident[channel]

    def topic(self, name: str) -> bytes:
        """The iopub topic of the proxy's own messages."""
        return self._topic(name)
