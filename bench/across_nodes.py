"""Across nodes: a kernel on node2 used from the login node, directly and through the proxy, side by side.

    python bench/across_nodes.py                 # about 2 minutes; root only
    python bench/across_nodes.py --batches 6 --per-batch 100 --startups 3   # a smoke run

It brings up the tests' two-node Slurm cluster (tests/slurm.py's
``MultiNodeCluster``: node1 and node2 in network namespaces on a bridge, this
process a login node on a veth into it) and always stops it in ``finally``.
On it, two kernels on node2, both encrypted with CurveZMQ:

- DIRECT: an ipykernel started by ``srun -w node2`` on a connection file
  written here by hand: node2's address, fixed ports, and a CURVE keypair as
  the provisioner gives the proxy (the kernel a CURVE server on it, the
  client with that public key as the server key), as a user would bind a
  kernel reachable from the login node without the proxy.
- PROXIED: a user's ``srun -w node2`` spec put through ``install``, launched
  by jupyter_client with the package's provisioner: the proxy on node2 binds
  node2's address with ports of its own, reports them on srun's stdout, and
  the kernel behind it listens on node2's loopback.

Measured interleaved as bench/run.py does, with its lean zmq client: the round
trip of an empty cell (median of batches, rotating which kernel goes first)
and startup (launch to the reply of the first execute request, the job's
allocation included, the queue emptied between launches).  It prints a
Markdown table with proxied/direct ratios.  A benchmark, not a test: it
asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import run as bench  # noqa: E402

from tests.slurm import (  # noqa: E402
    SLURM_VARIABLES,
    MultiNodeCluster,
    Unavailable,
    installed,
    job_spec,
    missing_multinode,
    offered,
    temporary_folder,
)

#: The direct kernel's ports on node2: fixed, as a hand-written connection file has them.
DIRECT_PORTS = dict(shell_port=50101, iopub_port=50102, stdin_port=50103, control_port=50104, hb_port=50105)
PROXIED = "proxied-node2"


class Direct:
    """An ipykernel in a job on node2, bound on node2's address by its connection file; ``stop`` ends the job."""

    def __init__(self, connection_file: Path):
        from jupyter_client.manager import KernelManager

        self.connection_file = connection_file
        self.srun: subprocess.Popen | None = None
        self.km = KernelManager()
        self.km.load_connection_file(str(connection_file))

    def launch(self, _km=None) -> None:
        out = bench.KERNEL_LOG["file"]
        self.srun = subprocess.Popen(
            ["srun", "-N1", "-n1", "-w", "node2", "--job-name=bench-direct"]
            + [bench.PYTHON, "-m", "ipykernel_launcher", "-f", str(self.connection_file)],
            stdout=out,
            stderr=out,
            cwd=bench.KERNEL_LOG["cwd"],
        )

    def stop(self) -> None:
        """SIGTERM to srun, which ends its step and job; SIGKILL if it lingers."""
        if self.srun is None:
            return
        self.srun.terminate()
        try:
            self.srun.wait(15)
        except subprocess.TimeoutExpired:
            self.srun.kill()
            self.srun.wait()


def direct_connection_file(cluster: MultiNodeCluster, folder: Path) -> Path:
    """node2's address, fixed ports, a session key and a CURVE keypair, in a 0600 file the node sees."""
    import uuid

    from jupyter_client.connect import write_connection_file

    public, secret = zmq.curve_keypair()
    path = folder / "direct-node2.json"
    write_connection_file(
        str(path),
        ip=cluster.address("node2"),
        key=uuid.uuid4().hex.encode(),
        curve_publickey=public,
        curve_secretkey=secret,
        **DIRECT_PORTS,
    )
    return path


def first_reply_direct(connection_file: Path) -> float:
    """bench/run.py's launch to first reply, for the direct kernel on node2; the kernel and its job ended after."""
    direct = Direct(connection_file)
    try:
        return bench.first_reply(direct.km, start=direct.launch)
    finally:
        direct.stop()


def bench_startup(cluster: MultiNodeCluster, connection_file: Path, reps: int, log) -> dict:
    """Cold starts on node2, direct and proxied in rotating order, each from an empty queue."""
    launches = {
        "direct": lambda: first_reply_direct(connection_file),
        "proxied": lambda: bench.cold_start(PROXIED),
    }
    res = {"direct": [], "proxied": []}
    for rep in range(reps):
        for name in bench.rotated(rep, "direct", "proxied"):
            cluster.wait_for_empty_queue(30)
            res[name].append(launches[name]())
            log(f"startup on node2 {name}: {res[name][-1]:.3f} s")
    out = {n: {"median": bench.median(v), "all": v} for n, v in res.items()}
    out["ratio"] = out["proxied"]["median"] / out["direct"]["median"]
    return out


