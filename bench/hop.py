"""How long one zmq hop of a large message takes on this machine, over TCP and ipc:// on loopback.

    python bench/hop.py            # 50 MB, 8 sends per transport
    python bench/hop.py --mb 10

A relay adds hops (client -> proxy -> kernel and back), and zmq hands a
message on only once all of it has arrived, so a large comm buffer through any
relay takes the sum of its hops: this is the bound behind the buffer measure
of run.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import zmq


def hop_seconds(context: zmq.Context, endpoint: str, payload: bytes, sends: int) -> float:
    """Median seconds from send to the whole message received, over a PAIR of sockets bound at ``endpoint``."""
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        sender.bind(endpoint)
        receiver.connect(sender.last_endpoint.decode())
        times = []
        for _ in range(sends):
            t0 = time.perf_counter()
            sender.send(payload, copy=False)
            receiver.recv(copy=False)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=50)
    p.add_argument("--sends", type=int, default=8)
    a = p.parse_args()
    payload = os.urandom(a.mb * 1024 * 1024)
    context = zmq.Context()
    with tempfile.TemporaryDirectory() as folder:
        for transport, endpoint in (("tcp", "tcp://127.0.0.1:*"), ("ipc", f"ipc://{folder}/hop")):
            print(f"{transport} {a.mb} MB in {hop_seconds(context, endpoint, payload, a.sends) * 1e3:.1f} ms")
    context.term()


if __name__ == "__main__":
    main()
