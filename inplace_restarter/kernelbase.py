"""ipykernel's ``Kernel`` base as the proxy uses it: the private parts a wrapper kernel needs, in one place.

The proxy is an ipykernel ``Kernel`` (the project's shape), but the base
offers a kernel that forwards requests no public hook for the few things
below.  They hold for ipykernel 7.4, the floor in setup.cfg; when a newer
ipykernel breaks the proxy, look here first.

- ``shell_main(subshell_id, msg)`` and ``dispatch_shell(msg, subshell_id,
  concurrent=)``: 7.4's signatures; ``_main_asyncio_lock`` is held while the
  main shell handles a message.
- ``_aborting`` and ``_abort_queues``: after a failed cell 7.4 aborts the
  execute requests queued before its reply, ending that with a message its
  shell channel thread queues; the proxy runs no such thread, so it numbers
  the messages it receives and aborts exactly those received before.
- ``_publish_status``: the proxy leaves some requests' busy and idle to the
  inner kernel (``_leaves_status``); ``_publish_execute_input``, which the
  proxy publishes itself only for ``%restart`` cells; ``_topic``,
  ``_parent_ident`` and ``_execute_sleep``.
"""

from __future__ import annotations

import asyncio
import typing as t
from contextvars import copy_context

from ipykernel.kernelbase import Kernel


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
        # One context for all shell messages, as ipykernel's base keeps.
        self._shell_context = copy_context()
        self.shell_stream.on_recv(self._on_shell, copy=False)

    def _on_shell(self, msg: list) -> asyncio.Task:
        self._received += 1
        self._sequence[id(msg)] = self._received
        return asyncio.create_task(self._numbered_shell_main(msg), context=self._shell_context)

    async def _numbered_shell_main(self, msg: list) -> None:
        try:
            await self.shell_main(None, msg)
        finally:
            self._sequence.pop(id(msg), None)

    # -- the main shell's order ---------------------------------------------------

    @property
    def shell_busy(self) -> bool:
        """Whether the main shell is handling a message now."""
        return self._main_asyncio_lock.locked()

    async def dispatch_now(self, msg: list) -> None:
        """Handle ``msg`` alongside whatever holds the main shell, without a status (as 7.4 does comms)."""
        await self.dispatch_shell(msg, concurrent=True)

    async def dispatch_in_turn(self, msg: list, relay: t.Callable[[list], t.Awaitable[bool]] | None = None) -> None:
        """Handle ``msg`` once the main shell is free, with its busy and idle.

        ``relay``, if given, may take the message instead of ipykernel's
        dispatch, in the same turn: it returns False when it did not.
        """
        async with self._main_asyncio_lock:
            if relay is None or not await relay(msg):
                await self.dispatch_shell(msg)

    async def dispatch_shell(self, msg: list, /, subshell_id: str | None = None, *, concurrent: bool = False):
        """Abort exactly the execute requests received before a failed cell's reply.

        Without ipykernel's shell channel thread its base resets the abort on a
        timer, which can also abort a request sent right after the error reply.
        """
        self._aborting = self._sequence.pop(id(msg), 0) <= self._abort_through
        await super().dispatch_shell(msg, subshell_id, concurrent=concurrent)

    def _abort_queues(self, subshell_id: str | None = None) -> None:
        self._abort_through = self._received
        self.failures += 1

    @property
    def aborting(self) -> bool:
        """Whether the request being dispatched is one a failed cell aborts."""
        return self._aborting

    def aborts(self, msg: list) -> bool:
        """Whether a failed cell aborts ``msg``, a message not dispatched yet."""
        return self._sequence.get(id(msg), 0) <= self._abort_through

    # -- status and the current request -------------------------------------------

    def _publish_status(self, status: str, channel: str, parent: dict | None = None) -> None:
        if not self._leaves_status(status, channel, parent or self.get_parent(channel)):
            super()._publish_status(status, channel, parent)

    def _leaves_status(self, status: str, channel: str, parent: dict) -> bool:
        """Whether this status is the inner kernel's to send; the proxy's own when False."""
        return False

    def publish_own_status(self, status: str, parent: dict) -> None:
        """The proxy's own busy or idle for shell request ``parent``, whatever _leaves_status says."""
        super()._publish_status(status, "shell", parent)

    def _publish_execute_input(self, code: str, parent: dict, execution_count: int) -> None:
        """The inner kernel publishes its own, with its own execution count."""

    def publish_own_execute_input(self, code: str, parent: dict, execution_count: int) -> None:
        super()._publish_execute_input(code, parent, execution_count)

    def topic(self, name: str) -> bytes:
        """The iopub topic of the proxy's own messages."""
        return self._topic(name)

    def parent_ident(self, channel: str) -> list:
        """The identities of the request ``channel`` is handling, to reply to."""
        return self._parent_ident[channel]