def table(r: dict, m: dict, notes: list[str]) -> str:
    rows = [
        "| measure, kernel on node2 from the login node | direct | proxied | proxied/direct |",
        "| --- | ---: | ---: | ---: |",
    ]

    def row(what, direct, proxied, ratio):
        rows.append(f"| {what} | {direct} | {proxied} | {ratio} |")

    if "roundtrip" in r:
        rt = r["roundtrip"]
        row(
            f"round trip, empty cell, median (n={rt['direct']['n']} each)",
            f"{rt['direct']['median'] * 1e3:.3f} ms",
            f"{rt['proxied']['median'] * 1e3:.3f} ms",
            f"{rt['ratio_median']:.2f}x",
        )
        row(
            "round trip, empty cell, p95",
            f"{rt['direct']['p95'] * 1e3:.3f} ms",
            f"{rt['proxied']['p95'] * 1e3:.3f} ms",
            f"{rt['ratio_p95']:.2f}x",
        )
        row(
            f"round trip, per-batch median ratio ({len(rt['batch_ratios'])} batches)",
            "",
            "",
            bench.spread(rt["batch_ratios"]),
        )
    if "startup" in r:
        st = r["startup"]
        row(
            f"startup, srun launch to first execute reply, median (n={len(st['direct']['all'])} each)",
            f"{st['direct']['median']:.3f} s",
            f"{st['proxied']['median']:.3f} s",
            f"{st['ratio']:.2f}x",
        )
        row(
            "startup, each launch",
            " ".join(f"{x:.2f}" for x in st["direct"]["all"]),
            " ".join(f"{x:.2f}" for x in st["proxied"]["all"]),
            "",
        )
    row("jobs / processes / cluster pieces left after the run", "", r.get("left", "?"), "")
    lines = ["", *rows, "", "Machine:", *(f"- {k}: {v}" for k, v in m.items()), *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="roundtrip,startup", help="comma-separated subset: roundtrip,startup")
    p.add_argument("--batches", type=int, default=20, help="round trip: interleaved batches (default 20)")
    p.add_argument("--per-batch", type=int, default=200, help="round trip: executes per batch (default 200)")
    p.add_argument("--startups", type=int, default=8, help="startup: launches of each (default 8)")
    p.add_argument("--kernel-log", help="append the kernels' and srun's output to this file (default: discarded)")
    a = p.parse_args(argv)
    a.only = set(filter(None, a.only.split(",")))
    if a.only - {"roundtrip", "startup"}:
        p.error("--only: choose from roundtrip,startup")
    return a


def main(argv=None) -> int:
    args = parse(argv)
    reason = missing_multinode()
    if reason:
        print(f"across_nodes.py: {reason}", file=sys.stderr)
        return 1
    t_start = time.time()

    def log(text):
        print(f"[{time.time() - t_start:6.1f} s] {text}", file=sys.stderr, flush=True)

    root = Path(tempfile.mkdtemp(prefix="inplace-restarter-bench-nodes-"))
    cluster = MultiNodeCluster(temporary_folder("mnslurm-bench-"), f"b{os.getpid() % 100000}")
    results: dict = {}
    direct = proxied = None
    load = [os.getloadavg()[0]]
    try:
        bench.private_jupyter(root, bench.REPO)
        bench.KERNEL_LOG["file"] = open(args.kernel_log, "ab") if args.kernel_log else open(os.devnull, "wb")
        for name in [n for n in os.environ if n.startswith(SLURM_VARIABLES)]:
            del os.environ[name]
        os.environ["SLURM_CONF"] = str(cluster.conf)
        started = time.monotonic()
        cluster.start()
        log(f"two-node cluster up in {time.monotonic() - started:.1f} s; node2 at {cluster.address('node2')}")
        installed(Path(os.environ["JUPYTER_PATH"]) / "kernels", PROXIED, job_spec(), server_ip=offered(cluster))
        connection_file = direct_connection_file(cluster, root)
        if "roundtrip" in args.only:
            direct = Direct(connection_file)
            direct.launch()
            proxied = bench.start(PROXIED)
            proxied.name = "proxied"
            kernels = [bench.Running("direct", direct.km, bench.Lean(direct.km)), proxied]
            for k in kernels:
                k.client.wait_iopub()
            results["roundtrip"] = bench.bench_roundtrip(kernels, args.batches, args.per_batch, log)
            kernels[0].client.close()
            direct.stop()
            bench.stop(proxied)
            direct = proxied = None
        if "startup" in args.only:
            results["startup"] = bench_startup(cluster, connection_file, args.startups, log)
        cluster.wait_for_empty_queue(30)
        left = bench.leftovers(root)
        results["left"] = f"{len(cluster.jobs())} / {len(left)}"
        bench.kill_all(left)
    except Unavailable as e:
        print(f"across_nodes.py: the cluster did not start: {e}", file=sys.stderr)
        return 1
    finally:
        if direct is not None:
            direct.stop()
        bench.stop(proxied)
        bench.kill_all(bench.leftovers(root))
        load.append(os.getloadavg()[0])
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(Exception):
            bench.KERNEL_LOG["file"].close()
    pieces = cluster.leftovers()
    results["left"] = f"{results.get('left', '?')} / {len(pieces)}"
    notes = [f"load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}"]
    print(table(results, bench.machine(), notes))
    print(f"\ncommand: python bench/across_nodes.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; took {time.time() - t_start:.0f} s")
    if pieces:
        print(f"the cluster left {pieces}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
