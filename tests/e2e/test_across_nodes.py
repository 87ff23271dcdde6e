"""A real Jupyter server on the login node drives a notebook whose kernel runs on node2.

On the multi-node test cluster (tests/slurm.py) the test process is a login
node.  The server runs there as a user starts it: ``jupyter_server`` (or
``jupyterlab``), the package's server extension enabled as pip enables it, so
the package's provisioner is the default, and a user's ``srun -w node2`` spec
put through ``install``, with no provisioner named in it and no address
configured.  Clients speak to the server only: REST and the kernel's
websocket (cells, ``%restart``, the REST restart and interrupt, DELETE), or
JupyterLab in headless Chromium.  Restarts in place keep job, node and proxy;
the job ends with the kernel.  When the proxy itself dies, Jupyter's own
restart starts a new job, on whichever node Slurm gives, and an open
JupyterLab notebook goes on with it.  (A server killed by SIGKILL leaving no
job is tests/test_across_nodes.py's, with this real server too.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session

from ..helpers import is_idle, stdout_of
from ..slurm import WHERE, job_spec
from ..spec_helpers import run_cli, write_spec
from .conftest import DISPLAY_NAME, KERNEL_NAME, RESTART_MESSAGE, jupyter_server, open_notebook

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.timeout(300)]


def install_user_spec(jupyter_dirs, spec: dict) -> None:
    """A user's srun spec installed; the server's environment makes the provisioner the default."""
    spec["display_name"] = DISPLAY_NAME
    write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", KERNEL_NAME, spec)
    done = run_cli("install", KERNEL_NAME)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def node2_spec(restart_button_enabled, jupyter_dirs, multinode):
    """A user's srun spec for node2, installed."""
    install_user_spec(jupyter_dirs, job_spec())
    return multinode


@pytest.fixture
def any_node_spec(restart_button_enabled, jupyter_dirs, multinode):
    """A user's srun spec that takes whichever node Slurm gives, installed."""
    spec = job_spec()
    at = spec["argv"].index("-w")
    del spec["argv"][at : at + 2]
    install_user_spec(jupyter_dirs, spec)
    return multinode


class KernelSocket:
    """A notebook's view of a kernel: the server's websocket ``/api/kernels/{id}/channels``, JSON messages."""

    def __init__(self, server, kernel_id: str):
        url = server.base_url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        import websocket  # websocket-client, as jupyter_server has it: not needed where e2e is deselected

        self.ws = websocket.create_connection(
            f"{url}?session_id={uuid.uuid4()}", header=[f"Authorization: token {server.token}"], timeout=120
        )
        self.session = Session()

    def close(self) -> None:
        self.ws.close()

    def send(self, channel: str, msg_type: str, content: dict) -> str:
        msg = self.session.msg(msg_type, content)
        self.ws.send(json.dumps({**msg, "channel": channel, "buffers": []}, default=json_default))
        return msg["header"]["msg_id"]

    def run(self, code: str) -> str:
        """Ask for ``code`` to run, as a notebook does; the request's msg_id."""
        return self.send("shell", "execute_request", {"code": code, "silent": False, "store_history": True})

    def until(self, msg_id: str, done: Callable[[list[dict]], bool], timeout: float = 120) -> list[dict]:
        """The messages (any channel) answering ``msg_id`` as they come, up to where ``done`` says so."""
        deadline = time.monotonic() + timeout
        seen: list[dict] = []
        while not done(seen):
            self.ws.settimeout(max(deadline - time.monotonic(), 0.01))
            msg = json.loads(self.ws.recv())
            if msg["parent_header"].get("msg_id") == msg_id:
                seen.append(msg)
        return seen

    def execute(self, code: str, timeout: float = 120) -> tuple[dict, list[dict]]:
        """Run ``code``: its execute_reply and its iopub messages, once both the reply and idle are in."""
        seen = self.until(self.run(code), lambda seen: replied(seen) and any(map(is_idle, seen)), timeout)
        return replied(seen), [m for m in seen if m["channel"] == "iopub"]

    def where(self) -> tuple[str, str, int, int]:
        """The kernel's host, job id, pid and the proxy's pid."""
        reply, outputs = self.execute(WHERE)
        assert reply["content"]["status"] == "ok", reply["content"]
        host, job, pid, proxy = stdout_of(outputs).split()
        return host, job, int(pid), int(proxy)


def replied(seen: list[dict]) -> dict | None:
    return next((m for m in seen if m["channel"] == "shell"), None)


@contextmanager
def kernel_socket(server, kernel_id: str):
    ws = KernelSocket(server, kernel_id)
    try:
        yield ws
    finally:
        ws.close()


