"""The restart object alone: restart.InPlaceRestarter on real kernels, what it replaces, carries over and says.

What it publishes to the client is recorded as it is handed over (the proxy's
kernel sends it on iopub); the kernels, their relays and the client's
subshells are real.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from inplace_restarter.restart import InPlaceRestarter
from inplace_restarter.subshells import Subshells

from .relay_harness import LOG, Harness, harness, ipykernel_spec

pytestmark = pytest.mark.timeout(120)


class Published(list):
    """What the restarter hands the proxy to publish: (msg_type, content, parent)."""

    def __call__(self, msg_type: str, content: dict, parent: dict) -> None:
        self.append((msg_type, content, parent))


async def started(h: Harness) -> tuple[InPlaceRestarter, Published, list]:
    """A restarter serving its first kernel; what it published; the kernels it made serve."""
    published, served = Published(), []
    restarter = InPlaceRestarter(h.kernels, Subshells(LOG), published, LOG)
    restarter.add_callback(served.append)
    await restarter.start()
    return restarter, published, served


async def on_control(h: Harness, msg_type: str) -> tuple[dict, dict]:
    """A control request to the current kernel, and its reply."""
    request = h.request(msg_type, {})
    relay = h.kernels.current.relay
    return request, await relay.reply(relay.forward(request, [], channel="control", relay_status=False), True)


async def open_comm(h: Harness, comm_id: str) -> None:
    code = f"from comm import create_comm\nc = create_comm(target_name='w', comm_id={comm_id!r})"
    relay = h.kernels.current.relay
    await relay.reply(relay.forward(h.request("execute_request", {"code": code}), [], relay_status=False), True)


def test_a_restart_replaces_the_kernel_closes_its_comms_and_tells_the_cell():
    async def main():
        async with harness(serving=False) as h:
            restarter, published, served = await started(h)
            old = h.kernels.current
            assert restarter.ready.is_set() and served == [old]
            await open_comm(h, "w1")
            cell = h.request("execute_request", {"code": "%restart"})
            restart = asyncio.ensure_future(restarter.restart(cell))
            await asyncio.sleep(0)
            assert not restarter.ready.is_set(), "requests wait while the kernel is replaced"
            await restart
            new = h.kernels.current
            assert restarter.ready.is_set() and served == [old, new]
            assert new.pid != old.pid and old.exited.done()
            assert published[:2] == [
                ("comm_close", {"comm_id": "w1", "data": {}}, cell),
                ("status", {"execution_state": "starting"}, {}),
            ]
            msg_type, content, parent = published[2]
            assert (msg_type, content["name"], parent) == ("stream", "stdout", cell)
            assert content["text"].startswith("Restarted the kernel in place in ")

    asyncio.run(main())


def test_jupyters_restart_begins_at_once_and_closes_comms_under_no_request():
    async def main():
        async with harness(serving=False) as h:
            restarter, published, _ = await started(h)
            old = h.kernels.current
            await open_comm(h, "w2")
            await restarter.restart_soon()
            assert not restarter.ready.is_set()
            await asyncio.wait_for(restarter.ready.wait(), 60)
            assert h.kernels.current is not old
            assert ("comm_close", {"comm_id": "w2", "data": {}}, {}) in published
            assert not [p for p in published if p[0] == "stream"], "no cell to tell"

    asyncio.run(main())


def test_the_clients_subshells_keep_their_ids_in_the_new_kernel():
    async def main():
        async with harness(serving=False) as h:
            restarter, _, _ = await started(h)
            create, reply = await on_control(h, "create_subshell_request")
            client_id = reply["content"]["subshell_id"]
            restarter.subshells.answered(create, reply)
            assert restarter.subshells.inner_id(client_id) == client_id
            await restarter.restart()
            inner_id = restarter.subshells.inner_id(client_id)
            assert inner_id != client_id
            listed, reply = await on_control(h, "list_subshell_request")
            assert reply["content"]["subshell_id"] == [inner_id]
            restarter.subshells.answered(listed, reply)
            assert reply["content"]["subshell_id"] == [client_id], "the client sees its own ids"

    asyncio.run(main())


def test_a_kernel_that_does_not_start_again_raises_and_leaves_requests_free_to_see_it(tmp_path: Path):
    broken = tmp_path / "broken"
    launcher = (
        "import os, sys\n"
        f"if os.path.exists({str(broken)!r}): sys.exit(3)\n"
        "from ipykernel.kernelapp import launch_new_instance\n"
        "launch_new_instance()\n"
    )

    async def main():
        async with harness(ipykernel_spec([sys.executable, "-c", launcher, "-f", "{connection_file}"]), False) as h:
            restarter, published, _ = await started(h)
            broken.touch()
            with pytest.raises(RuntimeError, match="exited with code 3 while starting, 3 times"):
                await restarter.restart()
            assert restarter.ready.is_set(), "requests go on, to find no kernel"
            assert h.kernels.current is None
            assert not [p for p in published if p[0] == "status"], "no starting status for a kernel that did not start"

    asyncio.run(main())
