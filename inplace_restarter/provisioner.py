"""Jupyter's own restart (the Restart button, ``restart_kernel``) restarts a proxied kernel in place.

jupyter_client restarts a kernel by shutting its process down and launching
the command again: for a proxied kernel in a batch job, a new job.  This
provisioner, a ``LocalProvisioner`` in every other respect, lets a proxy it
launched keep running instead:

- At launch it tells the proxy, by :data:`RESTART_FLAG` on its command line
  (which every launcher passes on), that its launcher can restart in place.
  jupyter_client sends the
  ``shutdown_request {"restart": true}`` before it tells the provisioner that
  a restart is under way, so the proxy must know beforehand.
- The proxy answers that request with a ``shutdown_reply`` carrying
  :data:`REPLY_KEY`, starts restarting its inner kernel and keeps running.
- Only on that answer does the restart go in place: the provisioner reports
  the old process gone (so jupyter_client neither signals nor kills it),
  and the relaunch that follows hands back the same process and connection
  info.  Without it (a
  proxy that exits, does not answer within ``reply_timeout``, or has died)
  the restart is jupyter_client's ordinary one, as is ``restart_kernel(now=True)``.

Across nodes (a proxied spec whose launcher may run the kernel on another
host: srun, mpirun, ssh), the proxy tells where it listens (see reach):

- ``pre_launch`` gives the manager CurveZMQ keys if it has none, before the
  connection file is written, and asks the proxy for a report by
  :data:`reach.REPORT_OPTION` on its command line, which carries this host's
  addresses.
- ``launch_kernel`` starts the launcher with its stdout and stderr read by
  :class:`reach.LaunchWatch` and waits, up to ``launch_timeout`` and while
  the launcher lives, for the proxy's signed report; it logs a Slurm job
  that waits in the queue, and stops the launcher (its job with it) when it
  gives up.  The report's ip and ports become the connection info, which
  jupyter_client writes to the server's connection file.
- A relaunch puts the server's own ip (and ports) back in the manager first:
  ``LocalProvisioner`` launches only on a local interface, and a proxy that
  lands on the server's host binds what the connection file says.

Kernels that are not proxied get no option and no waiting: exactly a
``LocalProvisioner``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import typing as t
from contextlib import suppress

import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float, Unicode

from . import launchers, reach
from .launchers import LAUNCHER_GRACE

#: the provisioner's name in the ``jupyter_client.kernel_provisioners`` entry points
PROVISIONER_NAME = "inplace-restarter"
#: given by this provisioner to every proxy it launches, first after the proxy's module: the launcher keeps the proxy
#: on Jupyter's restart, so the proxy may answer its shutdown_request by restarting in place
RESTART_FLAG = "jupyter-restarts-in-place"
#: in the shutdown_reply's content: the proxy is restarting its inner kernel and stays
REPLY_KEY = "restarting_in_place"


def is_proxied(metadata: dict | None) -> bool:
    """Whether a kernelspec's metadata says install put the proxy in front of it."""
    from .kernelspec import original_argv

    return original_argv({"metadata": metadata or {}}) is not None


