"""The kernel the client talks to: a wrapper kernel that forwards to the inner kernel.

ipykernel's ``Kernel`` base (through kernelbase.WrapperKernelBase) does what
any kernel does for the client: the order of requests, aborting after a
failed cell, replies, the control thread.  Requests the inner kernel can
answer are forwarded as the client sent them, and for most of them the client
gets the inner kernel's own busy and idle.  The proxy answers itself:
``%restart`` (:meth:`ProxyKernel._restart_cell`; Jupyter's own restart in
:meth:`ProxyKernel.shutdown_request`), ``kernel_info`` (the inner kernel's,
kept), interrupts (by the inner kernel's interrupt mode, with the rescue of a
hung kernel) and shutdown.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shlex
import signal
import time
import typing as t
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from jupyter_client.kernelspec import KernelSpec
from traitlets import Bool, Instance
from zmq.eventloop.zmqstream import ZMQStream

from .frames import read, send_frames, spend
from .inner import InnerKernel, InnerKernels
from .kernelbase import WrapperKernelBase
from .provisioner import ENV_NAME, REPLY_KEY
from .relay import InnerKernelDied, Pending
from .rescue import RescuePolicy, Rescuer

RESTART_HELP = """\
%restart [--cold] [--help]

Restart the kernel behind this notebook in place: the kernel process is shut
down and started again with the same command, environment and working
directory, while the notebook stays connected to the same kernel (and a batch
job keeps its allocation).  All variables are lost, as with a normal restart.
Lines after %restart in the same cell run in the new kernel.

