"""The kernel the client talks to: a wrapper kernel that relays to the inner kernel.

ipykernel's ``Kernel`` base (through kernelbase.WrapperKernelBase) does what
any kernel does for the client: the order of requests, aborting after a
failed cell, replies, the control thread.  :meth:`ProxyKernel.shell_main`
reads each shell message once and decides once:

- the proxy's own (kernel_info, interrupt, shutdown, the comms of its
  ``inplace_restarter.job`` target (jobstate), what it cannot read),
  ``%restart`` cells (:meth:`ProxyKernel._restart_cell`, which calls
  restart.InPlaceRestarter) and cells a failed cell aborts take ipykernel's
  dispatch, with the proxy's busy and idle;
- everything else, of the main shell or a subshell, comm messages included,
  goes through :meth:`ProxyKernel._forward` to Relay.forward, and the client
  gets the inner kernel's own busy and idle, reply and output as it sent them;
  with no inner kernel to answer, the proxy answers (:meth:`ProxyKernel._answer_dead`).

Control requests are taken one at a time, in order, as a kernel takes them
(:meth:`ProxyKernel.dispatch_control`): the proxy's own (interrupt, shutdown,
kernel_info, connect; Jupyter's own restart arrives as a shutdown_request, see
:meth:`ProxyKernel.shutdown_request`), subshell requests under the ids the
client holds (:meth:`ProxyKernel._relay_control`), and every other request,
whatever its type, relayed as it came, its reply and status the inner kernel's.
"""

from __future__ import annotations

import asyncio
import atexit
import shlex
import signal
import typing as t
from contextvars import ContextVar
from dataclasses import dataclass

from jupyter_client.kernelspec import KernelSpec
from traitlets import Bool, Instance
from zmq.eventloop.zmqstream import ZMQStream

from .frames import read, send_frames, spend
from .inner import InnerKernel, InnerKernels
from .job import Job, JobNotices, watch_end, where
from .jobstate import COMM_MSG_TYPES, JobState
from .kernelbase import WrapperKernelBase
from .prelaunch import Prelaunched
from .provisioner import REPLY_KEY
from .relay import InnerKernelDied, Pending, Unanswered
from .rescue import RescuePolicy, Rescuer
from .restart import InPlaceRestarter
from .subshells import CONTROL_TYPES as SUBSHELL_CONTROL
from .subshells import SUBSHELLS, Subshells, has_subshells

RESTART_HELP = """\
%restart [--cold] [--info] [--help]

Restart the kernel behind this notebook in place: the kernel process is shut
down and started again with the same command, environment and working
directory, while the notebook stays connected to the same kernel (and a batch
job keeps its allocation).  All variables are lost, as with a normal restart.
Lines after %restart in the same cell run in the new kernel.

With a standby kernel (the proxy's --standby option) %restart swaps to the
spare at once; --cold starts a new kernel instead, e.g. after a pip install.

%restart --info says where the kernel runs (the Slurm job, its node and the
time left) and its memory limit, and restarts nothing.  In a Slurm job the
notebook is warned before the job's time limit (JobNotices.warn_before, in
seconds; JobNotices.enabled=False turns the warnings off).
"""
#: what each option of %restart does, given alone; no option restarts
RESTART_OPTIONS = {"--help": "help", "-h": "help", "--info": "info", "--cold": "cold"}

