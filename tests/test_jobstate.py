"""The proxy's own comm target for the status bar, as a frontend sees it: states, notices, and nothing of it inside."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable

import pytest

from inplace_restarter.jobstate import TARGET

from .helpers import execute, inner_pid, iopub_until_idle, reply_to, running, send, stdout_of
from .slurm import where
from .test_kernel_in_job import notice_of, proxied_in_job

pytestmark = pytest.mark.timeout(120)

#: a cell that makes the kernel hold 50 MB more, written (a calloc'd bytearray would take no memory yet)
ALLOCATE = "held = [] if 'held' not in globals() else held\nheld.append(b'\\x01' * (50 * 2**20))"
MB = 2**20


def open_comm(kc) -> tuple[str, list[dict]]:
    """Open a comm of the target: its id, and the iopub messages of the comm_open through its idle."""
    comm_id = uuid.uuid4().hex
    msg_id = send(kc, "shell", "comm_open", {"comm_id": comm_id, "target_name": TARGET, "data": {}})
    return comm_id, iopub_until_idle(kc, msg_id)


def comm_data(messages: list[dict], comm_id: str) -> list[dict]:
    """The data of the comm_msgs of ``comm_id``; no comm_close of it allowed."""
    assert not [m for m in messages if m["msg_type"] == "comm_close" and m["content"]["comm_id"] == comm_id]
    return [
        m["content"]["data"] for m in messages if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
    ]


def statuses(messages: list[dict]) -> list[str]:
    return [m["content"]["execution_state"] for m in messages if m["msg_type"] == "status"]


def next_on(kc, comm_id: str, wanted: Callable[[dict], bool], timeout: float = 30) -> tuple[dict, list[dict]]:
    """Read iopub until a comm_msg of ``comm_id`` whose data is ``wanted``: that data, and every message read."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no such message on {comm_id} within {timeout} s: {comm_data(seen, comm_id)}"
        msg = kc.get_iopub_msg(timeout=remaining)
        seen.append(msg)
        data = comm_data([msg], comm_id)
        if data and wanted(data[0]):
            return data[0], seen


def request_state(kc, comm_id: str) -> list[dict]:
    msg_id = send(kc, "shell", "comm_msg", {"comm_id": comm_id, "data": {"request": "state"}})
    return iopub_until_idle(kc, msg_id)


def is_state(data: dict) -> bool:
    return data.get("kind") == "state"


def grown_from(state: dict) -> Callable[[dict], bool]:
    """Whether a message is a state whose memory in use grew by 40 MB (of an allocation of 50) since ``state``."""
    return lambda data: is_state(data) and data["memory"]["used"] >= state["memory"]["used"] + 40 * MB


def test_opening_the_comm_gives_one_state_with_the_busy_and_idle_of_a_comm_request(proxy):
    km, kc = proxy
    with running("direct") as (_, direct):
        _, plain = open_comm(direct)
    assert "comm_close" in [m["msg_type"] for m in plain], "ipykernel has no such target"

    comm_id, opened = open_comm(kc)
    assert statuses(opened) == statuses(plain) == ["busy", "idle"]
    [state] = comm_data(opened, comm_id)
    assert state["kind"] == "state"
    assert state["host"] == socket.gethostname()
    assert state["job"] is None, "outside Slurm"
    assert state["restarts"] == 0
    assert state["info"].startswith(f"The kernel runs on host {socket.gethostname()}")
    memory = state["memory"]
    assert set(memory) == {"used", "peak", "limit"} and memory["used"] > 0, memory

    answered = request_state(kc, comm_id)
    assert statuses(answered) == ["busy", "idle"]
    [again] = comm_data(answered, comm_id)
    assert again["kind"] == "state" and again["restarts"] == 0


def test_the_comm_outlives_restart_and_jupyters_restart_in_place(proxy_with):
    with proxy_with(provisioner={}) as (km, kc):
        comm_id, _ = open_comm(kc)
        reply, outputs = execute(kc, "%restart")
        assert reply["content"]["status"] == "ok"
        [state] = comm_data(outputs, comm_id)
        assert state["kind"] == "state" and state["restarts"] == 1, "under the %restart cell"

        km.restart_kernel()
        state, _ = next_on(kc, comm_id, lambda d: is_state(d) and d["restarts"] == 2)
        assert state["memory"] is not None
        [answer] = comm_data(request_state(kc, comm_id), comm_id)
        assert answer["restarts"] == 2