With a standby kernel (the proxy's --standby option) %restart swaps to the
spare at once; --cold starts a new kernel instead, e.g. after a pip install.
"""

#: kernel_info supported_features that work through the proxy.
SUBSHELLS = "kernel subshells"
FORWARDED_FEATURES = ("debugger", SUBSHELLS)
COMM_MSG_TYPES = ("comm_open", "comm_msg", "comm_close")
#: shell requests the inner kernel answers alone, its own busy and idle included
STATUS_RELAYED = frozenset(
    {
        "execute_request",
        "complete_request",
        "inspect_request",
        "is_complete_request",
        "history_request",
        "comm_info_request",
        *COMM_MSG_TYPES,
    }
)


@dataclass
class RestartCell:
    """A cell whose first non-blank line is ``%restart``."""

    options: list[str]
    #: the code after the ``%restart`` line, run in the new kernel
    rest: str
    #: why the options do not parse (an unclosed quote), for a UsageError
    error: str | None = None


def parse_restart(code: str) -> RestartCell | None:
    """The ``%restart`` command of a cell, or None when its first non-blank line is not one."""
    lines = code.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        words = line.strip()
        rest = "".join(lines[index + 1 :])
        if words == "%restart?":
            return RestartCell(["--help"], rest)
        if words != "%restart" and not words.startswith(("%restart ", "%restart\t")):
            return None
        try:
            return RestartCell(shlex.split(words[len("%restart") :]), rest)
        except ValueError as e:
            return RestartCell([], rest, error=f"%restart: {e}; see %restart --help")
    return None


class ProxyKernel(WrapperKernelBase):
    """Stands in for the inner kernel; see the module docstring."""

    msg_types = [*WrapperKernelBase.msg_types, *COMM_MSG_TYPES]

    inner_spec = Instance(KernelSpec, help="The spec of the kernel behind the proxy.")

    standby = Bool(
        False,
        config=True,
        help="Keep a spare inner kernel started and idle, so that %restart swaps to it at once. "
        "Costs the memory of a second kernel; a spare started before a change to the environment "
        "(a pip install) may not see it: %restart --cold starts a new kernel instead.",
    )

    def __init__(self, **kwargs: t.Any):
        super().__init__(**kwargs)
        self.kernels = InnerKernels(
            self.inner_spec,
            self.session,
            self.iopub_thread,
            self._send_input_request,
            standby=self.standby,
            parent=self,
            log=self.log,
        )
        self._inner_info: dict = {}
        #: set while an inner kernel serves; requests wait on it through a restart
        self.ready = asyncio.Event()
        self._reply_metadata: ContextVar[dict] = ContextVar("reply_metadata")
        #: the execute request being forwarded, if any
        self.running_cell: dict | None = None
        #: a restart in place asked for by Jupyter's own restart (see shutdown_request)
        self._restarting: asyncio.Task | None = None
        self.rescuer = Rescuer(
            RescuePolicy(parent=self),
            self.kernels,
            self.ready,
            restart=self.restart_in_place,
            tell=lambda text, cell: self.write_stream(text, cell, "stderr"),
            running_cell=lambda: self.running_cell,
            log=self.log,
        )
        #: shell requests whose busy and idle are the inner kernel's, and whether
        #: each has been forwarded yet (see _leaves_status)
        self._status_relayed: dict[str, bool] = {}
        #: the client's subshell ids -> the current inner kernel's (see _carry_subshells)
        self.subshells: dict[str, str] = {}
        atexit.register(self.cleanup)

    @property
    def inner(self) -> InnerKernel | None:
        """The inner kernel serving the client, if any."""
        return self.kernels.current

    @property
    def stopping(self) -> bool:
        """Shutting down: a kernel that exits now is not rescued."""
        return self.kernels.stopping

    def adopt(self, manager, runtime_dir: Path) -> None:
        """Take over an inner kernel launched before the proxy was ready (see inner.prelaunch)."""
        self.kernels.adopt(manager, runtime_dir)

    # -- startup and shutdown ---------------------------------------------------

    def start(self) -> None:
        super().start()
        self._loop = self.io_loop.asyncio_loop
        self._loop.add_signal_handler(signal.SIGINT, lambda: self._loop.create_task(self._interrupt()))
        self._loop.add_signal_handler(signal.SIGTERM, self._terminate)
        self._stdin_stream = ZMQStream(self.stdin_socket)
        self._stdin_stream.on_recv(self._on_stdin, copy=False)
        self.io_loop.add_callback(self._start_inner)

    async def _start_inner(self) -> None:
        try:
            inner = await self.kernels.start()
        except Exception as e:
            self.log.critical("The inner kernel did not start: %s", e)
            self.io_loop.stop()
            return
        self._use(inner)

    def _use(self, inner: InnerKernel) -> None:
        """Serve the client with ``inner``, under its session id.

        The relay passes the kernel's output on as it was signed, so the
        proxy's own messages (status, replies) take on the same session id:
        JupyterLab drops what it is still handling of any session but the
        newest message's, as after any kernel restart.
        """
        self.kernels.use(inner)
        # Kept apart from self.inner, which a restart empties while the control
        # thread may be answering kernel_info.
        self._inner_info = inner.kernel_info
        if inner.session_id.isascii():
            self.session.session = inner.session_id
        self.ready.set()
        self._loop.create_task(self.rescuer.watch(inner))
        self.log.info("Inner kernel %s is ready", inner.pid)

    def _terminate(self) -> None:
        """SIGTERM: take the inner kernel down with us, at once."""
        self.log.info("Terminated; killing the inner kernel")
        self.cleanup()
        self.io_loop.stop()

    def cleanup(self) -> None:
        """Last resort at exit: nothing the proxy started may outlive it."""
        self.kernels.kill_all()

    async def shutdown_request(self, stream, ident, parent) -> None:
        """Jupyter's own restart, from a launcher that keeps this process, restarts in place.

        The provisioner reads the reply's REPLY_KEY as the promise that this
        process stays; any other shutdown_request ends the proxy as usual.
        """
        if not (parent["content"].get("restart") and os.environ.get(ENV_NAME) == "1"):
            await super().shutdown_request(stream, ident, parent)
            return
        await self._on_main(self._restart_on_request())
        content = {"status": "ok", "restart": True, REPLY_KEY: True}
        self.session.send(stream, "shutdown_reply", content, parent, ident=ident)

    async def _restart_on_request(self) -> None:
        """Begin a restart in place, after one under way; requests from now on wait for the new kernel."""
        await self.ready.wait()
        self.ready.clear()
        self._restarting = self._loop.create_task(self.restart_in_place(None))
        self._restarting.add_done_callback(self._restarted_on_request)

    def _restarted_on_request(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("The kernel did not restart: %s", task.exception())

    async def do_shutdown(self, restart: bool) -> dict:
        await self._on_main(self.kernels.shutdown())
        return {"status": "ok", "restart": restart}

    # -- forwarding ---------------------------------------------------------

    async def _on_main(self, coro: t.Awaitable) -> t.Any:
        """Run ``coro`` on the main loop, where the inner kernel's sockets live.

        Control requests arrive on ipykernel's control thread.
        """
        if asyncio.get_running_loop() is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _forward(self, channel: str = "shell", **options: t.Any) -> dict:
        """Forward the current request of ``channel`` and return the reply content.

        With ``wait_idle=False`` the reply goes back to the client while the
        inner kernel still flushes its output; :meth:`execute_request` then
        waits for that before the proxy's idle.
        """
        parent = self.get_parent(channel)
        ident = self.parent_ident(channel)
        reply = await self._on_main(self._request(parent, ident, channel, **options))
        self._reply_metadata.set(reply["metadata"])
        return reply["content"]

    async def _request(self, parent: dict, ident: list, channel: str, wait_idle: bool = True, **options: t.Any) -> dict:
        """Forward ``parent`` to the inner kernel; its reply message, or an error reply of the proxy's.

        ``wait_idle`` waits for the request's output to be relayed, before the
        proxy's own idle; ``options`` go to Relay.send.
        """
        await self.ready.wait()
        relayed = parent["header"]["msg_id"] in self._status_relayed
        if self.inner is None or self.inner.relay is None:
            self._take_status_back(parent, busy_relayed=False)
            return self._error_reply(parent, "DeadKernelError", "The kernel is not running; run %restart to start it")
        inner = self.inner
        if relayed:
            self._status_relayed[parent["header"]["msg_id"]] = True
        pending = inner.relay.send(parent, ident, channel, relay_status=relayed, **options)
        try:
            return await inner.relay.request(parent, ident, channel, wait_idle=wait_idle and not relayed)
        except InnerKernelDied as died:
            self._take_status_back(parent, pending.busy_relayed)
            return await self._after_death(parent, inner, died)

    async def _after_death(self, parent: dict, inner: InnerKernel, died: InnerKernelDied) -> dict:
        """The inner kernel died before answering ``parent``: rescue it; the error reply of the proxy's."""
        cell = parent if parent["header"]["msg_type"] == "execute_request" else None
        reason = await self.rescuer.after_death(inner, str(died), cell)
        return self._error_reply(parent, "DeadKernelError", reason)

    def _error_reply(self, parent: dict, ename: str, evalue: str) -> dict:
        """A reply (and, for execute, the iopub error) for a failure of the proxy's own."""
        content = {"status": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        if parent["header"]["msg_type"] == "execute_request":
            self.session.send(self.iopub_socket, "error", content, parent, ident=self.topic("error"))
            content["execution_count"] = self.execution_count
        reply_type = parent["header"]["msg_type"].replace("_request", "_reply")
        return {"header": {"msg_type": reply_type}, "content": content, "metadata": {}}

    # -- status: the inner kernel's own, for what it answers ----------------------

    def _leaves_status(self, status: str, channel: str, parent: dict) -> bool:
        """Leave the busy and idle of a request the inner kernel answers to the inner kernel.

        Its own status reaches the client from the iopub relay's thread in
        order with the output it frames, so the proxy neither publishes one
        nor waits for the kernel's idle before taking the next request.
        """
        if channel != "shell" or status not in ("busy", "idle"):
            return False
        msg_id = parent["header"]["msg_id"]
        if status == "busy" and self._inner_answers(parent):
            self._status_relayed[msg_id] = False
            return True
        if status == "idle" and msg_id in self._status_relayed:
            if self._status_relayed.pop(msg_id):
                return True
            # Refused before it reached the inner kernel (a malformed
            # request): the client still gets the busy and idle it would.
            self.publish_own_status("busy", parent)
        return False

    def _inner_answers(self, parent: dict) -> bool:
        """Whether the inner kernel alone answers shell request ``parent``, status and all."""
        msg_type = parent["header"]["msg_type"]
        if msg_type not in STATUS_RELAYED or self.aborting or not self.ready.is_set() or self.inner is None:
            return False
        if msg_type != "execute_request":
            return True
        content = parent["content"]
        code = content.get("code") if isinstance(content, dict) else None
        return isinstance(code, str) and parse_restart(code) is None and not self.rescuer.has_notice

    def _take_status_back(self, parent: dict, busy_relayed: bool) -> None:
        """The inner kernel will not end request ``parent`` (it died): the proxy's idle will."""
        msg_id = parent["header"]["msg_id"]
        if self._status_relayed.pop(msg_id, None) is not None and not busy_relayed:
            self.publish_own_status("busy", parent)

    # -- requests -------------------------------------------------------------

    async def execute_request(self, stream, ident, parent) -> None:
        """Reply as soon as the inner kernel has; take the next request once its output is out.

        The output of a request whose status is the inner kernel's needs no
        wait, except after a failed cell: the inner kernel aborts what
        reaches it until its idle, and the proxy has aborted the requests
        sent before the failure itself, so the next one waits for that idle.
        """
        failures = self.failures
        await super().execute_request(stream, ident, parent)
        if parent["header"]["msg_id"] in self._status_relayed and self.failures == failures:
            return
        # A request still pending is the current relay's; after a restart it is gone.
        if self.inner is not None and self.inner.relay is not None:
            try:
                await self.inner.relay.settle(parent["header"]["msg_id"])
            except InnerKernelDied:
                pass

    def init_metadata(self, parent: dict) -> dict:
        return {}

    def finish_metadata(self, parent: dict, metadata: dict, reply_content: dict) -> dict:
        return self._reply_metadata.get({})

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict | None = None,
        allow_stdin: bool = False,
    ) -> dict:
        notice = self.rescuer.take_notice()
        if notice:
            self.write_stream(notice, self.get_parent("shell"), "stderr")
        restart = parse_restart(code) if isinstance(code, str) else None
        if restart is not None:
            return await self._restart_cell(code, silent, restart)
        self.running_cell = self.get_parent("shell")
        try:
            reply = await self._forward(wait_idle=False)
        finally:
            self.running_cell = None
        self.execution_count = reply.get("execution_count", self.execution_count)
        return reply

    async def do_complete(self, code: str, cursor_pos: int) -> dict:
        return await self._forward()

    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections=()) -> dict:
        return await self._forward()

    async def do_is_complete(self, code: str) -> dict:
        return await self._forward()

    async def do_history(self, *args: t.Any, **kwargs: t.Any) -> dict:
        return await self._forward()

    async def do_debug_request(self, msg: dict) -> dict:
        return await self._forward("control")

    async def comm_info_request(self, stream, ident, parent) -> None:
        await self._relay_reply(stream, ident, parent, "shell")

    async def usage_request(self, stream, ident, parent) -> None:
        await self._relay_reply(stream, ident, parent, "control")

    async def _relay_reply(self, stream, ident, parent, channel: str) -> None:
        """Forward a request that has no ``do_*`` hook and send back the reply as it is."""
        reply = await self._on_main(self._request(parent, ident, channel))
        self.session.send(
            stream, reply["header"]["msg_type"], reply["content"], parent, ident, metadata=reply["metadata"]
        )

    async def comm_open(self, stream, ident, parent) -> None:
        """Comm messages have no reply: forward them, and let the inner kernel's idle end them.

        While a cell runs they are forwarded alongside it, as ipykernel's base
        dispatches them; either way the client gets the inner kernel's own
        busy and idle for them (a status once a blocking cell ends, none beside
        a cell that awaits), and the proxy takes the next message at once.
        """
        await self.ready.wait()
        relay = self.inner.relay if self.inner is not None else None
        msg_id = parent["header"]["msg_id"]
        if relay is None:
            self._take_status_back(parent, busy_relayed=False)
            self._refuse_comm(parent)
            return
        relay.track_client_comm(parent)
        relay_status = msg_id in self._status_relayed or self.running_cell is not None
        if msg_id in self._status_relayed:
            self._status_relayed[msg_id] = True
        relay.send(parent, ident, relay_status=relay_status)
        if not relay_status:
            try:
                await relay.settle(msg_id)
            except InnerKernelDied:
                pass

    comm_msg = comm_close = comm_open

    def _refuse_comm(self, parent: dict) -> None:
        """No inner kernel runs (it died too often, or did not restart): no comm can reach one.

        A comm_open is closed again, as a kernel closes one for a target it
        does not have, so the client does not wait on it.
        """
        msg_type = parent["header"]["msg_type"]
        self.log.warning("Dropped a %s: the kernel is not running; run %%restart to start it", msg_type)
        comm_id = parent["content"].get("comm_id") if isinstance(parent["content"], dict) else None
        if msg_type == "comm_open" and isinstance(comm_id, str):
            self._send_comm_close(comm_id, parent)

    async def kernel_info_request(self, stream, ident, parent) -> None:
        """Answered at once, even during a restart: the same argv gives the same info."""
        if not self._inner_info:
            await self._on_main(self.ready.wait())
        await super().kernel_info_request(stream, ident, parent)

    @property
    def kernel_info(self) -> dict:
        """The inner kernel's own, so a proxied R kernel looks like R."""
        info = {k: v for k, v in self._inner_info.items() if k != "status"}
        features = info.get("supported_features")
        if features is not None:
            info["supported_features"] = [f for f in features if f in FORWARDED_FEATURES]
        return info

    async def interrupt_request(self, stream, ident, parent) -> None:
        await self._interrupt()
        self.session.send(stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident)

    async def _interrupt(self) -> None:
        """Interrupt the inner kernel, by its own interrupt mode; see Rescuer.interrupt."""
        await self._on_main(self.rescuer.interrupt())

    async def shell_main(self, subshell_id: str | None, msg: list) -> None:
        """Order shell messages as a kernel does while the proxy waits on the inner one.

        interrupt_request is served at once, as some clients send it on
        shell.  ipykernel's base takes comm messages alongside whatever holds
        the shell; a kernel only does that while a cell runs, so the proxy
        queues them behind any other request, with a busy and idle each.
        In its turn, a request the inner kernel answers alone is relayed as
        it is (:meth:`_relay_as_is`); the rest take ipykernel's dispatch.
        """
        peek = self._routable(msg)
        if peek is None:
            return
        header = peek["header"]
        if header.get("subshell_id") is not None:
            await self._on_subshell(msg)
            return
        msg_type = header["msg_type"]
        if self.shell_busy:
            if msg_type == "interrupt_request":
                await self.dispatch_now(msg)
                return
            if msg_type in COMM_MSG_TYPES and self.running_cell is not None:
                await super().shell_main(subshell_id, msg)
                return
        await self.dispatch_in_turn(msg, partial(self._relay_as_is, peek=peek) if msg_type in STATUS_RELAYED else None)

    async def _relay_as_is(self, msg: list, peek: dict) -> bool:
        """Relay a request the inner kernel answers alone as the client signed it, and its reply as the kernel did.

        The common case: no ``%restart``, no notice to show, nothing to
        abort, a kernel to answer.  ipykernel's dispatch would re-sign and
        re-serialize both messages for nothing.  False, having consumed
        nothing, when the request needs ipykernel's dispatch.  ``peek`` is
        the message read without its content (see _routable).
        """
        inner = self.inner
        if (
            self.aborts(msg)
            or not self.ready.is_set()
            or inner is None
            or inner.relay is None
            or self.rescuer.has_notice
        ):
            return False
        try:
            content = self.session.unpack(peek["content"])
        except Exception:
            return False
        msg_type = peek["header"]["msg_type"]
        if not (isinstance(content, dict) and isinstance(peek["metadata"], dict)):
            return False
        code = content.get("code")
        if msg_type == "execute_request" and not (isinstance(code, str) and parse_restart(code) is None):
            return False
        idents, frames = self.session.feed_identities(msg, copy=False)
        if self.session.auth is not None:
            try:
                # Checked by _routable when the message came; a replay since is refused now, as ipykernel does.
                spend(self.session, frames[0].bytes)
            except ValueError:
                self.log.error("Invalid Message", exc_info=True)
                return True
        parent = {**peek, "content": content}
        self.set_parent(idents, parent, "shell")
        relay = inner.relay
        relay.track_client_comm(parent)
        pending = relay.forward(frames, parent, idents)
        if msg_type in COMM_MSG_TYPES:
            return True
        if msg_type == "execute_request":
            self.running_cell = parent
        try:
            await relay.request(parent, idents)
        except InnerKernelDied as died:
            if not pending.busy_relayed:
                self.publish_own_status("busy", parent)
            reply = await self._after_death(parent, inner, died)
            self._answer_alone(parent, idents, reply["content"])
            return True
        finally:
            self.running_cell = None
        send_frames(self.shell_stream.socket, [*idents, *pending.reply_frames], copy=False)
        if msg_type == "execute_request":
            await self._after_cell(parent, content, pending.reply.result()["content"], relay)
        return True

    async def _after_cell(self, parent: dict, request: dict, reply: dict, relay) -> None:
        """What a kernel does once it has replied to a cell: count it, and abort what was sent before an error."""
        self.execution_count = reply.get("execution_count", self.execution_count)
        if reply.get("status") == "error" and not request.get("silent") and request.get("stop_on_error", True):
            self._abort_queues()
            # The inner kernel aborts what reaches it until its idle.
            try:
                await relay.settle(parent["header"]["msg_id"])
            except InnerKernelDied:
                pass

    def _routable(self, msg: list) -> dict | None:
        """A shell message read without its content, or None (logged) for one ipykernel refuses before busy.

        ipykernel 7's shell channel thread reads each message's header, and a
        comm_msg's or comm_close's content, to route it; a message it cannot
        read that way is dropped without a status.
        """
        try:
            _, frames = self.session.feed_identities(msg, copy=False)
            header_only = read(self.session, frames, content=False)
            msg_type = header_only["header"]["msg_type"]
            if msg_type in ("comm_msg", "comm_close"):
                self.session.unpack(header_only["content"]).get("comm_id")
        except Exception:
            self.log.error("Invalid message", exc_info=True)
            return None
        return header_only

    def pre_handler_hook(self) -> None:
        """SIGINT is the inner kernel's business: the proxy's handler forwards it."""

    def post_handler_hook(self) -> None:
        pass

    def _send_input_request(self, msg: dict, pending: Pending) -> None:
        """The inner kernel's input_request, to the client that sent the request asking for input."""
        self.session.send(
            self.stdin_socket, "input_request", msg["content"], parent=pending.parent, ident=pending.ident
        )

    def _on_stdin(self, frames: list) -> None:
        """The client's input_reply, for the inner kernel's pending input_request."""
        try:
            _, frames = self.session.feed_identities(frames, copy=False)
            msg = self.session.deserialize(frames, content=True, copy=False)
        except Exception:
            self.log.warning("Dropped a malformed message on stdin", exc_info=True)
            return
        if self.inner is not None and self.inner.relay is not None:
            self.inner.relay.input_reply(msg)

    # -- %restart -------------------------------------------------------------

    async def _restart_cell(self, code: str, silent: bool, cell: RestartCell) -> dict:
        parent = self.get_parent("shell")
        # A count of its own, not 0: JupyterLab leaves a cell whose reply
        # counts 0 showing [*] as if it still ran. The next cell is [1].
        count = self.execution_count
        if not silent:
            self.publish_own_execute_input(code, parent, count)
        if cell.options in (["--help"], ["-h"]):
            self.write_stream(RESTART_HELP, parent)
            return self._ok(count)
        usage = cell.error
        if usage is None and cell.options not in ([], ["--cold"]):
            usage = f"%restart takes no option {' '.join(cell.options)!r}; see %restart --help"
        if usage is not None:
            # As IPython shows a UsageError: one line on stderr, no traceback.
            self.write_stream(f"UsageError: {usage}\n", parent, "stderr")
            return {
                "status": "error",
                "ename": "UsageError",
                "evalue": usage,
                "traceback": [],
                "execution_count": count,
            }
        try:
            await self.restart_in_place(parent, cold=cell.options == ["--cold"])
        except Exception as e:
            return self._error_reply(parent, "RestartError", f"The kernel did not restart: {e}")["content"]
        if cell.rest.strip():
            return await self.do_execute_rest(parent, cell.rest)
        return self._ok(count)

    async def do_execute_rest(self, parent: dict, rest: str) -> dict:
        """Run the lines after ``%restart`` in the new kernel, as part of the same cell."""
        reply = await self._forward(content={**parent["content"], "code": rest}, skip_execute_input=True)
        self.execution_count = reply.get("execution_count", self.execution_count)
        return reply

    async def restart_in_place(self, parent: dict | None, cold: bool = False) -> None:
        """Replace the inner kernel with a new one; the client stays connected.

        The old kernel shuts down while the new one starts.  The client is
        told what a restart means for it: the old kernel's comms are closed,
        and the kernel reports ``starting`` (never ``restarting``, which
        JupyterLab takes for a dead kernel restarted by the server).  The
        cell ``parent`` is told how long it took.  With standby the spare
        takes over at once, unless ``cold``, and the old kernel shuts down in
        the background.
        """
        started = time.monotonic()
        old = self.inner
        self.ready.clear()
        if old is not None and old.relay is not None:
            self._close_comms(old.relay.comms)
        try:
            new = await self.kernels.replace(cold)
        except BaseException:
            self.ready.set()
            raise
        await self._carry_subshells(new)
        self.execution_count = 0
        self.session.send(
            self.iopub_socket, "status", {"execution_state": "starting"}, parent={}, ident=self.topic("status")
        )
        message = f"Restarted the kernel in place in {time.monotonic() - started:.1f} s"
        # A warning, so that the server's log shows every restart, however asked for.
        self.log.warning("%s", message)
        if parent is not None:
            self.write_stream(message + "\n", parent)
        self._use(new)

    def _close_comms(self, comms: dict[str, str]) -> None:
        parent = self.get_parent("shell")
        for comm_id in list(comms):
            self._send_comm_close(comm_id, parent)
        comms.clear()

    def _send_comm_close(self, comm_id: str, parent: dict) -> None:
        """Close a comm on the client's side, as its kernel would."""
        self.session.send(
            self.iopub_socket, "comm_close", {"comm_id": comm_id, "data": {}}, parent, ident=self.topic("comm_close")
        )

    def write_stream(self, text: str, parent: dict, name: str = "stdout") -> None:
        """Write into the output of request ``parent``, as the kernel's stdout or stderr."""
        self.session.send(
            self.iopub_socket, "stream", {"name": name, "text": text}, parent, ident=f"stream.{name}".encode()
        )

    def _ok(self, execution_count: int) -> dict:
        return {"status": "ok", "execution_count": execution_count, "payload": [], "user_expressions": {}}

    # -- subshells ------------------------------------------------------------

    @property
    def _inner_has_subshells(self) -> bool:
        return SUBSHELLS in self._inner_info.get("supported_features", ())

    async def _on_subshell(self, msg: list) -> None:
        """Forward a request for a subshell as it arrives, and relay the inner kernel's answer.

        The inner kernel runs each subshell in a thread of its own, orders its
        requests, aborts them after an error and reports busy and idle for
        them; the proxy passes all of that on, so a subshell's request never
        waits behind the main shell's, or another subshell's, in the proxy.
        """
        ident, frames = self.session.feed_identities(msg, copy=False)
        try:
            parent = self.session.deserialize(frames, content=True, copy=False)
        except Exception:
            self.log.error("Invalid message", exc_info=True)
            return
        msg_type, content = parent["header"]["msg_type"], parent["content"]
        code = content.get("code") if isinstance(content, dict) else None
        if msg_type == "execute_request" and isinstance(code, str) and parse_restart(code) is not None:
            usage = "%restart restarts the whole kernel: run it in the notebook, not in a subshell"
            self.publish_own_status("busy", parent)
            self.write_stream(f"UsageError: {usage}\n", parent, "stderr")
            reply = {"status": "error", "ename": "UsageError", "evalue": usage, "traceback": []}
            self._answer_alone(parent, ident, {**reply, "execution_count": self.execution_count})
            return
        await self.ready.wait()
        inner = self.inner
        if inner is None or inner.relay is None:
            self.publish_own_status("busy", parent)
            reply = self._error_reply(parent, "DeadKernelError", "The kernel is not running; run %restart to start it")
            self._answer_alone(parent, ident, reply["content"])
            return
        relay = inner.relay
        subshell_id = parent["header"]["subshell_id"]
        if isinstance(subshell_id, str):
            subshell_id = self.subshells.get(subshell_id, subshell_id)
        relay.track_client_comm(parent)
        pending = relay.send(parent, ident, relay_status=True, subshell_id=subshell_id)
        if msg_type in COMM_MSG_TYPES:
            return
        try:
            reply = await relay.request(parent, ident, wait_idle=False)
        except InnerKernelDied as died:
            if not pending.busy_relayed:
                self.publish_own_status("busy", parent)
            reason = await self.rescuer.after_death(inner, str(died), None)
            self._answer_alone(parent, ident, self._error_reply(parent, "DeadKernelError", reason)["content"])
            return
        self.session.send(
            self.shell_stream, reply["header"]["msg_type"], reply["content"], parent, ident, metadata=reply["metadata"]
        )
        try:
            await relay.settle(parent["header"]["msg_id"])
        except InnerKernelDied:
            self.publish_own_status("idle", parent)

    def _answer_alone(self, parent: dict, ident: list, content: dict) -> None:
        """End a request the inner kernel cannot answer, after its busy: the proxy's reply, then idle."""
        reply_type = parent["header"]["msg_type"].replace("_request", "_reply")
        self.session.send(self.shell_stream, reply_type, content, parent, ident)
        self.publish_own_status("idle", parent)

    async def create_subshell_request(self, stream, ident, parent) -> None:
        await self._subshell_control(stream, ident, parent)

    delete_subshell_request = list_subshell_request = create_subshell_request

    async def _subshell_control(self, stream, ident, parent) -> None:
        """Create, delete or list subshells in the inner kernel, under the ids the client holds.

        A kernel without subshells gets none of these (ipykernel's base logs
        them and sends no reply, as such a kernel does).
        """
        msg_type = parent["header"]["msg_type"]
        if not self._inner_has_subshells:
            await getattr(super(), msg_type)(stream, ident, parent)
            return
        reply = await self._on_main(self._forward_subshell_control(parent, ident))
        msg_type, content, metadata = reply["header"]["msg_type"], reply["content"], reply["metadata"]
        self.session.send(stream, msg_type, content, parent, ident, metadata=metadata)

    async def _forward_subshell_control(self, parent: dict, ident: list) -> dict:
        """On the main loop, where the map of subshell ids changes at a restart."""
        await self.ready.wait()
        msg_type, content = parent["header"]["msg_type"], parent["content"]
        options = {}
        client_id = content.get("subshell_id") if isinstance(content, dict) else None
        if msg_type == "delete_subshell_request" and isinstance(client_id, str) and client_id in self.subshells:
            options["content"] = {**content, "subshell_id": self.subshells[client_id]}
        reply = await self._request(parent, ident, "control", **options)
        answer = reply["content"]
        if answer.get("status") != "ok":
            return reply
        if msg_type == "create_subshell_request" and isinstance(answer.get("subshell_id"), str):
            self.subshells[answer["subshell_id"]] = answer["subshell_id"]
        elif msg_type == "delete_subshell_request":
            self.subshells.pop(client_id, None)
        elif msg_type == "list_subshell_request" and isinstance(answer.get("subshell_id"), list):
            client_ids = {inner_id: client_id for client_id, inner_id in self.subshells.items()}
            answer["subshell_id"] = [client_ids.get(inner_id, inner_id) for inner_id in answer["subshell_id"]]
        return reply

    async def _carry_subshells(self, inner: InnerKernel) -> None:
        """Create the client's subshells again in a new inner kernel, so the ids it holds keep working.

        A subshell console stays open across %restart (JupyterLab forgets its
        subshells only on a ``restarting`` status, which the proxy never
        sends), so each client id is mapped to a new subshell of the new
        kernel; the subshell starts fresh, as the main shell does.
        """
        if not self.subshells or inner.relay is None:
            return
        if SUBSHELLS not in inner.kernel_info.get("supported_features", ()):
            self.subshells.clear()
            return
        client_ids = list(self.subshells)
        created = await asyncio.gather(*(inner.relay.create_subshell() for _ in client_ids), return_exceptions=True)
        for client_id, subshell_id in zip(client_ids, created, strict=True):
            if isinstance(subshell_id, str):
                self.subshells[client_id] = subshell_id
            else:
                self.log.warning("Subshell %s was not created again: %s", client_id, subshell_id)
                del self.subshells[client_id]
