"""What a client or a cell can observe arrives proxied as from the kernel used directly, one behaviour per test.

Each test does the same thing to the ``direct`` ipykernel and to the
``proxied`` one, each with an IPython folder of its own (so history starts
empty for both), and compares what the client got: replies and iopub
messages without ids, dates or sessions (``normalised``), and which of the
test's requests each message answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pprint import pformat

import pytest

from .helpers import execute, iopub_until, iopub_until_idle, reply_to, running, send, wait_for_file
from .test_relay import normalised

KERNELS = ("direct", "proxied")


@pytest.fixture
def each_kernel(specs, tmp_path, monkeypatch):
    """``each_kernel(probe)``: ``probe(kc)``'s result for the direct kernel and for the proxied one."""

    def run(probe: Callable) -> dict:
        seen = {}
        for kernel in KERNELS:
            folder = tmp_path / f"ipython-{kernel}"
            folder.mkdir()
            monkeypatch.setenv("IPYTHONDIR", str(folder))
            with running(kernel) as (_, kc):
                execute(kc, "pass")  # past the kernel_info replies of start-up
                seen[kernel] = probe(kc)
        return seen

    return run


def same(seen: dict) -> None:
    """The same for both kernels, but for the file each kernel compiles its cells into (named after its pid)."""
    direct, proxied = (re.sub(r"ipykernel_\d+/\d+", "ipykernel_PID/CELL", repr(seen[k])) for k in KERNELS)
    assert proxied == direct, pformat(seen, width=140)


def answer(kc, msg_type: str, content: dict, channel: str = "shell") -> tuple:
    """A request's reply and the iopub messages it caused, normalised."""
    msg_id = send(kc, channel, msg_type, content)
    reply = reply_to(kc, msg_id, channel=channel)
    return normalised(reply), [normalised(m) for m in iopub_until_idle(kc, msg_id)]


@pytest.mark.parametrize("channel", ["shell", "control"])
def test_kernel_info_has_every_field_of_the_kernels_own(each_kernel, channel):
    def info(kc):
        content = reply_to(kc, send(kc, channel, "kernel_info_request", {}), channel=channel)["content"]
        # IPython ends its banner with a tip it draws anew for every kernel_info.
        return {**content, "banner": content["banner"].splitlines()[:-1]}

    same(each_kernel(info))


def test_usage_reply_has_the_kernels_fields(each_kernel):
    """Which fields: host_cpu_percent only once psutil has a second reading, so not compared."""

    def usage(kc):
        reply = reply_to(kc, send(kc, "control", "usage_request", {}), channel="control")
        return reply["msg_type"], sorted(set(reply["content"]) - {"host_cpu_percent"})

    same(each_kernel(usage))


COMMS = """
from comm import create_comm
get_ipython().kernel.comm_manager.register_target("a", lambda comm, msg: None)
comms = [create_comm(target_name=name, comm_id=f"{name}{n}") for n, name in enumerate("aab")]
"""


def test_comm_info_lists_every_comm_or_those_of_one_target(each_kernel):
    def comm_info(kc):
        execute(kc, COMMS)
        return [
            answer(kc, "comm_info_request", content) for content in ({}, {"target_name": "a"}, {"target_name": "z"})
        ]

    same(each_kernel(comm_info))


HISTORY_REQUESTS = [
    {"hist_access_type": "tail", "n": 3, "output": False, "raw": True},
    {"hist_access_type": "tail", "n": 3, "output": True, "raw": False},
    {"hist_access_type": "range", "session": 0, "start": 1, "stop": 3, "output": True, "raw": True},
    {"hist_access_type": "range", "session": -1, "start": 0, "output": False, "raw": True},
    {"hist_access_type": "search", "pattern": "x*", "n": 5, "unique": True, "output": False, "raw": True},
    {"hist_access_type": "search", "pattern": "?=*", "n": 5, "unique": False, "output": False, "raw": True},
]


def test_history_answers_tail_range_and_search_requests_alike(each_kernel):
    def history(kc):
        for code in ("x = 1", "x", "y = x + 1", "x", "print('p')"):
            execute(kc, code)
        return [answer(kc, "history_request", content) for content in HISTORY_REQUESTS]

    same(each_kernel(history))


