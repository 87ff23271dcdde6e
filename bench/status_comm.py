"""What the JupyterLab status bar item costs an idle proxied kernel: messages, bytes and CPU per minute.

    python bench/status_comm.py                 # 4 windows of 60 s: about 4 minutes
    python bench/status_comm.py --windows 6 --window 30
    python bench/status_comm.py --in-job        # the kernel in a job of the tests' Slurm (as root)

One proxied ipykernel, idle, watched in windows that alternate between no
comm open and the extension's ``inplace_restarter.job`` comm open (as the
status bar item keeps it), so that both see the same machine. For each it
counts what reaches the client's iopub (messages and bytes) and the CPU time
of the proxy and of the inner kernel, per minute. Outside a job the states
are the memory's; ``--in-job`` starts the tests' single-node Slurm
(tests/slurm.py) and the proxy inside ``srun --time=60``, where one a minute
tells the time left (``JobState.time_interval``). Private Jupyter folders and
cleanup as in run.py. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from run import private_jupyter, start, stop  # noqa: E402

from tests.slurm import Cluster, temporary_folder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET = "inplace_restarter.job"


def pids(k) -> tuple[int, int]:
    """The proxy's and the inner kernel's pids, as the kernel sees them (in a job, srun is neither)."""
    expression = {"pids": "(os.getppid(), os.getpid())"}
    content = {"code": "import os", "silent": False, "store_history": False, "user_expressions": expression}
    reply = k.client.request("execute_request", {**content, "allow_stdin": False})
    return ast.literal_eval(reply["content"]["user_expressions"]["pids"]["data"]["text/plain"])


def window(k, processes: dict[str, psutil.Process], seconds: float) -> dict:
    """Messages and bytes on iopub, and CPU seconds of ``processes``, during ``seconds``; per minute."""
    cpu = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
    messages = size = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if k.client.iopub.poll(left * 1000):
            while True:
                try:
                    frames = k.client.iopub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                messages += 1
                size += sum(map(len, frames))
    per_minute = 60 / seconds
    used = {f"{name}_cpu": (sum(p.cpu_times()[:2]) - cpu[name]) * per_minute for name, p in processes.items()}
    return {"messages": messages * per_minute, "bytes": size * per_minute, **used}


def comm_request(k, msg_type: str, content: dict) -> None:
    """Send a comm message (which has no reply) and read iopub until its idle."""
    msg_id = k.client.send(msg_type, content)
    idle = False

    def handle(m: dict) -> None:
        nonlocal idle
        if m["parent_header"].get("msg_id") == msg_id and m["header"]["msg_type"] == "status":
            idle = idle or k.client.session.unpack(m["content"])["execution_state"] == "idle"

    k.client.pump(handle, lambda: idle, 60, f"idle after {msg_type}")


def in_job(kernels: Path) -> str:
    """A spec of the proxy inside ``srun --time=60`` beside run.py's; its name."""
    spec = json.loads((kernels / "proxied" / "kernel.json").read_text())
    spec["argv"] = ["srun", "--nodes=1", "--ntasks=1", "--time=60", *spec["argv"]]
    (kernels / "in-job").mkdir()
    (kernels / "in-job" / "kernel.json").write_text(json.dumps(spec))
    return "in-job"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=4, help="windows in all, alternating without and with the comm")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument("--in-job", action="store_true", help="the proxy inside srun on the tests' Slurm")
    args = parser.parse_args()

    cluster = Cluster(temporary_folder("slurm-bench-")) if args.in_job else None
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        private_jupyter(Path(tmp), REPO)
        name = "proxied"
        if cluster is not None:
            cluster.start()
            stack.callback(cluster.stop)
            os.environ["SLURM_CONF"] = str(cluster.conf)
            name = in_job(Path(os.environ["JUPYTER_PATH"]) / "kernels")
        k = start(name, out=open(Path(tmp) / "kernels.log", "w"))
        try:
            k.client.wait_iopub()
            proxy, kernel = pids(k)
            processes = {"proxy": psutil.Process(proxy), "kernel": psutil.Process(kernel)}
            results: dict[str, list[dict]] = {"without the comm": [], "with the comm open": []}
            for i in range(args.windows):
                if i % 2:
                    comm_id = uuid.uuid4().hex
                    comm_request(k, "comm_open", {"comm_id": comm_id, "target_name": TARGET, "data": {}})
                    results["with the comm open"].append(window(k, processes, args.window))
                    comm_request(k, "comm_close", {"comm_id": comm_id, "data": {}})
                else:
                    k.client.drain_iopub(lambda m: None)
                    results["without the comm"].append(window(k, processes, args.window))
        finally:
            stop(k)

    where = "in a Slurm job" if args.in_job else "outside Slurm"
    print(
        f"Idle proxied ipykernel {where}, {args.windows} alternating windows of {args.window:g} s, per minute (median)\n"
    )
    print("| | iopub messages | iopub bytes | proxy CPU ms | kernel CPU ms |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        m = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(
            f"| {name} | {m['messages']:.1f} | {m['bytes']:.0f} | {m['proxy_cpu'] * 1000:.0f} | {m['kernel_cpu'] * 1000:.0f} |"
        )
    print(f"\n{psutil.cpu_count()} CPUs, load {psutil.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