#: kernel_info supported_features that work through the proxy.
FORWARDED_FEATURES = ("debugger", SUBSHELLS)
#: shell messages the inner kernel answers, relayed with its own busy and idle
RELAYED = frozenset(
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


#: control requests the proxy answers itself (kernel_info and connect as on shell: the same argv, its own ports)
OWN_CONTROL = frozenset({"interrupt_request", "shutdown_request", "kernel_info_request", "connect_request"})


@dataclass
class RestartCell:
    """A cell whose first non-blank line is ``%restart``."""

    options: list[str]
    #: the code after the ``%restart`` line, run in the new kernel
    rest: str
    #: why the options do not parse (an unclosed quote), for a UsageError
    error: str | None = None

    @property
    def action(self) -> str | None:
        """``restart``, ``cold``, ``info`` or ``help``; None for options %restart does not take (see usage)."""
        if not self.options:
            return "restart"
        return RESTART_OPTIONS.get(self.options[0]) if len(self.options) == 1 else None

    @property
    def usage(self) -> str | None:
        """Why the cell is a usage error, if it is: its line does not split, or %restart takes no such options."""
        if self.error is not None or self.action is not None:
            return self.error
        return f"%restart takes no option {' '.join(self.options)!r}; see %restart --help"


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

    inner_spec = Instance(KernelSpec, help="The spec of the kernel behind the proxy.")

    standby = Bool(
        False,
        config=True,
        help="Keep a spare inner kernel started and idle, so that %restart swaps to it at once. "
        "Costs the memory of a second kernel; a spare started before a change to the environment "
        "(a pip install) may not see it: %restart --cold starts a new kernel instead.",
    )
    encrypted = Bool(False, help="Whether the client's link is encrypted (CurveZMQ): then the inner kernel's too.")
    jupyter_restarts_in_place = Bool(
        False,
        config=True,
        help="Answer Jupyter's own restart (the Restart button, restart_kernel) by restarting the kernel in place "
        "and staying: set by inplace_restarter's provisioner, which then keeps this process (--jupyter-restarts-in-place).",
    )

    def __init__(self, **kwargs: t.Any):
        super().__init__(**kwargs)
        #: the Slurm job the proxy runs in (None outside Slurm), and when to warn before its end
        self.job = Job.from_environ(parent=self, log=self.log)
        self.notices = JobNotices(parent=self, log=self.log)
        self._job_watch: asyncio.Task | None = None
        self.kernels = InnerKernels(
            self.inner_spec,
            self.session,
            self.iopub_thread,
            self._send_input_request,
            standby=self.standby,
            job=self.job,
            encrypted=self.encrypted,
            parent=self,
            log=self.log,
        )
        self.subshells = Subshells(self.log)
        self.restarter = InPlaceRestarter(self.kernels, self.subshells, self._publish, self.log, self.job)
        self.restarter.add_callback(self._serve)
        self.rescuer = Rescuer(RescuePolicy(parent=self), self.restarter, self.log)
        self.jobstate = JobState(self, parent=self, log=self.log)
        #: the serving inner kernel's kernel_info, kept through a restart (the same argv gives the same info)
        self._inner_info: dict = {}
        #: the inner kernel's metadata of the reply to the code after %restart, for finish_metadata
        self._reply_metadata: ContextVar[dict] = ContextVar("reply_metadata")
        atexit.register(self.cleanup)

    def adopt(self, prelaunched: Prelaunched) -> None:
        """Take over an inner kernel launched before the proxy was ready (see prelaunch)."""
        self.kernels.adopt(prelaunched)

    # -- startup and shutdown ---------------------------------------------------

    def start(self) -> None:
        super().start()
        self._loop = self.io_loop.asyncio_loop
        self._loop.add_signal_handler(signal.SIGINT, lambda: self._loop.create_task(self._interrupt()))
        self._loop.add_signal_handler(signal.SIGTERM, self._terminate)
        self._stdin_stream = ZMQStream(self.stdin_socket)
        self._stdin_stream.on_recv(self._on_stdin, copy=False)
        self.io_loop.add_callback(self._start_inner)
        if self.job is not None:
            self._job_watch = self._loop.create_task(self._watch_job())

    async def _start_inner(self) -> None:
        try:
            await self.restarter.start()
        except Exception as e:
            self.log.critical("The inner kernel did not start: %s", e)
            self.io_loop.stop()

    async def _watch_job(self) -> None:
        """Read when the job ends (for %restart's message), then tell the notebook each notice as it falls due.

        Reading Slurm is bounded and never raises (see job.Job); this task
        only sleeps in between, so no request waits on it.
        """
        try:
            await self.job.end_time()
            await watch_end(self.job, self.notices, self._notice_of_job)
        except Exception:
            self.log.exception("Watching the end of Slurm job %s failed: no more notices", self.job.id)

    def _notice_of_job(self, notice: str) -> None:
        # INFO: the notebook shows it; a client that shows stderr must not show it twice.
        self.log.info("%s", notice)
        self.rescuer.tell(notice)
        self.jobstate.notice("time-limit", notice)

    def _serve(self, inner: InnerKernel) -> None:
        """A new inner kernel serves the client (see InPlaceRestarter.use): its info, session id and counts.

        The relay passes the kernel's output on as it was signed, so the
        proxy's own messages (status, replies) take on the same session id:
        JupyterLab drops what it is still handling of any session but the
        newest message's, as after any kernel restart.
        """
        self._inner_info = inner.kernel_info
        if inner.session_id.isascii():
            self.session.session = inner.session_id
        self.execution_count = 0

    def _terminate(self) -> None:
        """SIGTERM: take the inner kernel down with us, at once."""
        self.log.info("Terminated; killing the inner kernel")
        self.cleanup()
        self.io_loop.stop()

    def cleanup(self) -> None:
        """Last resort at exit: nothing the proxy started may outlive it."""
        self.kernels.kill_all()
        if self.job is not None:
            self.job.kill()

    async def shutdown_request(self, stream, ident, parent) -> None:
        """Jupyter's own restart, from a launcher that keeps this process, restarts in place.

        The provisioner reads the reply's REPLY_KEY as the promise that this
        process stays; any other shutdown_request ends the proxy as usual.
        """
        if not (parent["content"].get("restart") and self.jupyter_restarts_in_place):
            await super().shutdown_request(stream, ident, parent)
            return
        await self._on_main(self.restarter.restart_soon())
        content = {"status": "ok", "restart": True, REPLY_KEY: True}
        self.session.send(stream, "shutdown_reply", content, parent, ident=ident)

    async def do_shutdown(self, restart: bool) -> dict:
        await self._on_main(self._shutdown())
        return {"status": "ok", "restart": restart}

    async def _shutdown(self) -> None:
        self.jobstate.stop()
        if self._job_watch is not None:
            # Cancelled, a reading kills the Slurm command it waits on.
            self._job_watch.cancel()
            await asyncio.gather(self._job_watch, return_exceptions=True)
        await self.kernels.shutdown()

    async def _on_main(self, coro: t.Awaitable) -> t.Any:
        """Run ``coro`` on the main loop, where the inner kernel's sockets live.

        Control requests arrive on ipykernel's control thread.
        """
        if asyncio.get_running_loop() is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # -- the shell: each message read once, decided once --------------------------

    async def shell_main(self, subshell_id: str | None, msg: list) -> None:
        """Decide once what a shell message needs, in the order a kernel keeps.

        The proxy's own (kernel_info, interrupt, shutdown, its comm target's
        messages, what it cannot read) take ipykernel's dispatch, in turn; an
        interrupt or a comm message at once while another request runs, as
        ipykernel takes them.  A subshell's
        requests are relayed as they come (the inner kernel orders them),
        and so are comm messages while a cell runs, as a kernel takes them
        then; every other request is relayed in its turn (:meth:`_relay`).
        """
        routed = self._routable(msg)
        if routed is None:
            return
        request = routed[2]
        header = request["header"]
        msg_type = header["msg_type"]
        if header.get("subshell_id") is not None:
            await self._relay(msg, *routed)
        elif msg_type not in RELAYED or self.jobstate.owns(request, self.session):
            if msg_type in ("interrupt_request", *COMM_MSG_TYPES) and self.main_shell.locked():
                await self.dispatch(msg, concurrent=True)
                return
            async with self.main_shell:
                await self.dispatch(msg)
        elif msg_type in COMM_MSG_TYPES and self.rescuer.running_cell is not None:
            await self._relay(msg, *routed)
        else:
            async with self.main_shell:
                await self._relay(msg, *routed)

    def _routable(self, msg: list) -> tuple[list, list, dict] | None:
        """A shell message's identities, frames and header-read message; None (logged) if ipykernel refuses it.

        ipykernel 7's shell channel thread reads each message's header, and a
        comm_msg's or comm_close's content, to route it; a message it cannot
        read that way is dropped without a status.  The content stays packed.
        """
        try:
            idents, frames = self.session.feed_identities(msg, copy=False)
            request = read(self.session, frames, content=False)
            if request["header"]["msg_type"] in ("comm_msg", "comm_close"):
                self.session.unpack(request["content"]).get("comm_id")
        except Exception:
            self.log.error("Invalid message", exc_info=True)
            return None
        return idents, frames, request

    async def _relay(self, msg: list, idents: list, frames: list, request: dict) -> None:
        """A request the inner kernel answers: a ``%restart`` cell, an aborted one and a malformed one excepted.

        A request of the main shell that ipykernel refuses before replying
        (its content not an object; a cell without code, or with metadata
        that is not an object) takes ipykernel's dispatch, which refuses it
        as the inner kernel would, as do ``%restart`` cells
        (:meth:`do_execute`) and cells a failed cell aborts.  A subshell's
        requests all go to the inner kernel, which orders them.  A cell after
        the inner kernel died while idle shows the notice first, under the
        proxy's own status.
        """
        header = request["header"]
        msg_type, on_subshell = header["msg_type"], header.get("subshell_id") is not None
        try:
            content = self.session.unpack(request["content"])
        except Exception:
            content = None
        execute = msg_type == "execute_request"
        # ipykernel 7.4 reads a cell's metadata before it replies, and no other request's.
        readable = isinstance(content, dict) and (not execute or isinstance(request["metadata"], dict))
        code = content.get("code") if readable and execute else None
        cell = parse_restart(code) if isinstance(code, str) else None
        if not on_subshell and (
            not readable or cell is not None or (execute and ("code" not in content or self.aborts(msg)))
        ):
            await self.dispatch(msg)
            return
        if not self._spent(frames):
            return
        parent = {**request, "content": content}
        if cell is not None:
            self._refuse_restart(parent, idents, "a subshell")
            return
        notice = self.rescuer.take_notice() if execute and not on_subshell else None
        if notice is None:
            await self._forward(parent, idents, frames)
            return
        self.publish_status("busy", parent)
        self._tell(notice, parent, "stderr")
        await self._forward(parent, idents, own_status=True)
        self.publish_status("idle", parent)

    def _spent(self, frames: list) -> bool:
        """Record a relayed request's signature against replays; False (logged) for a replay, refused as ipykernel does.

        Checked when the message came; a replay since is refused now.
        """
        if self.session.auth is None:
            return True
        try:
            spend(self.session, frames[0].bytes)
        except ValueError:
            self.log.error("Invalid Message", exc_info=True)
            return False
        return True

    def _refuse_restart(self, parent: dict, idents: list, where: str, channel: str = "shell") -> None:
        """A ``%restart`` cell where it cannot restart the whole kernel: a usage error, as IPython shows one."""
        usage = f"%restart restarts the whole kernel: run it in the notebook, not in {where}"
        self.publish_status("busy", parent)
        self._tell(f"UsageError: {usage}\n", parent, "stderr")
        error = {"status": "error", "ename": "UsageError", "evalue": usage, "traceback": []}
        self._reply(parent, idents, {**error, "execution_count": self.execution_count}, channel)
        self.publish_status("idle", parent)

    async def _forward(
        self,
        parent: dict,
        idents: list,
        frames: list | None = None,
        *,
        own_status: bool = False,
        answer: bool = True,
        **options: t.Any,
    ) -> dict:
        """Forward the client's request to the inner kernel: the one way every request it answers takes.

        Returns the reply message.  ``frames`` (from the signature on) are
        sent as the client signed them.  With ``answer`` the reply goes to
        the client as the inner kernel sent it; without, the caller answers
        (ipykernel's dispatch of a ``%restart`` cell, a control request).
        The request's busy and idle are the inner kernel's unless
        ``own_status``: then the caller sends the proxy's own, and this
        returns only once the request's output has been relayed, so that
        the proxy's idle comes last.  ``options`` go to Relay.forward.
        """
        await self.restarter.ready.wait()
        channel = options.get("channel", "shell")
        inner = self.kernels.current
        if inner is None or inner.relay is None:
            reason = "The kernel is not running; run %restart to start it"
            return self._answer_dead(parent, idents, reason, own_status, False, answer, channel)
        relay = inner.relay
        header = parent["header"]
        msg_type, subshell_id = header["msg_type"], header.get("subshell_id")
        if msg_type in COMM_MSG_TYPES:
            relay.track_client_comm(parent)
        if subshell_id is not None:
            options["subshell_id"] = self.subshells.inner_id(subshell_id)
        await relay.connect(idents)
        pending = relay.forward(parent, idents, frames, relay_status=not own_status, **options)
        if not pending.has_reply:
            return {}
        cell = msg_type == "execute_request" and subshell_id is None and channel == "shell"
        if cell:
            self.rescuer.running_cell = parent
        try:
            reply = await relay.reply(pending, wait_idle=own_status)
        except InnerKernelDied as died:
            reason = await self.rescuer.after_death(inner, str(died), parent if cell else None)
            return self._answer_dead(parent, idents, reason, own_status, pending.busy_relayed, answer, channel)
        except Unanswered:
            # The inner kernel took the request and will not reply (a type it does not know): no client waits forever.
            content = self._error(parent, "UnansweredRequest", f"The kernel does not answer {msg_type}")
            if answer:
                self._reply(parent, idents, content, channel)
            return {"header": {"msg_type": msg_type.replace("_request", "_reply")}, "content": content, "metadata": {}}
        finally:
            if cell:
                self.rescuer.running_cell = None
        if msg_type == "execute_request":
            # The one place the count is kept: the inner kernel's.
            self.execution_count = reply["content"].get("execution_count", self.execution_count)
        if not answer:
            return reply
        self._to_client(channel, [*idents, *pending.reply_frames])
        if cell and reply["content"].get("status") == "error":
            content = parent["content"]
            if not content.get("silent") and content.get("stop_on_error", True):
                # As a kernel does: abort what was sent before the failure's reply; the inner
                # kernel aborts what reaches it until its idle, so the next request waits for that.
                self.abort_queued()
                try:
                    await relay.settle(header["msg_id"])
                except InnerKernelDied:
                    pass
        return reply

    def _answer_dead(
        self,
        parent: dict,
        idents: list,
        reason: str,
        own_status: bool,
        busy_relayed: bool,
        answer: bool,
        channel: str = "shell",
    ) -> dict:
        """The proxy's answer to a request no inner kernel will answer (none runs, or it died on it).

        The proxy ends what the inner kernel would have: the busy, if its own
        did not reach the client, the error, the reply and the idle.  A
        comm_open is closed again, as a kernel closes one for a target it
        does not have, so the client does not wait on it.
        """
        msg_type = parent["header"]["msg_type"]
        if not own_status and not busy_relayed:
            self.publish_status("busy", parent)
        if msg_type in COMM_MSG_TYPES:
            self.log.warning("Dropped a %s: %s", msg_type, reason)
            comm_id = parent["content"].get("comm_id") if isinstance(parent["content"], dict) else None
            if msg_type == "comm_open" and isinstance(comm_id, str):
                self._publish("comm_close", {"comm_id": comm_id, "data": {}}, parent)
            content = {}
        else:
            content = self._error(parent, "DeadKernelError", reason)
            if answer:
                self._reply(parent, idents, content, channel)
        if not own_status:
            self.publish_status("idle", parent)
        return {"header": {"msg_type": msg_type.replace("_request", "_reply")}, "content": content, "metadata": {}}

    def _error(self, parent: dict, ename: str, evalue: str) -> dict:
        """The reply content (and, for a cell, the iopub error) of a failure of the proxy's own."""
        content = {"status": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        if parent["header"]["msg_type"] == "execute_request":
            self._publish("error", content, parent)
            content = {**content, "execution_count": self.execution_count}
        return content

    def _reply(self, parent: dict, idents: list, content: dict, channel: str = "shell") -> None:
        """A reply of the proxy's own on ``channel``."""
        reply_type = parent["header"]["msg_type"].replace("_request", "_reply")
        if channel == "shell":
            self.session.send(self.shell_stream, reply_type, content, parent, idents)
            return
        msg = self.session.msg(reply_type, content, parent)
        self._to_client(channel, self.session.serialize(msg, ident=idents))

    def _to_client(self, channel: str, frames: list) -> None:
        """A message for the client's shell or control socket, sent from the thread that owns that socket.

        On control, behind the replies ipykernel's dispatch queued there.
        """
        if channel == "control":
            self.control_thread.io_loop.add_callback(self.control_stream.send_multipart, frames, copy=False)
        else:
            send_frames(self.shell_stream.socket, frames, copy=False)

    def _publish(self, msg_type: str, content: dict, parent: dict) -> None:
        """A message of the proxy's own on the client's iopub."""
        topic = f"stream.{content['name']}".encode() if msg_type == "stream" else self.topic(msg_type)
        self.session.send(self.iopub_socket, msg_type, content, parent, ident=topic)

    def _tell(self, text: str, parent: dict, name: str = "stdout") -> None:
        """Write into the output of request ``parent``, as the kernel's stdout or stderr."""
        self._publish("stream", {"name": name, "text": text}, parent)

    # -- %restart -------------------------------------------------------------

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
        """A cell ipykernel dispatches: a ``%restart`` cell (see _relay), or a cell sent on control."""
        parent = self.get_parent("shell")
        cell = parse_restart(code) if isinstance(code, str) else None
        if cell is not None:
            return await self._restart_cell(parent, silent, cell)
        reply = await self._forward(parent, self.parent_ident("shell"), own_status=True, answer=False)
        self._reply_metadata.set(reply["metadata"])
        return reply["content"]

    async def _restart_cell(self, parent: dict, silent: bool, cell: RestartCell) -> dict:
        """Where ``%restart`` is handled: options, then the restart (restart.InPlaceRestarter), then the rest."""
        # A count of its own, not 0: JupyterLab leaves a cell whose reply
        # counts 0 showing [*] as if it still ran. The next cell is [1].
        count = self.execution_count
        if cell.action == "help":
            self._tell(RESTART_HELP, parent)
            return self._ok(count)
        if cell.action == "info":
            self._tell(self._info(), parent)
            return self._ok(count)
        usage = cell.usage
        if usage is not None:
            # As IPython shows a UsageError: one line on stderr, no traceback.
            self._tell(f"UsageError: {usage}\n", parent, "stderr")
            return {
                "status": "error",
                "ename": "UsageError",
                "evalue": usage,
                "traceback": [],
                "execution_count": count,
            }
        try:
            await self._on_main(self.restarter.restart(parent, cold=cell.action == "cold"))
        except Exception as e:
            return self._error(parent, "RestartError", f"The kernel did not restart: {e}")
        if not cell.rest.strip():
            return self._ok(count)
        # The lines after %restart run in the new kernel, as part of the same cell.
        rest = {**parent["content"], "code": cell.rest}
        reply = await self._forward(
            parent, self.parent_ident("shell"), own_status=True, answer=False, content=rest, skip_execute_input=True
        )
        self._reply_metadata.set(reply["metadata"])
        return reply["content"]

    def _info(self) -> str:
        """``%restart --info``: where the kernel runs, its job and the time left as last read, its memory limit."""
        job = self.job
        text = f"The kernel runs {'in ' if job is not None else ''}{where(job)}"
        if job is not None and job.end is not None:
            text += f" (time limit {job.time_limit}, until {job.end:%Y-%m-%d %H:%M:%S})"
        elif job is not None and not job.known:
            text += " (Slurm has not said when it ends)"
        inner = self.kernels.current
        memory = inner.witness.memory() if inner is not None and inner.witness is not None else None
        return f"{text}\n{memory}\n" if memory else f"{text}\n"

    def _ok(self, execution_count: int) -> dict:
        return {"status": "ok", "execution_count": execution_count, "payload": [], "user_expressions": {}}

    # -- the proxy's own requests -----------------------------------------------

    async def kernel_info_request(self, stream, ident, parent) -> None:
        """Answered at once, even during a restart: the same argv gives the same info."""
        if not self._inner_info:
            await self._on_main(self.restarter.ready.wait())
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

    def pre_handler_hook(self) -> None:
        """SIGINT is the inner kernel's business: the proxy's handler forwards it."""

    def post_handler_hook(self) -> None:
        pass

    # -- control requests the inner kernel answers ----------------------------------

    async def dispatch_control(self, msg: list) -> None:
        """Each control request in its turn, one at a time, as ipykernel takes them, beside whatever shell runs.

        The proxy's own and subshell requests take ipykernel's dispatch, with
        the proxy's busy and idle; every other one goes to the inner kernel as
        the client signed it, on its control channel, and the client gets the
        inner kernel's status, output and reply (:meth:`_relay_on_control`).
        """
        async with self.control_turn:
            routed = self._routable(msg)
            if routed is None:
                return
            idents, frames, request = routed
            try:
                content = self.session.unpack(request["content"])
            except Exception:
                content = None
            msg_type = request["header"]["msg_type"]
            # Content that is not an object: ipykernel's dispatch refuses it as the inner kernel would.
            if msg_type in OWN_CONTROL or msg_type in SUBSHELL_CONTROL or not isinstance(content, dict):
                await self.process_control(msg)
            else:
                await self._on_main(self._relay_on_control(idents, frames, {**request, "content": content}))

    async def _relay_on_control(self, idents: list, frames: list, parent: dict) -> None:
        """A control request the inner kernel answers, on the main loop; a ``%restart`` cell is refused."""
        if not self._spent(frames):
            return
        code = parent["content"].get("code")
        if parent["header"]["msg_type"] == "execute_request" and isinstance(code, str) and parse_restart(code):
            self._refuse_restart(parent, idents, "a request on the control channel", "control")
            return
        await self._forward(parent, idents, frames, channel="control")

    async def _relay_control(self, stream, ident, parent) -> None:
        """Forward a subshell request on control; ipykernel's control thread sends the status.

        A kernel without subshells gets no subshell request (ipykernel's base
        logs it and sends no reply, as such a kernel does); the others get
        them under the ids the client holds (see subshells).
        """
        msg_type = parent["header"]["msg_type"]
        if msg_type in SUBSHELL_CONTROL and not has_subshells(self._inner_info):
            await getattr(super(), msg_type)(stream, ident, parent)
            return
        reply = await self._on_main(self._forward_control(parent, ident))
        msg_type, content, metadata = reply["header"]["msg_type"], reply["content"], reply["metadata"]
        self.session.send(stream, msg_type, content, parent, ident, metadata=metadata)

    create_subshell_request = delete_subshell_request = list_subshell_request = _relay_control

    async def _forward_control(self, parent: dict, ident: list) -> dict:
        """On the main loop, where the map of subshell ids changes at a restart."""
        await self.restarter.ready.wait()
        subshells = parent["header"]["msg_type"] in SUBSHELL_CONTROL
        content = self.subshells.request_content(parent) if subshells else None
        reply = await self._forward(parent, ident, channel="control", own_status=True, answer=False, content=content)
        if subshells:
            self.subshells.answered(parent, reply)
        return reply

    # -- stdin ----------------------------------------------------------------

    def _send_input_request(self, msg: dict, pending: Pending) -> None:
        """The inner kernel's input_request, to the client that sent the request asking for input."""
        self.session.send(
            self.stdin_socket, "input_request", msg["content"], parent=pending.parent, ident=pending.ident
        )

    def _on_stdin(self, frames: list) -> None:
        """The client's input_reply, for the inner kernel's pending input_request."""
        try:
            idents, frames = self.session.feed_identities(frames, copy=False)
            msg = self.session.deserialize(frames, content=True, copy=False)
        except Exception:
            self.log.warning("Dropped a malformed message on stdin", exc_info=True)
            return
        inner = self.kernels.current
        if inner is not None and inner.relay is not None:
            inner.relay.input_reply(msg, idents)
