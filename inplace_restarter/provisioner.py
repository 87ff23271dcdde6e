"""Jupyter's own restart (the Restart button, ``restart_kernel``) restarts a proxied kernel in place.

jupyter_client restarts a kernel by shutting its process down and launching
the command again: for a proxied kernel in a batch job, a new job.  This
provisioner, a ``LocalProvisioner`` in every other respect, lets a proxy it
launched keep running instead:

- At launch it tells the proxy, by :data:`ENV_NAME` in its environment, that
  its launcher can restart in place.  jupyter_client sends the
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

Kernels that are not proxied get no variable and no waiting: exactly a
``LocalProvisioner``.
"""

from __future__ import annotations

import asyncio
import os
import typing as t

import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float

from . import launchers
from .launchers import LAUNCHER_GRACE

#: the provisioner's name in the ``jupyter_client.kernel_provisioners`` entry points
PROVISIONER_NAME = "inplace-restarter"
#: set to "1" in a proxied kernel's environment by this provisioner
ENV_NAME = "INPLACE_RESTARTER_RESTARTS_IN_PLACE"
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

    #: between the proxy's answer and the relaunch: the proxy restarts itself, nothing is done to it
    in_place = False

    @property
    def proxied(self) -> bool:
        return is_proxied(self.kernel_spec.metadata if self.kernel_spec else None)

    async def pre_launch(self, **kwargs: t.Any) -> dict[str, t.Any]:
        if self.proxied:
            # As the base does: no env means the server's own environment.
            env = kwargs.get("env")
            kwargs["env"] = {**(os.environ if env is None else env), ENV_NAME: "1"}
        return await super().pre_launch(**kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: t.Any) -> KernelConnectionInfo:
        if self.in_place:
            self.in_place = False
            return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)

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
