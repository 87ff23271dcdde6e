"""The relay alone, between a real client Session and a real ipykernel: what Relay.forward does with a request.

The proxy's behaviour as the client sees it is in test_relay; here the relay
is driven directly, as the proxy's kernel drives it.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from inplace_restarter.relay import InnerKernelDied

from .relay_harness import harness, idle_of

pytestmark = pytest.mark.timeout(120)


def as_bytes(frames: list) -> list[bytes]:
    return [frame if isinstance(frame, bytes) else frame.bytes for frame in frames]


def test_a_request_forwarded_as_signed_is_answered_and_its_status_is_the_kernels():
    async def main():
        async with harness() as h:
            inner = h.inner
            request = h.request("execute_request", {"code": "print('hi')", "silent": False})
            frames = h.session.serialize(request)[1:]
            pending = inner.relay.forward(request, [b"client"], frames)
            reply = await inner.relay.reply(pending)
            assert reply["content"]["status"] == "ok"
            assert reply["parent_header"]["msg_id"] == request["header"]["msg_id"]
            # The reply goes to the client as the kernel signed it, from its delimiter on.
            _, signed = h.session.feed_identities(as_bytes(pending.reply_frames))
            assert h.session.deserialize(signed)["msg_type"] == "execute_reply"
            seen = await h.client.until_async(idle_of(request["header"]["msg_id"]))
            # What a kernel prints as it starts has no parent; the rest is the request's.
            ours = [m for m in seen if m["parent_header"]]
            kinds = [(m["msg_type"], m["content"].get("execution_state")) for m in ours]
            assert kinds == [("status", "busy"), ("execute_input", None), ("stream", None), ("status", "idle")]
            assert all(m["parent_header"]["msg_id"] == request["header"]["msg_id"] for m in ours)
            # Its status was the kernel's: the relay forgets it at its idle, without a settle.
            await asyncio.wait_for(pending.idle, 10)
            await asyncio.sleep(0)
            assert request["header"]["msg_id"] not in inner.relay.pending

    asyncio.run(main())


def test_a_request_under_the_proxys_own_status_settles_once_its_output_is_out_and_its_status_is_dropped():
    async def main():
        async with harness() as h:
            inner = h.inner
            request = h.request("execute_request", {"code": "print('own')", "silent": False})
            pending = inner.relay.forward(request, [], relay_status=False)
            await inner.relay.reply(pending, wait_idle=True)
            assert pending.idle.done(), "wait_idle returns once the kernel's idle is in"
            assert [m["msg_type"] for m in await h.sent_so_far()] == ["execute_input", "stream"]

    asyncio.run(main())


def test_content_replaced_and_the_echo_skipped_for_the_code_after_restart():
    async def main():
        async with harness() as h:
            inner = h.inner
            request = h.request("execute_request", {"code": "%restart\nprint(6 * 7)", "silent": False})
            rest = {**request["content"], "code": "print(6 * 7)"}
            pending = inner.relay.forward(request, [], relay_status=False, content=rest, skip_execute_input=True)
            await inner.relay.reply(pending, wait_idle=True)
            ours = await h.sent_so_far()
            assert [m["msg_type"] for m in ours] == ["stream"]
            assert ours[0]["content"]["text"] == "42\n"

    asyncio.run(main())


def test_a_request_for_a_renamed_subshell_comes_back_under_the_clients_id():
    async def main():
        async with harness() as h:
            inner = h.inner
            inner_id = await inner.relay.create_subshell()
            request = h.request("execute_request", {"code": "print(1)", "silent": False}, subshell_id="client-id")
            pending = inner.relay.forward(request, [], subshell_id=inner_id)
            reply = await inner.relay.reply(pending)
            assert reply["content"]["status"] == "ok"
            _, signed = h.session.feed_identities(as_bytes(pending.reply_frames))
            assert h.session.deserialize(signed)["parent_header"]["subshell_id"] == "client-id"
            seen = await h.client.until_async(idle_of(request["header"]["msg_id"]))
            assert {m["parent_header"]["subshell_id"] for m in seen if m["parent_header"]} == {"client-id"}

    asyncio.run(main())


def test_a_kernel_dying_on_a_request_fails_it_with_the_signal_it_died_of():
    async def main():
        async with harness() as h:
            inner = h.inner
            request = h.request("execute_request", {"code": "import time; time.sleep(600)", "silent": False})
            pending = inner.relay.forward(request, [])
            await h.client.until_async(lambda m: m["msg_type"] == "execute_input")
            os.kill(inner.pid, signal.SIGKILL)
            with pytest.raises(InnerKernelDied, match="The kernel died of SIGKILL"):
                await inner.relay.reply(pending)
            assert not inner.relay.pending

    asyncio.run(main())


def test_comms_the_kernel_or_the_client_opens_are_tracked_for_a_restart_to_close():
    async def main():
        async with harness() as h:
            inner = h.inner
            code = "from comm import create_comm\nc = create_comm(target_name='w', comm_id='k1')"
            request = h.request("execute_request", {"code": code, "silent": False})
            await inner.relay.reply(inner.relay.forward(request, [], relay_status=False), wait_idle=True)
            inner.relay.track_client_comm(h.request("comm_open", {"comm_id": "c1", "target_name": "t", "data": {}}))
            assert inner.relay.comms == {"k1": "w", "c1": "t"}
            inner.relay.track_client_comm(h.request("comm_close", {"comm_id": "k1", "data": {}}))
            assert inner.relay.comms == {"c1": "t"}

    asyncio.run(main())


def test_an_input_request_goes_to_the_pending_request_and_the_reply_back_to_the_kernel():
    async def main():
        async with harness() as h:
            inner = h.inner
            request = h.request("execute_request", {"code": "print(input('?'))", "silent": False, "allow_stdin": True})
            pending = inner.relay.forward(request, [b"client"])
            while not h.input_requests:
                await asyncio.sleep(0.01)
            asked, owner = h.input_requests[0]
            assert asked["content"]["prompt"] == "?" and owner is pending
            inner.relay.input_reply(h.request("input_reply", {"value": "typed"}), [])
            assert (await inner.relay.reply(pending))["content"]["status"] == "ok"
            seen = await h.client.until_async(idle_of(request["header"]["msg_id"]))
            printed = [m["content"]["text"] for m in seen if m["msg_type"] == "stream" and m["parent_header"]]
            assert printed == ["typed\n"]

    asyncio.run(main())
