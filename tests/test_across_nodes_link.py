"""The link between the login node and node2 lost for 20 s: kernel and job live on, the notebook answers again.

The cut is on the bridge's side (its port to node2 switched off, as a cable
pulled at the switch): node2 keeps its address and routes and hears nothing.
The test process is the Jupyter server, with a proxied kernel on node2 as in
tests/test_across_nodes.py.  During the cut the job, srun and the proxy must
stay; once the link is back the server's client must get what it missed and
be answered again, without a restart or a new connection.
"""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager

import pytest

from .helpers import (
    execute,
    iopub_until_idle,
    is_running,
    reply_to,
    running,
    stdout_of,
    wait_for_file,
    wait_for_stream,
    wait_until,
)
from .slurm import reached, where

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]

#: How long the link is down.
CUT = 20.0
#: Seconds the notebook may take to answer once the link is back: TCP's retransmission backoff after
#: 20 s of silence is below 13 s; the rest is margin on a shared machine.
BACK_WITHIN = 45.0


def unreachable(ip: str, port: int) -> bool:
    """Whether a TCP connection to ``ip:port`` fails to open within a second: the link is down."""
    try:
        socket.create_connection((ip, port), timeout=1).close()
    except OSError:
        return True
    return False


@contextmanager
def link_down(cluster, km, job: str):
    """node2's port switched off until the block ends; yields ``hold(seconds)``, which keeps it off that long.

    ``hold`` counts from the cut and checks all along that srun and the job live on.
    """
    srun = km.provisioner.process
    info = reached(km)
    cluster.bridge_port("node2", up=False)
    start = time.monotonic()

    def hold(seconds: float) -> None:
        def over() -> bool:
            assert srun.poll() is None, f"srun exited with {srun.returncode} while the link was down"
            assert [(j["id"], j["state"]) for j in cluster.jobs()] == [(job, "RUNNING")]
            return time.monotonic() - start >= seconds

        wait_until(over, f"the end of the {seconds:g} s cut", seconds + 10, interval=0.5)

    try:
        assert unreachable(info["ip"], info["shell_port"]), "node2 was still reachable with its port off"
        yield hold
    finally:
        cluster.bridge_port("node2", up=True)


def test_an_idle_kernel_answers_again_after_the_link_is_back(on_node2):
    with running("job", startup_timeout=120) as (km, kc):
        before = where(kc)
        srun = km.provisioner.pid
        with link_down(on_node2, km, before[1]) as hold:
            hold(CUT)
        back = time.monotonic()
        assert where(kc) == before, "the same kernel, proxy and job"
        answered = time.monotonic() - back
        print(f"the first cell after the link came back answered in {answered:.1f} s")
        assert answered < BACK_WITHIN
        assert km.provisioner.pid == srun and is_running(srun)
        assert [j["id"] for j in on_node2.jobs()] == [before[1]]


def test_a_cell_that_prints_during_the_cut_delivers_its_output_and_reply_after_it(on_node2, tmp_path):
    cut, printed = tmp_path / "cut", tmp_path / "printed"
    cell = (
        "import os, time\nprint('started', flush=True)\n"
        f"while not os.path.exists({str(cut)!r}):\n    time.sleep(0.05)\n"
        "print('printed while the link was down', flush=True)\n"
        f"open({str(printed)!r}, 'w').close()\n'the value'"
    )
    with running("job", startup_timeout=120) as (km, kc):
        before = where(kc)
        msg_id = kc.execute(cell)
        wait_for_stream(kc, msg_id, "started", timeout=60)
        srun = km.provisioner.process
        with link_down(on_node2, km, before[1]) as hold:
            cut.touch()
            wait_for_file(printed, timeout=CUT)
            hold(CUT)
            assert not kc.iopub_channel.msg_ready(), "the cell's output crossed a link that was down"
        back = time.monotonic()
        outputs = iopub_until_idle(kc, msg_id, timeout=BACK_WITHIN)
        reply = reply_to(kc, msg_id, timeout=BACK_WITHIN)
        arrived = time.monotonic() - back
        print(f"the cell's output and reply arrived {arrived:.1f} s after the link came back")
        assert arrived < BACK_WITHIN
        assert "printed while the link was down" in stdout_of(outputs)
        assert [m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"] == [
            "'the value'"
        ]
        assert reply["content"]["status"] == "ok"
        assert execute(kc, "print('and a new cell')", timeout=BACK_WITHIN)[0]["content"]["status"] == "ok"
        assert where(kc) == before, "the same kernel, proxy and job"
        assert km.provisioner.process is srun and srun.poll() is None