class InPlaceProvisioner(LocalProvisioner):
    """A LocalProvisioner whose restart of a proxied kernel keeps the proxy; see the module docstring."""

    launcher_grace = Float(
        LAUNCHER_GRACE,
        config=True,
        help="Seconds a job launcher in front of a proxied kernel (srun) has after SIGTERM to end its job "
        "before a kill of the kernel kills it.",
    )
    reply_timeout = Float(
        5.0,
        config=True,
        help="Seconds a proxied kernel has to answer a restart's shutdown_request before "
        "the restart falls back to the ordinary one (shut down, launch again).",
    )

    launch_timeout = Float(
        300.0,
        config=True,
        help="Seconds a proxied kernel behind a launcher that may run it on another host (srun, mpirun, ssh) "
        "has to report where it listens, time in the batch queue included; then the launch fails and the "
        "launcher is stopped, its job with it.",
    )
    report_timeout = Float(
        60.0,
        config=True,
        help="Seconds the proxy behind such a launcher has to report where it listens once it may run: from the "
        "launch, or from when a Slurm job that waited in the queue starts (the queue's wait is launch_timeout's). "
        "Then the launch fails and the launcher is stopped: a launcher that lives on without the proxy's report "
        "(a wrapper that swallows its stdout, a host that never answers) fails in this time, not launch_timeout.",
    )
    server_ip = Unicode(
        "",
        config=True,
        help="The address of this (the Jupyter server's) host that compute nodes reach, or several, comma "
        "separated, in order of preference: the proxy on the node takes the first it has a route to. By "
        "default every public IPv4 address of the host is offered.",
    )

    #: between the proxy's answer and the relaunch: the proxy restarts itself, nothing is done to it
    in_place = False
    #: the server-side ip and ports the manager had before a remote proxy's report replaced them
    _local: dict | None = None
    #: the launcher's stdout and stderr, read while it runs
    _watch: reach.LaunchWatch | None = None

    @property
    def proxied(self) -> bool:
        return is_proxied(self.kernel_spec.metadata if self.kernel_spec else None)

    @property
    def reports(self) -> bool:
        """Whether the proxy may run on another host (behind srun, mpirun, ssh), so it reports where it listens."""
        if not self.proxied or self.parent is None:
            return False
        return any(launcher.remote for launcher in launchers.parse(self.kernel_spec.argv).launchers)

    async def pre_launch(self, **kwargs: t.Any) -> dict[str, t.Any]:
        if not self.reports:
            return self._with_proxy_options(await super().pre_launch(**kwargs))
        manager = self.parent
        if manager.curve_publickey is None:
            manager.curve_publickey, manager.curve_secretkey = zmq.curve_keypair()
        reached = dict(self.connection_info) if self._local is not None else None
        if reached is not None:
            manager.ip = self._local["ip"]
            if not self.in_place:
                for name in reach.PORTS:
                    setattr(manager, name, self._local[name])
                manager.cleanup_connection_file()
        kwargs = await super().pre_launch(**kwargs)
        if self._local is None:
            self._local = {name: self.connection_info[name] for name in reach.FIELDS}
        if self.in_place and reached is not None:
            manager.ip = reached["ip"]
            self.connection_info = reached
        return self._with_proxy_options(kwargs)

    def _with_proxy_options(self, kwargs: dict[str, t.Any]) -> dict[str, t.Any]:
        """The launch's command with this provisioner's requests to the proxy on the proxy's command line."""
        if self.proxied:
            options = [f"--{RESTART_FLAG}"]
            if self.reports:
                options.append(f"{reach.REPORT_OPTION}={','.join(reach.server_ips(self.server_ip))}")
            kwargs["cmd"] = launchers.with_proxy_options(kwargs["cmd"], options)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: t.Any) -> KernelConnectionInfo:
        if self.in_place:
            self.in_place = False
            return self.connection_info
        if not self.reports:
            return await super().launch_kernel(cmd, **kwargs)
        return await self._launch_reporting(cmd, **kwargs)

    async def _launch_reporting(self, cmd: list[str], **kwargs: t.Any) -> KernelConnectionInfo:
        """Launch a proxy that may land on another host; its report's ip and ports are the connection info.

        The launcher gets SIGTERM (on which srun ends its job) when the server
        dies, even by SIGKILL: ``PR_SET_PDEATHSIG``, set in the child between
        fork and exec.  That signal follows the *thread* that forked, not the
        process: jupyter_client launches from the thread running the
        manager's event loop, which in a Jupyter server lives as long as the
        server; a manager driven from a short-lived thread would take its
        kernels down with that thread.
        """
        # stdin is kept open (jupyter_client closes the one it makes): it ends only with the kernel or this
        # process, which every launcher passes on to the proxy, on whatever host, as the end of its input.
        kwargs.update(
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=launchers.stop_with_parent,
        )
        started = time.monotonic()
        await super().launch_kernel(cmd, **kwargs)
        report = await self._wait_for_report(cmd[0])
        self.connection_info = {**self.connection_info, **{name: report[name] for name in reach.FIELDS}}
        self.log.info(
            "Kernel %s: the proxy listens on %s (%s), ports %s; %.1f s after launch",
            self.kernel_id,
            report.get("hostname", "?"),
            report["ip"],
            ", ".join(str(report[name]) for name in reach.PORTS),
            time.monotonic() - started,
        )
        return self.connection_info

    async def _wait_for_report(self, launcher: str) -> dict:
        """The proxy's report, read off the launcher's stdout; RuntimeError, launcher stopped, if none comes."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def notify() -> None:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(changed.set)

        manager = self.parent
        self._watch = watch = reach.LaunchWatch(
            self.process, manager.session.key, manager.session.signature_scheme, notify
        )
        deadline = time.monotonic() + self.launch_timeout
        logged = None
        while watch.report is None:
            changed.clear()
            # The report's own clock runs from the launch or the job's start, and stands while the job is queued.
            reported_by = None if watch.queued else max(watch.launched, watch.allocated) + self.report_timeout
            if watch.queued and watch.job != logged:
                logged = watch.job
                self.log.info(
                    "Kernel %s: Slurm job %s is pending (queued and waiting for resources); "
                    "waiting up to %.0f s for it to start (InPlaceProvisioner.launch_timeout)",
                    self.kernel_id,
                    watch.job,
                    max(0.0, deadline - time.monotonic()),
                )
            if self.process.poll() is not None or watch.ended:
                await self._give_up(f"{launcher} exited before the proxy said where it listens")
            job = f", Slurm job {watch.job}" if watch.job else ""
            if time.monotonic() >= deadline:
                await self._give_up(
                    f"the proxy did not say where it listens within {self.launch_timeout:g} s "
                    f"(InPlaceProvisioner.launch_timeout){job}"
                )
            if reported_by is not None and time.monotonic() >= reported_by:
                await self._give_up(
                    f"the proxy did not say where it listens within {self.report_timeout:g} s while {launcher} "
                    f"ran (InPlaceProvisioner.report_timeout){job}; the proxy's stdout must reach {launcher}'s"
                )
            next_look = min(deadline, reported_by or deadline)
            with suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(1.0, max(0.0, next_look - time.monotonic())))
        return watch.report

    async def _give_up(self, what: str) -> t.NoReturn:
        """Stop the launcher (its job with it), then raise one line: what happened and the launcher's last words."""
        launcher = self.process.args[0] if self.process is not None else "the launcher"
        await self.kill()
        await self.wait()
        watch = self._watch
        if watch is not None:
            await asyncio.to_thread(watch.join, 5)
        last = watch.last_words if watch is not None else ""
        raise RuntimeError(
            f"Kernel {self.kernel_id} did not start: {what}" + (f"; last line from {launcher}: {last}" if last else "")
        )

    async def cleanup(self, restart: bool = False) -> None:
        """As LocalProvisioner's, returning the ports it took on this host, not the node's."""
        if not restart and self._local is not None:
            self.connection_info = {**self.connection_info, **self._local}
        await super().cleanup(restart=restart)

    async def shutdown_requested(self, restart: bool = False) -> None:
        if restart and self.proxied and self.process is not None and self.process.poll() is None:
            self.in_place = await self._proxy_restarts_in_place()
            if self.in_place:
                self.log.info("Kernel %s: the proxy restarts its kernel in place", self.kernel_id)
        await super().shutdown_requested(restart=restart)

    async def _proxy_restarts_in_place(self) -> bool:
        """Wait for the proxy's shutdown_reply; True if it says it restarts in place.

        The manager sent the request on its control socket, whose replies it
        never reads (it closes the socket after the shutdown); the reply is
        read from there, on a view of the socket that works for the blocking
        and the asyncio manager alike.
        """
        from .kernelbase import control_socket

        manager = self.parent
        socket = control_socket(manager)
        if socket is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout
        while loop.time() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            while socket.poll(0):
                _, frames = manager.session.feed_identities(socket.recv_multipart(zmq.NOBLOCK))
                try:
                    reply = manager.session.deserialize(frames)
                except (ValueError, KeyError, TypeError, IndexError) as e:
                    self.log.debug("Kernel %s: dropped a malformed reply on control: %s", self.kernel_id, e)
                    continue
                if reply["header"]["msg_type"] == "shutdown_reply":
                    return reply["content"].get(REPLY_KEY) is True
            await asyncio.sleep(0.01)
        self.log.warning(
            "Kernel %s did not answer the restart request in %g s; restarting it the ordinary way",
            self.kernel_id,
            self.reply_timeout,
        )
        return False

    async def poll(self) -> int | None:
        """While restarting in place the old kernel counts as gone, so jupyter_client stops waiting."""
        return 0 if self.in_place else await super().poll()

    async def wait(self) -> int | None:
        return 0 if self.in_place else await super().wait()

    async def kill(self, restart: bool = False) -> None:
        """A kill is meant: the process ends, in place or not.

        A job launcher in front of the proxy (srun) is told to stop first and
        killed only after ``launcher_grace``: killed at once, it leaves its
        job running with nothing attached.
        """
        self.in_place = False
        if not (self._in_a_job and self.process is not None and self.process.poll() is None):
            await super().kill(restart=restart)
            return
        await asyncio.get_running_loop().run_in_executor(
            None, launchers.stop_launcher, self.process, self.launcher_grace, self.log
        )

    async def send_signal(self, signum: int) -> None:
        """To a job launcher's own process only: killing srun's process group orphans its job."""
        if self._in_a_job and self.process is not None:
            launchers.signal_leader(self.process, signum)
            return
        await super().send_signal(signum)

    @property
    def _in_a_job(self) -> bool:
        """Whether the proxied kernel runs behind a launcher that holds a batch job (srun, mpirun)."""
        if not self.proxied:
            return False
        return any(launcher.holds == "job" for launcher in launchers.parse(self.kernel_spec.argv).launchers)
