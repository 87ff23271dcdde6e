"""The relay floor: a kernel's five channels relayed by zmq's C proxy, no Python on the message path.

    python bench/relay_floor.py INNER_CONNECTION_FILE OUTER_CONNECTION_FILE [--python]

Binds the ports of OUTER and relays each channel to the kernel at INNER with
``zmq.proxy``, one thread per channel, so a message crosses this process in
libzmq alone. The two files share key and signature scheme, so messages pass
unaltered. It is the cheapest relay one can put between a client and a kernel:
``bench/run.py`` measures it beside the proxy to show what any relay process
costs on the machine.

- iopub: XPUB (outer) / XSUB (inner), so the client's subscription reaches the kernel;
- shell, control, stdin: ROUTER (outer) / DEALER (inner). The ROUTER puts the
  client's identity before ``<IDS|MSG>``, the kernel echoes it in its reply and
  the ROUTER routes the reply by it. The inner DEALERs share one identity, so
  the kernel's stdin ROUTER finds the relay under the identity its shell saw;
- heartbeat: ROUTER (outer) / DEALER (inner) as well: the kernel echoes the ping.

With ``--python`` the frames cross Python instead: one thread polls all ten
sockets and passes each message on as it came (pyzmq's recv and send, no
parsing): the floor of any relay written in Python, the proxy's language
(``bench/run.py --floor-python``).

It exits on SIGTERM or SIGINT, or when its parent is gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import zmq

#: the identity of every inner DEALER: stdin requests are routed by the identity the kernel's shell saw
IDENTITY = b"relay-floor"

#: channel -> (socket bound at the outer port, socket connected to the inner port)
CHANNELS = {
    "iopub": (zmq.XPUB, zmq.XSUB),
    "shell": (zmq.ROUTER, zmq.DEALER),
    "control": (zmq.ROUTER, zmq.DEALER),
    "stdin": (zmq.ROUTER, zmq.DEALER),
    "hb": (zmq.ROUTER, zmq.DEALER),
}


def url(info: dict, channel: str) -> str:
    return f"{info['transport']}://{info['ip']}:{info[channel + '_port']}"


def sockets(context: zmq.Context, inner: dict, outer: dict, channel: str) -> tuple[zmq.Socket, zmq.Socket]:
    """The channel's two sockets, bound and connected (here, so that a port taken stops the process)."""
    front_type, back_type = CHANNELS[channel]
    front, back = context.socket(front_type), context.socket(back_type)
    front.linger = back.linger = 0
    if back_type == zmq.DEALER:
        back.identity = IDENTITY
    front.bind(url(outer, channel))
    back.connect(url(inner, channel))
    return front, back


def relay(front: zmq.Socket, back: zmq.Socket) -> None:
    """Relay between the two sockets until the context is terminated."""
    try:
        zmq.proxy(front, back)
    except zmq.ContextTerminated:
        pass
    finally:
        front.close()
        back.close()


def relay_in_python(pairs: list[tuple[zmq.Socket, zmq.Socket]]) -> None:
    """Pass every message between each pair's two sockets, in one Python thread, until the context ends."""
    poller = zmq.Poller()
    partner = {}
    for front, back in pairs:
        partner[front], partner[back] = back, front
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
    try:
        while True:
            for socket, _ in poller.poll():
                while socket.poll(0):
                    partner[socket].send_multipart(socket.recv_multipart(copy=False), copy=False)
    except zmq.ContextTerminated:
        pass
    finally:
        for socket in partner:
            socket.close()


def wait_for_the_end() -> None:
    """Return on SIGTERM or SIGINT, or once the parent process is gone (we are reparented)."""
    parent = os.getppid()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0) and os.getppid() == parent:
        pass


def main(argv: list[str]) -> int:
    in_python = "--python" in argv
    argv = [arg for arg in argv if arg != "--python"]
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    inner, outer = (json.loads(Path(path).read_text()) for path in argv)
    context = zmq.Context()
    pairs = [sockets(context, inner, outer, channel) for channel in CHANNELS]
    if in_python:
        threading.Thread(target=relay_in_python, args=(pairs,), name="relay", daemon=True).start()
    for pair in [] if in_python else pairs:
        threading.Thread(target=relay, args=pair, daemon=True).start()
    wait_for_the_end()
    context.term()  # each proxy raises ContextTerminated and closes its sockets
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