def test_the_inner_kernel_never_sees_the_comm(proxy):
    _, kc = proxy
    open_comm(kc)
    listed = reply_to(kc, send(kc, "shell", "comm_info_request", {}))["content"]
    assert listed == {"status": "ok", "comms": {}}
    _, outputs = execute(kc, "print(list(get_ipython().kernel.comm_manager.comms))")
    assert stdout_of(outputs) == "[]\n"


def test_memory_that_grows_sends_a_state_and_a_closed_comm_gets_nothing_more(proxy_with):
    with proxy_with("--JobState.memory_interval=0.2") as (_, kc):
        first, opened = open_comm(kc)
        [state] = comm_data(opened, first)
        execute(kc, ALLOCATE)
        next_on(kc, first, grown_from(state))

        msg_id = send(kc, "shell", "comm_close", {"comm_id": first, "data": {}})
        assert statuses(iopub_until_idle(kc, msg_id)) == ["busy", "idle"]
        after_close = iopub_until_idle(kc, kc.execute(ALLOCATE), everything=True)
        # Another comm's state, after memory grew again, is the marker: the first comm got none of it.
        second, opened = open_comm(kc)
        [state] = comm_data(opened, second)
        kc.execute(ALLOCATE)
        _, seen = next_on(kc, second, grown_from(state))
        assert comm_data(after_close + opened + seen, first) == []


def test_a_kernel_that_dies_by_itself_gives_a_notice_then_a_state_after_its_restart(proxy):
    km, kc = proxy
    comm_id, _ = open_comm(kc)
    os.kill(inner_pid(km), signal.SIGKILL)
    notice, _ = next_on(kc, comm_id, lambda d: d["kind"] == "notice")
    assert notice == {"kind": "notice", "reason": "died", "level": "error", "text": "The kernel died of SIGKILL"}
    state, _ = next_on(kc, comm_id, is_state)
    assert state["restarts"] == 1


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_in_a_job_the_state_names_it_and_its_time_limit_notice_reaches_the_comm(kernels_dir, slurm):
    """A two-minute job warned 100 s before its end: the notice falls due about 20 s in."""
    proxy = ("--JobNotices.warn_before=[100]", "--JobState.memory_interval=1")
    with proxied_in_job(kernels_dir, slurm, ("--time=2",), proxy) as (_, kc):
        comm_id, opened = open_comm(kc)
        [state] = comm_data(opened, comm_id)
        job = where(kc)[1]
        assert state["host"] == slurm.host and state["job"]["id"] == job
        if state["job"]["time_limit"] is None:
            state, _ = next_on(kc, comm_id, lambda d: is_state(d) and d["job"]["time_limit"] is not None)
        assert state["job"]["time_limit"] == "2:00" and 0 < state["job"]["left"] <= 120
        assert state["job"]["end"] == pytest.approx(time.time() + state["job"]["left"], abs=5)
        notice, _ = next_on(kc, comm_id, lambda d: d["kind"] == "notice", timeout=120)
        assert (notice["reason"], notice["level"]) == ("time-limit", "warning")
        assert re.fullmatch(notice_of(job, "2:00"), notice["text"] + "\n"), notice


@pytest.mark.slurm
@pytest.mark.timeout(360)
def test_a_kernel_over_its_jobs_memory_limit_gives_an_oom_notice_and_the_limit_in_its_states(kernels_dir, slurm_memory):
    """Slurm enforces ``--mem=300M`` with the job's memory cgroup; a cell allocates 600 MB."""
    with proxied_in_job(kernels_dir, slurm_memory, ("--mem=300M",)) as (_, kc):
        comm_id, opened = open_comm(kc)
        [state] = comm_data(opened, comm_id)
        assert state["memory"]["limit"] == 300 * MB and 0 < state["memory"]["used"] < 300 * MB, state
        kc.execute("held = b'\\x01' * (600 * 2**20)")
        notice, _ = next_on(kc, comm_id, lambda d: d["kind"] == "notice", timeout=120)
        assert (notice["reason"], notice["level"]) == ("oom", "error")
        assert notice["text"].startswith("The kernel was killed by the out-of-memory killer: it used"), notice
        state, _ = next_on(kc, comm_id, is_state, timeout=120)
        assert state["restarts"] == 1 and state["memory"]["peak"] > 250 * MB, "the job's peak: the killed kernel's"
