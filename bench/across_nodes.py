"""Across nodes: a kernel on node2 used from the login node, directly and through the proxy, side by side.

    python bench/across_nodes.py                 # srun, ssh, mpirun and MPICH's mpiexec: about 8 minutes; root only
    python bench/across_nodes.py --launchers srun --batches 6 --per-batch 100 --startups 3   # a smoke run

It brings up the tests' two-node Slurm cluster (tests/slurm.py's
``MultiNodeCluster``: node1 and node2 in network namespaces on a bridge, this
process a login node on a veth into it) and always stops it in ``finally``.
For each launcher (``srun -w node2``; ``ssh node2`` to an sshd on node2,
tests/sshd.py; ``mpirun -np 1 --host node2`` and MPICH's ``mpiexec.mpich -n 1
-hosts node2``, whose daemons start over that ssh), two kernels on node2,
both encrypted with CurveZMQ:

- DIRECT: an ipykernel started by the launcher on a connection file
  written here by hand: node2's address, fixed ports, and a CURVE keypair as
  the provisioner gives the proxy (the kernel a CURVE server on it, the
  client with that public key as the server key), as a user would bind a
  kernel reachable from the login node without the proxy.
- PROXIED: a user's spec for that launcher put through ``install``, launched
  by jupyter_client with the package's provisioner: the proxy on node2 binds
  node2's address with ports of its own, reports them on the launcher's
  stdout, and the kernel behind it listens on node2's loopback.

The MPI launchers look node2 up by name: this process runs in a mount
namespace of its own where /etc/hosts is the cluster's and /etc/resolv.conf
is empty, so that no name lookup leaves the machine.

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
    missing_multinode,
    offered,
    temporary_folder,
)
from tests.sshd import sshd_on  # noqa: E402

#: The direct kernel's ports on node2: fixed, as a hand-written connection file has them.
DIRECT_PORTS = dict(shell_port=50101, iopub_port=50102, stdin_port=50103, control_port=50104, hb_port=50105)
#: What starts a command on node2, for each launcher measured.
LAUNCHERS = {
    "srun": ["srun", "-N1", "-n1", "-w", "node2"],
    "ssh": ["ssh", "node2"],
    "mpirun": ["mpirun", "-np", "1", "--host", "node2"],
    # Hydra's proxy on node2 connects back to this host by name: this process's host is "rootns" there.
    "mpiexec.mpich": ["mpiexec.mpich", "-localhost", "rootns", "-n", "1", "-hosts", "node2"],
}
#: the launchers that start their part on node2 over ssh, and those that look node2 up by name
OVER_SSH, BY_NAME = {"ssh", "mpirun", "mpiexec.mpich"}, {"mpirun", "mpiexec.mpich"}
IPYKERNEL = [bench.PYTHON, "-m", "ipykernel_launcher", "-f"]


def proxied_name(launcher: str) -> str:
    return f"proxied-{launcher}"


class Direct:
    """An ipykernel on node2 started by ``launcher``, bound on node2's address by its connection file."""

    def __init__(self, launcher: str, connection_file: Path):
        from jupyter_client.manager import KernelManager

        self.launcher, self.connection_file = launcher, connection_file
        self.process: subprocess.Popen | None = None
        self.km = KernelManager()
        self.km.load_connection_file(str(connection_file))

    def launch(self, _km=None) -> None:
        out = bench.KERNEL_LOG["file"]
        self.process = subprocess.Popen(
            [*LAUNCHERS[self.launcher], *IPYKERNEL, str(self.connection_file)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=bench.KERNEL_LOG["cwd"],
        )

    def stop(self) -> None:
        """The kernel asked to shut down (ssh would leave it running), then the launcher told to stop, then killed."""
        if self.process is None:
            return
        with contextlib.suppress(Exception):
            self.km.request_shutdown()
        for stop in (lambda: None, self.process.terminate, self.process.kill):
            stop()
            try:
                self.process.wait(10)
                return
            except subprocess.TimeoutExpired:
                pass


def private_names(cluster: MultiNodeCluster) -> None:
    """This process (and what it starts from now on) in a mount namespace: the cluster's hosts file, no DNS server."""
    import ctypes

    CLONE_NEWNS = 0x00020000
    if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    empty = cluster.root / "resolv.conf"
    empty.write_text("")
    for argv in (
        ["mount", "--make-rprivate", "/"],
        ["mount", "--bind", str(cluster.root / "hosts"), "/etc/hosts"],
        ["mount", "--bind", str(empty), "/etc/resolv.conf"],
    ):
        subprocess.run(argv, check=True, timeout=30)


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


def first_reply_direct(launcher: str, connection_file: Path) -> float:
    """bench/run.py's launch to first reply, for the direct kernel on node2; the kernel (and any job) ended after."""
    direct = Direct(launcher, connection_file)
    try:
        return bench.first_reply(direct.km, start=direct.launch)
    finally:
        direct.stop()


def bench_startup(cluster: MultiNodeCluster, launcher: str, connection_file: Path, reps: int, log) -> dict:
    """Cold starts on node2, direct and proxied in rotating order, each from an empty queue."""
    launches = {
        "direct": lambda: first_reply_direct(launcher, connection_file),
        "proxied": lambda: bench.cold_start(proxied_name(launcher)),
    }
    res = {"direct": [], "proxied": []}
    for rep in range(reps):
        for name in bench.rotated(rep, "direct", "proxied"):
            cluster.wait_for_empty_queue(30)
            res[name].append(launches[name]())
            log(f"startup on node2 by {launcher}, {name}: {res[name][-1]:.3f} s")
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

    for launcher in LAUNCHERS:
        if "roundtrip" in r.get(launcher, {}):
            rt = r[launcher]["roundtrip"]
            row(
                f"{launcher}: round trip, empty cell, median (n={rt['direct']['n']} each)",
                f"{rt['direct']['median'] * 1e3:.3f} ms",
                f"{rt['proxied']['median'] * 1e3:.3f} ms",
                f"{rt['ratio_median']:.2f}x",
            )
            row(
                f"{launcher}: round trip, empty cell, p95",
                f"{rt['direct']['p95'] * 1e3:.3f} ms",
                f"{rt['proxied']['p95'] * 1e3:.3f} ms",
                f"{rt['ratio_p95']:.2f}x",
            )
            row(
                f"{launcher}: round trip, per-batch median ratio ({len(rt['batch_ratios'])} batches)",
                "",
                "",
                bench.spread(rt["batch_ratios"]),
            )
        if "startup" in r.get(launcher, {}):
            st = r[launcher]["startup"]
            row(
                f"{launcher}: startup, launch to first execute reply, median (n={len(st['direct']['all'])} each)",
                f"{st['direct']['median']:.3f} s",
                f"{st['proxied']['median']:.3f} s",
                f"{st['ratio']:.2f}x",
            )
            row(
                f"{launcher}: startup, each launch",
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
    p.add_argument("--launchers", default=",".join(LAUNCHERS), help=f"comma-separated subset: {','.join(LAUNCHERS)}")
    p.add_argument("--batches", type=int, default=20, help="round trip: interleaved batches (default 20)")
    p.add_argument("--per-batch", type=int, default=200, help="round trip: executes per batch (default 200)")
    p.add_argument("--startups", type=int, default=8, help="startup: launches of each (default 8)")
    p.add_argument("--kernel-log", help="append the kernels' and srun's output to this file (default: discarded)")
    a = p.parse_args(argv)
    a.only = set(filter(None, a.only.split(",")))
    if a.only - {"roundtrip", "startup"}:
        p.error("--only: choose from roundtrip,startup")
    a.launchers = [name for name in a.launchers.split(",") if name]
    if set(a.launchers) - set(LAUNCHERS):
        p.error(f"--launchers: choose from {','.join(LAUNCHERS)}")
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
        with contextlib.ExitStack() as stack:
            bench.private_jupyter(root, bench.REPO)
            bench.KERNEL_LOG["file"] = open(args.kernel_log, "ab") if args.kernel_log else open(os.devnull, "wb")
            for name in [n for n in os.environ if n.startswith(SLURM_VARIABLES)]:
                del os.environ[name]
            os.environ["SLURM_CONF"] = str(cluster.conf)
            # Open MPI refuses root without these; the benchmark runs as root.
            os.environ.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
            started = time.monotonic()
            cluster.start()
            log(f"two-node cluster up in {time.monotonic() - started:.1f} s; node2 at {cluster.address('node2')}")
            if OVER_SSH & set(args.launchers):
                ssh = stack.enter_context(sshd_on(cluster, root / "ssh"))
                os.environ["PATH"] = f"{ssh}{os.pathsep}{os.environ['PATH']}"
            if BY_NAME & set(args.launchers):
                private_names(cluster)
            kernels_dir = Path(os.environ["JUPYTER_PATH"]) / "kernels"
            for launcher in args.launchers:
                spec = {
                    "argv": [*LAUNCHERS[launcher], *IPYKERNEL, "{connection_file}"],
                    "display_name": f"by {launcher}",
                    "language": "python",
                }
                installed(kernels_dir, proxied_name(launcher), spec, server_ip=offered(cluster))
            connection_file = direct_connection_file(cluster, root)
            for launcher in args.launchers:
                results[launcher] = {}
                if "roundtrip" in args.only:
                    direct = Direct(launcher, connection_file)
                    direct.launch()
                    proxied = bench.start(proxied_name(launcher))
                    proxied.name = "proxied"
                    kernels = [bench.Running("direct", direct.km, bench.Lean(direct.km)), proxied]
                    for k in kernels:
                        k.client.wait_iopub()
                    log(f"round trip by {launcher}")
                    results[launcher]["roundtrip"] = bench.bench_roundtrip(kernels, args.batches, args.per_batch, log)
                    kernels[0].client.close()
                    direct.stop()
                    bench.stop(proxied)
                    direct = proxied = None
                if "startup" in args.only:
                    results[launcher]["startup"] = bench_startup(cluster, launcher, connection_file, args.startups, log)
        # The sshd is stopped: what is left now, the benchmark left.
        cluster.wait_for_empty_queue(30)
        left = bench.leftovers(root)
        results["left"] = f"{len(cluster.jobs())} / {len(left)}"
        for proc in left:
            with contextlib.suppress(Exception):
                log(f"left behind: {proc.pid} {' '.join(proc.cmdline())[:200]}")
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
