"""What the JupyterLab status bar item costs an idle proxied kernel: messages, bytes and CPU per minute.

    python bench/status_comm.py                 # 4 windows of 60 s: about 4 minutes
    python bench/status_comm.py --windows 6 --window 30

One proxied ipykernel, idle, watched in windows that alternate between no
comm open and the extension's ``inplace_restarter.job`` comm open (as the
status bar item keeps it), so that both see the same machine. For each it
counts what reaches the client's iopub (messages and bytes) and the CPU time
of the proxy and of the inner kernel, per minute. The kernel runs outside
Slurm here, so the states are the memory's (a Slurm job adds one a minute
for the time left, ``JobState.time_interval``). Private Jupyter folders and
cleanup as in run.py. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).parent))
from run import start, stop, tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET = "inplace_restarter.job"


def window(k, seconds: float) -> dict:
    """Messages and bytes on iopub, and CPU seconds of the proxy and the kernel behind it, during ``seconds``."""
    procs = tree(k.pid)
    cpu = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
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
    used = {p.pid: sum(p.cpu_times()[:2]) - cpu[p.pid] for p in procs}
    proxy = used.pop(k.pid)
    per_minute = 60 / seconds
    return {
        "messages": messages * per_minute,
        "bytes": size * per_minute,
        "proxy_cpu": proxy * per_minute,
        "kernel_cpu": sum(used.values()) * per_minute,
    }


def comm_request(k, msg_type: str, content: dict) -> None:
    """Send a comm message (which has no reply) and read iopub until its idle."""
    msg_id = k.client.send(msg_type, content)
    idle = False

    def handle(m: dict) -> None:
        nonlocal idle
        if m["parent_header"].get("msg_id") == msg_id and m["header"]["msg_type"] == "status":
            idle = idle or k.client.session.unpack(m["content"])["execution_state"] == "idle"

    k.client.pump(handle, lambda: idle, 60, f"idle after {msg_type}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=4, help="windows in all, alternating without and with the comm")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        from run import private_jupyter

        private_jupyter(Path(tmp), REPO)
        k = start("proxied", out=open(Path(tmp) / "kernels.log", "w"))
        try:
            k.client.wait_iopub()
            k.client.execute("pass")
            results: dict[str, list[dict]] = {"without the comm": [], "with the comm open": []}
            for i in range(args.windows):
                if i % 2:
                    comm_id = uuid.uuid4().hex
                    comm_request(k, "comm_open", {"comm_id": comm_id, "target_name": TARGET, "data": {}})
                    results["with the comm open"].append(window(k, args.window))
                    comm_request(k, "comm_close", {"comm_id": comm_id, "data": {}})
                else:
                    k.client.drain_iopub(lambda m: None)
                    results["without the comm"].append(window(k, args.window))
        finally:
            stop(k)

    print(f"Idle proxied ipykernel, {args.windows} alternating windows of {args.window:g} s, per minute (median)\n")
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
