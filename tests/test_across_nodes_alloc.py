"""Several notebooks in one allocation: ``salloc -N2 --no-shell``, then a spec per node with ``srun --jobid --overlap``.

What the README tells a user to do for several notebooks on the nodes of one
job, done as a user does it from the login node (the test process): the
allocation's id read off salloc's own message, one spec per node installed
with ``install``, both kernels launched by jupyter_client with the package's
provisioner.  Each notebook is a step of the one job; they run at once and
restart apart.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .helpers import execute, iopub_until_idle, marker_cell, reply_to, running, stdout_of
from .slurm import WHERE, installed, job_spec, offered, reached, where

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]


@pytest.fixture
def allocation(multinode) -> str:
    """The id of a two-node allocation without a shell, as ``salloc`` announces it; cancelled afterwards."""
    done = subprocess.run(["salloc", "-N2", "--no-shell"], capture_output=True, text=True, timeout=60, check=False)
    granted = re.search(r"Granted job allocation (\d+)", done.stderr)
    assert done.returncode == 0 and granted, done.stderr
    job = granted.group(1)
    try:
        yield job
    finally:
        subprocess.run(["scancel", job], timeout=30, check=False)
    print(f"queue empty {multinode.wait_for_empty_queue(15):.1f} s after scancel {job}")


@pytest.fixture
def one_per_node(kernels_dir, multinode, allocation) -> str:
    """A spec per node, ``srun --jobid=ID --overlap -w NODE``, installed; the allocation's id."""
    for node in multinode.nodes:
        spec = job_spec(f"--jobid={allocation}", "--overlap")
        spec["argv"][spec["argv"].index("-w") + 1] = node
        installed(kernels_dir, node, spec, server_ip=offered(multinode))
    return allocation


def meet(mine: Path, other: Path) -> str:
    """A cell that says it runs (``mine``) and ends only once the other notebook's cell runs too."""
    return f"{marker_cell(mine)}import os, time\nwhile not os.path.exists({str(other)!r}):\n    time.sleep(0.05)\n"


def test_two_notebooks_in_one_allocation_answer_at_once_and_restart_apart(one_per_node, multinode, tmp_path):
    allocation = one_per_node
    ran = [tmp_path / "node1-runs", tmp_path / "node2-runs"]
    with running("node1", startup_timeout=120) as (km1, kc1), running("node2", startup_timeout=120) as (km2, kc2):
        # Each cell waits for the other to run: both end only if the two kernels run at once.
        cells = {kc: kc.execute(f"x = {n + 1}\n{meet(ran[n], ran[1 - n])}{WHERE}") for n, kc in enumerate((kc1, kc2))}
        said = {}
        for kc, msg_id in cells.items():
            assert reply_to(kc, msg_id, timeout=60)["content"]["status"] == "ok"
            said[kc] = stdout_of(iopub_until_idle(kc, msg_id, timeout=60)).split()
        (host1, job1, pid1, proxy1), (host2, job2, pid2, proxy2) = said[kc1], said[kc2]
        assert (host1, host2) == ("node1", "node2")
        assert job1 == job2 == allocation, "both notebooks are steps of the allocation"
        assert [reached(km)["ip"] for km in (km1, km2)] == [multinode.address(n) for n in multinode.nodes]
        before2 = reached(km2)

        reply, _ = execute(kc1, "%restart", timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert execute(kc1, "x")[0]["content"]["ename"] == "NameError"
        host, job, pid, proxy = where(kc1)
        assert (host, job, proxy) == ("node1", allocation, int(proxy1))
        assert pid != int(pid1), "node1's notebook has a new kernel"

        assert stdout_of(execute(kc2, "print(x)")[1]).strip() == "2", "node2's notebook kept its variables"
        assert where(kc2) == ("node2", allocation, int(pid2), int(proxy2)), "and its kernel, proxy and step"
        assert reached(km2) == before2
        assert [j["id"] for j in multinode.jobs()] == [allocation]
    assert [j["id"] for j in multinode.jobs()] == [allocation], "shutting the notebooks down kept the allocation"