def connection_ip(jupyter_dirs, kernel_id: str) -> str:
    """The address the server's connection file gives its clients."""
    path = Path(jupyter_dirs["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kernel_id}.json"
    return json.loads(path.read_text())["ip"]


def test_rest_and_websocket_drive_a_kernel_on_node2_through_both_restarts_and_an_interrupt(
    node2_spec, jupyter_dirs, tmp_path
):
    cluster = node2_spec
    with jupyter_server("jupyter_server", tmp_path) as server:
        kernel = server.api("/api/kernels", "POST", {"name": KERNEL_NAME})
        with kernel_socket(server, kernel["id"]) as ws:
            host, job, pid, proxy = ws.where()
            assert host == "node2"
            assert [j["id"] for j in cluster.jobs()] == [job]
            assert connection_ip(jupyter_dirs, kernel["id"]) == cluster.address("node2")
            assert ws.execute("x = 1")[0]["content"]["status"] == "ok"

            reply, outputs = ws.execute("%restart")
            assert reply["content"]["status"] == "ok", reply["content"]
            assert RESTART_MESSAGE.search(stdout_of(outputs)), stdout_of(outputs)
            assert ws.execute("x")[0]["content"]["ename"] == "NameError"
            host_cell, job_cell, pid_cell, proxy_cell = ws.where()

            restarted = server.api(f"/api/kernels/{kernel['id']}/restart", "POST", {})
            assert restarted["id"] == kernel["id"]
            host_rest, job_rest, pid_rest, proxy_rest = ws.where()

            sleeping = ws.run("import time\nprint('sleeping', flush=True)\ntime.sleep(600)")
            ws.until(sleeping, lambda seen: "sleeping" in stdout_of(seen))
            server.api(f"/api/kernels/{kernel['id']}/interrupt", "POST", {})
            interrupted = replied(ws.until(sleeping, replied, timeout=30))
            assert interrupted["content"]["ename"] == "KeyboardInterrupt", interrupted["content"]
            assert ws.where()[:3] == (host, job, pid_rest), "the same kernel answers after the interrupt"

        assert (host_cell, job_cell, proxy_cell) == (host_rest, job_rest, proxy_rest) == (host, job, proxy)
        assert len({pid, pid_cell, pid_rest}) == 3, "a new kernel behind the proxy at each restart"
        assert [j["id"] for j in cluster.jobs()] == [job], "one job, the same, throughout"
        assert connection_ip(jupyter_dirs, kernel["id"]) == cluster.address("node2")

        server.api(f"/api/kernels/{kernel['id']}", "DELETE")
        print(f"queue empty {cluster.wait_for_empty_queue(15):.1f} s after DELETE /api/kernels/{{id}}")
        assert server.api("/api/kernels") == []


def test_jupyterlab_runs_a_notebook_on_node2_through_restart(node2_spec, browser_page, tmp_path, expect):
    cluster = node2_spec
    where = WHERE.replace("print(", "print('where', ")
    with jupyter_server("jupyterlab", tmp_path) as server:
        nb = open_notebook(browser_page, server, "/lab/tree", ["x = 1\n" + where, "%restart", "x", where])
        nb.run(0)
        _, host, job, pid, proxy = nb.output(0).inner_text().split()
        assert host == "node2"
        assert [j["id"] for j in cluster.jobs()] == [job]

        nb.run(1)
        expect(nb.output(1)).to_contain_text(RESTART_MESSAGE)
        expect(nb.status).to_have_attribute("data-status", "idle")
        nb.run(2)
        expect(nb.output(2)).to_contain_text("NameError")
        expect(nb.prompt(2)).to_have_text("[1]:")
        nb.run(3)
        expect(nb.output(3)).to_contain_text(re.compile(r"^where node2 \d+ \d+ \d+"))
        _, host_after, job_after, pid_after, proxy_after = nb.output(3).inner_text().split()

        assert (host_after, job_after, proxy_after) == (host, job, proxy)
        assert pid_after != pid
        assert [j["id"] for j in cluster.jobs()] == [job]
        expect(nb.status_bar).to_have_text(f"{DISPLAY_NAME} | Idle")
        expect(nb.dialogs).to_have_count(0)
    print(f"queue empty {cluster.wait_for_empty_queue(15):.1f} s after the server's SIGTERM")


def test_an_open_jupyterlab_notebook_follows_its_kernel_to_another_node_after_the_proxy_dies(
    any_node_spec, browser_page, tmp_path, expect
):
    """The proxy SIGKILLed on node2, which is drained: the server's restart lands on node1; no page reload.

    jupyter_server restarts a kernel whose process died, through the same
    provisioner, which reads where the new proxy listens; JupyterLab, told
    the kernel restarts, reconnects its websocket, and the server's channels
    now lead to node1.
    """
    cluster = any_node_spec
    where = WHERE.replace("print(", "print('where', ")
    with jupyter_server("jupyterlab", tmp_path) as server:
        with cluster.drained("node1"):
            nb = open_notebook(browser_page, server, "/lab/tree", ["x = 1\n" + where, where, "x"])
        nb.run(0)
        _, host, job, _, proxy = nb.output(0).inner_text().split()
        assert host == "node2"
        kernel_id = nb.kernels()[0]["id"]

        with cluster.drained("node2"):
            os.kill(int(proxy), signal.SIGKILL)
            # Jupyter's own notice: "The kernel appears to have died. It will restart automatically."
            expect(nb.dialogs).to_contain_text("appears to have died", timeout=60_000)
            nb.dialogs.locator("button.jp-mod-accept").click()
            expect(nb.status).to_have_attribute("data-status", "idle", timeout=60_000)
            nb.run(1)
        _, host_after, job_after, _, proxy_after = nb.output(1).inner_text().split()
        assert host_after == "node1"
        assert job_after != job and proxy_after != proxy
        assert [k["id"] for k in nb.kernels()] == [kernel_id], "the same kernel, as the notebook knows it"
        cluster.wait_for_job_gone(job, 15)
        assert [j["id"] for j in cluster.jobs()] == [job_after]
        nb.run(2)
        expect(nb.output(2)).to_contain_text("NameError")
        expect(nb.dialogs).to_have_count(0)
    print(f"queue empty {cluster.wait_for_empty_queue(15):.1f} s after the server's SIGTERM")