def test_is_complete_says_complete_incomplete_and_invalid_alike(each_kernel):
    codes = ["x = 1", "for i in range(3):", "def f(:", "x = (", "%restart", "%%time\n"]
    same(each_kernel(lambda kc: [answer(kc, "is_complete_request", {"code": code}) for code in codes]))


def test_inspect_answers_each_detail_level_alike(each_kernel):
    def inspect(kc):
        execute(kc, "def documented(a, b=2):\n    'Says what it does.'\n    return a + b")
        return [
            answer(kc, "inspect_request", {"code": code, "cursor_pos": len(code), "detail_level": level})
            for code in ("documented", "len", "nothing_here")
            for level in (0, 1)
        ]

    same(each_kernel(inspect))


THREAD = """
import threading
go = threading.Event()
def later():
    go.wait()
    print('from the thread', flush=True)
thread = threading.Thread(target=later)
thread.start()
"""


def test_output_of_a_thread_has_the_parent_it_has_directly(each_kernel):
    """ipykernel gives a thread's output the cell that started the thread as parent, even after that cell ended."""

    def thread_output(kc):
        starting = kc.execute(THREAD)
        iopub_until_idle(kc, starting)
        releasing = kc.execute("go.set()\nthread.join()")
        names = {starting: "the cell that started it", releasing: "the cell that released it"}
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream" and "from the thread" in msg["content"]["text"]:
                return names.get(msg["parent_header"].get("msg_id"), "another")

    same(each_kernel(thread_output))


def test_a_display_updated_from_another_cell_is_that_cells_output(each_kernel):
    def update(kc):
        execute(kc, "from IPython.display import display\nhandle = display('one', display_id='d1')")
        msg_id = kc.execute("handle.update('two')")
        return [normalised(m) for m in iopub_until_idle(kc, msg_id)]

    same(each_kernel(update))


def test_a_request_on_control_is_answered_before_shell_requests_queued_behind_a_cell(each_kernel, tmp_path):
    """Message order between channels: control overtakes what waits on shell, as it does directly."""

    def order(kc):
        release = tmp_path / f"release-{len(list(tmp_path.glob('release-*')))}"
        started = tmp_path / f"{release.name}-started"
        running_cell = kc.execute(
            f"import os, time\nopen({str(started)!r}, 'w').close()\n"
            f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.01)"
        )
        wait_for_file(started)
        queued = kc.is_complete("pri")
        on_control = send(kc, "control", "kernel_info_request", {})
        first = kc.get_control_msg(timeout=30)
        release.touch()
        shell = [reply_to(kc, running_cell, timeout=30), reply_to(kc, queued)]
        names = {running_cell: "cell", queued: "queued", on_control: "control"}
        return [names[m["parent_header"]["msg_id"]] for m in (first, *shell)]

    same(each_kernel(order))


def test_input_request_is_the_one_the_kernel_sends(each_kernel):
    def asked(kc):
        msg_id = kc.execute("secret = __import__('getpass').getpass('pw: ')\nname = input('name? ')", allow_stdin=True)
        requests = []
        for value in ("s3cret", "Ada"):
            requests.append(normalised(kc.get_stdin_msg(timeout=10)))
            kc.input(value)
        reply = reply_to(kc, msg_id)
        return requests, reply["content"]["status"], execute(kc, "print(secret, name)")[1][-2]["content"]

    same(each_kernel(asked))


def test_a_comm_opened_for_a_target_the_kernel_lacks_is_closed_again(each_kernel):
    def without_reply(kc):
        msg_id = send(kc, "shell", "comm_open", {"comm_id": "c0", "target_name": "nowhere", "data": {}})
        return [normalised(m) for m in iopub_until_idle(kc, msg_id)]

    same(each_kernel(without_reply))


def test_interrupt_reply_is_the_kernels(each_kernel):
    """On control; ipykernel 7.4 used directly interrupts itself on an idle shell's interrupt_request and never replies."""
    same(each_kernel(lambda kc: answer(kc, "interrupt_request", {}, "control")))


def test_shutdown_is_answered_on_control_and_announced_on_iopub_alike(each_kernel):
    def shutdown(kc):
        msg_id = send(kc, "control", "shutdown_request", {"restart": False})
        reply = reply_to(kc, msg_id, channel="control")
        announced = iopub_until(kc, msg_id, lambda m: m["msg_type"] == "shutdown_reply", timeout=30)
        return normalised(reply), [normalised(m) for m in announced]

    same(each_kernel(shutdown))
