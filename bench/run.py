"""Side-by-side benchmark: the same kernel used directly and through the proxy.

    python bench/run.py            # the full run: 3-6 minutes on 2 cores
    python bench/run.py --quick    # a smoke run: about a minute

Everything runs in ONE process, with the kernels measured interleaved
(rotating which goes first), because on a small noisy machine only kernels
measured side by side give stable ratios.  Kernelspecs, connection files and
IPython profiles live in a temporary folder (JUPYTER_PATH and friends point
there), never the user's; every process started is killed in ``finally``.

The round trip, comms and buffer measures also time the *relay floor*: a
second direct kernel behind ``relay_floor.py``, a forwarder process that relays
every channel with zmq's own C proxy, no Python on the message path. No relay
is cheaper, so a target beyond the floor's ratio cannot be met by any proxy
process on that machine; what lies between the floor and the proxy is the
proxy's own cost. ``--no-floor`` leaves it out.

The client is a lean synchronous zmq client (jupyter_client's Session for
signing, raw DEALER/SUB sockets, a zmq poller), so that the client's own cost
is as small as possible and the same for every kernel.

It is a benchmark, not a test: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RELAY_FLOOR = Path(__file__).resolve().parent / "relay_floor.py"
#: relay_floor.py's options (--floor-python adds --python)
FLOOR_OPTIONS: list[str] = []
IPYKERNEL_ARGV = [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
MiB = 1024 * 1024


# -- the temporary Jupyter world ------------------------------------------------


def private_jupyter(root: Path, proxy_path: Path) -> None:
    """Point every Jupyter and IPython folder at ``root``; write the two specs."""
    dirs = {
        "JUPYTER_PATH": root / "path",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "JUPYTER_CONFIG_DIR": root / "config",
        "IPYTHONDIR": root / "ipython",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True)
        os.environ[name] = str(path)
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    os.environ.pop("JUPYTER_CONFIG_PATH", None)
    # The proxy imported by the kernel processes is the one in the working tree
    # (or --proxy-path), not whatever copy is installed.
    (root / "cwd").mkdir()
    KERNEL_LOG["cwd"] = str(root / "cwd")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(proxy_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    kernels = dirs["JUPYTER_PATH"] / "kernels"
    specs = {
        "direct": {"argv": IPYKERNEL_ARGV, "display_name": "direct", "language": "python"},
        "proxied": {
            "argv": [PYTHON, "-m", "inplace_restarter", "-f", "{connection_file}", "--resource-dir={resource_dir}"],
            "display_name": "proxied",
            "language": "python",
            "metadata": {"inplace_restarter": {"original_argv": IPYKERNEL_ARGV}},
        },
    }
    specs["standby"] = {**specs["proxied"], "argv": [*specs["proxied"]["argv"], "--standby"], "display_name": "standby"}
    # logs its start step by step (app.ProxyKernelApp._log_timeline), for --timeline
    specs["timeline"] = {**specs["proxied"], "argv": [*specs["proxied"]["argv"], "--log-level=INFO"]}
    for name, spec in specs.items():
        (kernels / name).mkdir(parents=True)
        (kernels / name / "kernel.json").write_text(json.dumps(spec, indent=1))


# -- a lean client ------------------------------------------------------------------


class Lean:
    """A synchronous client on raw zmq sockets: shell, iopub (and control)."""

    def __init__(self, km):
        self.km = km
        self.session = km.session
        self.shell = km.connect_shell()
        self.iopub = km.connect_iopub()
        self.poller = zmq.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)

    def close(self) -> None:
        for s in (self.shell, self.iopub):
            s.close(linger=0)

    def _recv(self, socket, content: bool = True) -> dict:
        frames = socket.recv_multipart(copy=False)
        _, frames = self.session.feed_identities(frames, copy=False)
        return self.session.deserialize(frames, content=content, copy=False)

    def drain_iopub(self, handle) -> None:
        """Hand every iopub message already received to ``handle`` (content left packed)."""
        while True:
            try:
                frames = self.iopub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            _, frames = self.session.feed_identities(frames, copy=False)
            handle(self.session.deserialize(frames, content=False, copy=False))

    def pump(self, handle, done, timeout: float, what: str) -> None:
        """Read iopub into ``handle`` until ``done()``; TimeoutError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout} s")
            if self.iopub.poll(left * 1000):
                self.drain_iopub(handle)

    def send(self, msg_type: str, content: dict, buffers=None) -> str:
        """Send on shell without waiting for anything; the message id."""
        return self.session.send(self.shell, msg_type, content, buffers=buffers)["header"]["msg_id"]

    def request(self, msg_type: str, content: dict, timeout: float = 120, wait_idle: bool = True, count=None) -> dict:
        """Send; return the reply once it and (with wait_idle) the idle status are in.

        ``count``: a list whose first item grows by the bytes of stdout received.
        """
        msg_id = self.send(msg_type, content)
        reply = None
        idle = not wait_idle

        def handle(m):
            nonlocal idle
            if m["parent_header"].get("msg_id") != msg_id:
                return
            t = m["header"]["msg_type"]
            if t == "status":
                if self.session.unpack(m["content"])["execution_state"] == "idle":
                    idle = True
            elif t == "stream" and count is not None:
                c = self.session.unpack(m["content"])
                if c["name"] == "stdout":
                    count[0] += len(c["text"].encode())

        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{msg_type}: no {'reply' if reply is None else 'idle'} within {timeout} s")
            events = dict(self.poller.poll(left * 1000))
            if self.shell in events:
                m = self._recv(self.shell)
                if m["parent_header"].get("msg_id") == msg_id:
                    reply = m
            if self.iopub in events:
                self.drain_iopub(handle)
        return reply

    def execute(self, code: str, **kwargs) -> dict:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        reply = self.request("execute_request", content, **kwargs)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed: {reply['content']}")
        return reply

    def wait_iopub(self, timeout: float = 60) -> None:
        """Until kernel_info's idle comes back on iopub: iopub is subscribed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("kernel_info_request", {}, timeout=1.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


# -- kernels --------------------------------------------------------------------------


@dataclass
class Running:
    name: str
    km: object
    client: Lean
    started: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.km.provisioner.pid


@dataclass
class Floor(Running):
    """The relay floor: a client on the forwarder's ports, the forwarder, and the direct kernel behind it."""

    relay: subprocess.Popen | None = None
    inner: Running | None = None

    @property
    def pid(self) -> int:
        return self.relay.pid


def tree(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


#: where the kernels' own stdout and stderr go (their logs, not cell output), and
#: their working directory: not the repo, whose inplace_restarter would otherwise
#: shadow --proxy-path (python -m puts the working directory first on sys.path)
KERNEL_LOG = {"file": None, "cwd": None}


def launch(km, out=None) -> None:
    out = out or KERNEL_LOG["file"]
    km.start_kernel(stdout=out, stderr=out, cwd=KERNEL_LOG["cwd"])


def start(name: str, out=None) -> Running:
    """Kernel ``name``, its stdout and stderr to ``out`` (default: the kernels' log)."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=name)
    launch(km, out)
    return Running(name, km, Lean(km))


def start_floor() -> Floor:
    """A second direct kernel (its iopub not shared with the first) behind a relay_floor.py forwarder."""
    from jupyter_client.connect import write_connection_file
    from jupyter_client.manager import KernelManager

    inner = start("direct")
    inner.client.close()  # a second subscriber would make the kernel send its output twice
    try:
        outer = Path(inner.km.connection_file).with_name(f"relay-floor-{uuid.uuid4().hex[:8]}.json")
        session = inner.km.session
        write_connection_file(str(outer), key=session.key, signature_scheme=session.signature_scheme, ip="127.0.0.1")
        # both connection files are in the temporary folder: leftovers() finds the forwarder by its command line
        out = KERNEL_LOG["file"]
        relay = subprocess.Popen(
            [PYTHON, str(RELAY_FLOOR), inner.km.connection_file, str(outer), *FLOOR_OPTIONS],
            stdout=out,
            stderr=out,
            cwd=KERNEL_LOG["cwd"],
        )
    except BaseException:
        stop(inner)
        raise
    km = KernelManager()
    km.load_connection_file(str(outer))
    return Floor("floor", km, Lean(km), relay=relay, inner=inner)


def stop(k: Running | None) -> None:
    """Shut down and make sure nothing the kernel started is left."""
    if k is None:
        return
    if isinstance(k, Floor):
        stop_floor(k)
        return
    procs = tree(k.pid if k.km.has_kernel else None)
    with contextlib.suppress(Exception):
        k.client.close()
    with contextlib.suppress(Exception):
        k.km.shutdown_kernel(now=True)
    kill_all(procs)


def stop_floor(k: Floor) -> None:
    """SIGTERM to the forwarder (SIGKILL if it lingers), then the kernel behind it."""
    with contextlib.suppress(Exception):
        k.client.close()
    k.relay.terminate()
    try:
        k.relay.wait(5)
    except subprocess.TimeoutExpired:
        k.relay.kill()
        k.relay.wait()
    stop(k.inner)


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


def first_reply(km, start=launch) -> float:
    """From launch of ``km``'s kernel (by ``start(km)``) to the reply of its first execute request."""
    t0 = time.perf_counter()
    start(km)
    shell = km.connect_shell()
    try:
        km.session.send(shell, "execute_request", {"code": "", "silent": False})
        if not shell.poll(120_000):
            raise TimeoutError("no execute reply within 120 s")
        shell.recv_multipart()
        return time.perf_counter() - t0
    finally:
        shell.close(linger=0)


# -- statistics -------------------------------------------------------------------------


def median(xs):
    return statistics.median(xs)


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def mem(pid: int) -> dict:
    p = psutil.Process(pid)
    try:
        full = p.memory_full_info()
        return {"rss": full.rss, "pss": getattr(full, "pss", None), "uss": getattr(full, "uss", None)}
    except psutil.AccessDenied:
        return {"rss": p.memory_info().rss, "pss": None, "uss": None}


def mb(n) -> str:
    return "n/a" if n is None else f"{n / MiB:.1f} MB"


# -- the measurements ---------------------------------------------------------------------


def rotated(rep: int, *kernels):
    """Rotate which goes first, rep by rep (two alternate)."""
    i = rep % len(kernels)
    return kernels[i:] + kernels[:i]


def ratio_key(name: str, key: str = "ratio") -> str:
    """Where kernel ``name``'s ratio to direct is kept: the proxy's under the keys it always had."""
    return key if name == "proxied" else f"{name}_{key}"


def relayed(kernels: list[Running]) -> list[str]:
    """The names of the kernels compared with the direct one."""
    return [k.name for k in kernels if k.name != "direct"]


def bench_roundtrip(kernels: list[Running], batches: int, per_batch: int, log) -> dict:
    samples = {k.name: [] for k in kernels}
    batch_ratios = {name: [] for name in relayed(kernels)}
    for k in kernels:  # warm them all
        for _ in range(50):
            k.client.execute("")
    for rep in range(batches):
        medians = {}
        for k in rotated(rep, *kernels):
            ts = []
            for _ in range(per_batch):
                t0 = time.perf_counter()
                k.client.execute("")
                ts.append(time.perf_counter() - t0)
            samples[k.name] += ts
            medians[k.name] = median(ts)
        for name, ratios in batch_ratios.items():
            ratios.append(medians[name] / medians["direct"])
    out = {n: {"median": median(s), "p95": p95(s), "n": len(s)} for n, s in samples.items()}
    text = [f"direct {out['direct']['median'] * 1e3:.3f} ms"]
    for name, ratios in batch_ratios.items():
        out[ratio_key(name, "ratio_median")] = ratio = out[name]["median"] / out["direct"]["median"]
        out[ratio_key(name, "ratio_p95")] = out[name]["p95"] / out["direct"]["p95"]
        out[ratio_key(name, "batch_ratios")] = ratios
        text.append(
            f"{name} {out[name]['median'] * 1e3:.3f} ms (x{ratio:.2f}; per-batch ratios {min(ratios):.2f}..{max(ratios):.2f})"
        )
    log("round trip: " + ", ".join(text))
    return out


def bench_throughput(direct: Running, proxied: Running, total_mb: int, reps: int, log) -> dict:
    lines = total_mb * 1024
    expected = lines * 1024
    code = f"for _ in range({lines}):\n    print({'x' * 1023!r})"
    res = {"direct": [], "proxied": []}
    lost = {"direct": 0, "proxied": 0}
    for rep in range(reps):
        for k in rotated(rep, direct, proxied):
            count = [0]
            t0 = time.perf_counter()
            k.client.execute(code, count=count, timeout=900)
            dt = time.perf_counter() - t0
            res[k.name].append(expected / MiB / dt)
            lost[k.name] += expected - count[0]
            log(f"throughput {k.name}: {expected / MiB / dt:.1f} MB/s, received {count[0]} of {expected} bytes")
    out = {n: {"mbps": median(v), "all": v} for n, v in res.items()}
    out["ratio"] = out["proxied"]["mbps"] / out["direct"]["mbps"]
    out["lost"] = lost
    out["bytes"] = expected
    return out


#: the comm target the comm measures open in each kernel: it echoes every message, buffers and all
ECHO_TARGET = "inplace_restarter_bench_echo"
ECHO_CELL = f"""\
def _bench_echo(comm, _open_msg):
    comm.on_msg(lambda msg: comm.send(msg["content"]["data"], buffers=msg["buffers"]))
get_ipython().kernel.comm_manager.register_target({ECHO_TARGET!r}, _bench_echo)
"""


class Echo:
    """A comm open to the echo target of one kernel, and the echoes come back on it."""

    def __init__(self, k: Running):
        self.client = k.client
        self.comm_id = uuid.uuid4().hex
        #: (data["seq"], buffers) of every echo since the last clear()
        self.echoes: list = []
        self.waiting: str | None = None
        self.idle = False
        k.client.execute(ECHO_CELL)
        self.expect(self.client.send("comm_open", {"comm_id": self.comm_id, "target_name": ECHO_TARGET, "data": {}}))
        self.await_idle()

    def expect(self, msg_id: str) -> None:
        """Watch for the idle status of ``msg_id`` (forgetting any earlier one)."""
        self.waiting, self.idle = msg_id, False

    def handle(self, m: dict) -> None:
        t = m["header"]["msg_type"]
        if t == "comm_msg":
            c = self.client.session.unpack(m["content"])
            if c["comm_id"] == self.comm_id:
                self.echoes.append((c["data"]["seq"], m["buffers"]))
        elif t == "status" and m["parent_header"].get("msg_id") == self.waiting:
            self.idle = self.client.session.unpack(m["content"])["execution_state"] == "idle"

    def await_idle(self, timeout: float = 60) -> None:
        self.client.pump(self.handle, lambda: self.idle, timeout, f"idle status for {self.waiting}")

    def send(self, seq: int, buffers=None) -> None:
        self.expect(self.client.send("comm_msg", {"comm_id": self.comm_id, "data": {"seq": seq}}, buffers=buffers))

    def close(self) -> None:
        self.expect(self.client.send("comm_close", {"comm_id": self.comm_id, "data": {}}))
        self.await_idle()


def comm_seconds(echo: Echo, n: int, pipelined: bool) -> float:
    """Seconds from the first of ``n`` comm_msgs sent to the last echo back; every echo checked, in order.

    ``pipelined``: all sent at once, iopub read between sends, as a frontend's
    event loop would; else each after the previous one's idle status, as
    ipywidgets' throttle sends a dragged slider's values (one message in flight).
    """
    echo.echoes.clear()
    t0 = time.perf_counter()
    for seq in range(n):
        echo.send(seq)
        if pipelined:
            echo.client.drain_iopub(echo.handle)
        else:
            echo.await_idle()
    echo.client.pump(
        echo.handle, lambda: len(echo.echoes) >= n, 120, f"echo of all {n} comm messages (got {len(echo.echoes)})"
    )
    dt = time.perf_counter() - t0
    echo.await_idle()  # the last message's idle: nothing of this run left for the next
    if [seq for seq, _ in echo.echoes] != list(range(n)):
        raise RuntimeError(f"comm echoes lost, doubled or out of order: {len(echo.echoes)} echoes for {n} messages")
    return dt


COMM_MODES = {"one in flight": False, "pipelined": True}


def bench_comms(kernels: list[Running], n: int, reps: int, log) -> dict:
    """Client->kernel comm messages per second, both ways of sending them, interleaved."""
    echoes = {k.name: Echo(k) for k in kernels}
    for echo in echoes.values():  # warm them all
        for pipelined in COMM_MODES.values():
            comm_seconds(echo, 100, pipelined)
    res = {mode: {k.name: [] for k in kernels} for mode in COMM_MODES}
    for rep in range(reps):
        for mode, pipelined in COMM_MODES.items():
            for k in rotated(rep, *kernels):
                rate = n / comm_seconds(echoes[k.name], n, pipelined)
                res[mode][k.name].append(rate)
                log(f"comms {mode} {k.name}: {rate:.0f} messages/s")
    for echo in echoes.values():
        echo.close()
    out: dict = {"n": n}
    for mode, by_kernel in res.items():
        out[mode] = {name: {"rate": median(v), "all": v} for name, v in by_kernel.items()}
        for name in relayed(kernels):
            out[mode][ratio_key(name)] = out[mode][name]["rate"] / out[mode]["direct"]["rate"]
    return out


def bench_buffer(kernels: list[Running], mbytes: int, reps: int, log) -> dict:
    """A comm_msg with one ``mbytes`` MB binary buffer, echoed back with it: seconds until the echo is in."""
    payload = os.urandom(mbytes * MiB)  # random: bytes relayed out of place would not compare equal
    echoes = {k.name: Echo(k) for k in kernels}
    res = {k.name: [] for k in kernels}
    for rep in range(-1, reps):  # rep -1 warms them all
        for k in rotated(rep, *kernels):
            echo = echoes[k.name]
            echo.echoes.clear()
            t0 = time.perf_counter()
            echo.send(rep, buffers=[payload])
            echo.client.pump(echo.handle, lambda echo=echo: echo.echoes, 120, f"echo of the {mbytes} MB buffer")
            dt = time.perf_counter() - t0
            [(seq, buffers)] = echo.echoes
            if seq != rep or len(buffers) != 1 or bytes(buffers[0]) != payload:
                raise RuntimeError(f"the {mbytes} MB buffer came back altered from {k.name}")
            echo.echoes.clear()
            echo.await_idle()
            if rep >= 0:
                res[k.name].append(dt)
                log(f"buffer {k.name}: {dt:.3f} s for {mbytes} MB each way")
    for echo in echoes.values():
        echo.close()
    out = {n: {"seconds": median(v), "all": v} for n, v in res.items()}
    for name in relayed(kernels):
        out[ratio_key(name)] = out["direct"]["seconds"] / out[name]["seconds"]  # speed, as for throughput
    out["mb"] = mbytes
    return out


def cold_start(name: str) -> float:
    """Launch kernel ``name``, time it to its first execute reply, shut it down."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=name)
    try:
        return first_reply(km)
    finally:
        procs = tree(km.provisioner.pid if km.has_kernel else None)
        with contextlib.suppress(Exception):
            km.shutdown_kernel(now=True)
        kill_all(procs)


def bench_startup(reps: int, log) -> dict:
    res = {"direct": [], "proxied": []}
    for rep in range(reps):
        for name in rotated(rep, "direct", "proxied"):
            res[name].append(cold_start(name))
            log(f"startup {name}: {res[name][-1]:.3f} s")
    out = {n: {"median": median(v), "all": v} for n, v in res.items()}
    out["ratio"] = out["proxied"]["median"] / out["direct"]["median"]
    return out


#: the proxy's log line with its start, step by step: "step at 0.123 s, ..."
TIMELINE = re.compile(r"Startup, since the process started: (.*)")


def process_started(pid: int) -> float:
    """When process ``pid`` started, as a time.time(), to the clock tick, as the proxy reckons it (app.process_start).

    Not psutil's create_time, whose boot time is in whole seconds.
    """
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ticks / os.sysconf("SC_CLK_TCK")


def proxy_timeline(root: Path) -> dict[str, float]:
    """Launch the proxy, time its first reply, and read its steps from its log: seconds after the launch."""
    from jupyter_client.manager import KernelManager

    log_file = root / f"timeline-{uuid.uuid4().hex[:8]}.log"
    km = KernelManager(kernel_name="timeline")
    with open(log_file, "wb") as out:
        launched = time.time()
        try:
            reply = first_reply(km, start=lambda km: km.start_kernel(stdout=out, stderr=out, cwd=KERNEL_LOG["cwd"]))
            started = process_started(km.provisioner.pid)
        finally:
            procs = tree(km.provisioner.pid if km.has_kernel else None)
            with contextlib.suppress(Exception):
                km.shutdown_kernel(now=True)
            kill_all(procs)
    line = TIMELINE.search(log_file.read_text())
    if line is None:
        raise RuntimeError(f"no startup timeline in the proxy's log {log_file}")
    steps = {"process started": started - launched}
    steps.update({step: started - launched + at for step, at in steps_of(line.group(1)).items()})
    steps["first reply"] = reply
    return steps


def bench_timeline(root: Path, reps: int, log) -> dict:
    """The proxy's start step by step, each step's median in seconds after the launch, beside a direct cold start."""
    runs, direct = [], []
    for rep in range(reps):
        for name in rotated(rep, "direct", "proxied"):
            if name == "direct":
                direct.append(cold_start("direct"))
            else:
                runs.append(proxy_timeline(root))
        log(f"timeline: direct {direct[-1]:.3f} s, proxied {runs[-1]}")
    steps = {step: median([run[step] for run in runs]) for step in runs[0]}
    return {"steps": steps, "direct": median(direct), "all": runs, "direct_all": direct}


#: the proxy's log line after a restart (restart.timeline): "step at 0.123 s, ..."
RESTARTED = re.compile(r"Restarted the kernel in place in [\d.]+ s.*; since it began: (.*)")


def steps_of(text: str) -> dict[str, float]:
    """``{"step": 0.123}`` from "step at 0.123 s, other step at 0.456 s"."""
    steps = {}
    for step in text.split(", "):
        name, _, at = step.rpartition(" at ")
        steps[name] = float(at.removesuffix(" s"))
    return steps


def bench_restart(root: Path, reps: int, log) -> dict:
    """%restart, a cold start of the same kernel, and KernelManager.restart_kernel, interleaved.

    The proxy logs where each restart's time went (``--log-level=INFO``): the
    median of each step is reported beside the totals.
    """
    res = {"%restart": [], "cold start": [], "restart_kernel": [], "%restart --standby": []}
    restart_log = root / "restart.log"
    with open(restart_log, "wb") as out:
        proxied = start("timeline", out)
    direct, standby = start("direct"), start("standby")
    try:
        proxied.client.wait_iopub()
        direct.client.wait_iopub()
        standby.client.wait_iopub()
        for rep in range(reps):
            order = ["%restart", "cold start", "restart_kernel", "%restart --standby"]
            order = order[rep % 4 :] + order[: rep % 4]
            for what in order:
                if what in ("%restart", "%restart --standby"):
                    k = proxied if what == "%restart" else standby
                    t0 = time.perf_counter()
                    k.client.execute("%restart")
                    k.client.execute("", wait_idle=False)
                    res[what].append(time.perf_counter() - t0)
                    if k is standby:
                        time.sleep(2)  # the next spare starts now: let it, before timing anything else
                elif what == "cold start":
                    res[what].append(cold_start("direct"))
                else:
                    direct.client.close()
                    t0 = time.perf_counter()
                    direct.km.restart_kernel()
                    direct.client = Lean(direct.km)
                    direct.client.execute("", wait_idle=False)
                    res[what].append(time.perf_counter() - t0)
                log(f"restart {what}: {res[what][-1]:.3f} s")
    finally:
        stop(direct)
        stop(standby)
        stop(proxied)
    out = {n: {"median": median(v), "all": v} for n, v in res.items()}
    timelines = [steps_of(m.group(1)) for m in RESTARTED.finditer(restart_log.read_text())]
    out["steps"] = (
        {step: median([t[step] for t in timelines if step in t]) for step in timelines[0]} if timelines else {}
    )
    out["ratio_cold"] = out["%restart"]["median"] / out["cold start"]["median"]
    out["ratio_standby"] = out["%restart --standby"]["median"] / out["cold start"]["median"]
    out["ratio_restart_kernel"] = out["%restart"]["median"] / out["restart_kernel"]["median"]
    return out


def inner_of(proxied: Running) -> psutil.Process:
    kids = [p for p in tree(proxied.pid)[1:] if "ipykernel_launcher" in " ".join(p.cmdline())]
    if len(kids) != 1:
        raise RuntimeError(f"expected one inner kernel, found {kids}")
    return kids[0]


def bench_memory(direct: Running, proxied: Running) -> dict:
    for k in (direct, proxied):
        for _ in range(20):
            k.client.execute("")
    out = {
        "proxy": mem(proxied.pid),
        "inner": mem(inner_of(proxied).pid),
        "direct": mem(direct.pid),
    }
    out["ratio_rss"] = out["proxy"]["rss"] / out["inner"]["rss"]
    if out["proxy"]["pss"] is not None:
        out["ratio_pss"] = out["proxy"]["pss"] / out["inner"]["pss"]
        out["ratio_uss"] = out["proxy"]["uss"] / out["inner"]["uss"]
    return out


def bench_endurance(proxied: Running, restarts: int, log) -> dict:
    proxy = psutil.Process(proxied.pid)
    warmup = min(5, restarts // 4)
    before = {"rss": proxy.memory_info().rss, "fds": proxy.num_fds(), "threads": proxy.num_threads()}
    inner_pids = {inner_of(proxied).pid}
    after_warmup = None
    t0 = time.perf_counter()
    for i in range(restarts):
        if i == warmup:
            after_warmup = {"rss": proxy.memory_info().rss, "fds": proxy.num_fds()}
        proxied.client.execute("%restart")
        inner_pids.add(inner_of(proxied).pid)
        if (i + 1) % 50 == 0:
            log(f"endurance: {i + 1} restarts, proxy RSS {mb(proxy.memory_info().rss)}, fds {proxy.num_fds()}")
    elapsed = time.perf_counter() - t0
    proxied.client.execute("")
    time.sleep(1.0)  # the last old kernel is reaped in the background
    after = {"rss": proxy.memory_info().rss, "fds": proxy.num_fds(), "threads": proxy.num_threads()}
    children = proxy.children(recursive=True)
    alive_old = []
    current = inner_of(proxied).pid
    for pid in inner_pids - {current}:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            alive_old.append(f"{pid}:{p.status()}")
    return {
        "restarts": restarts,
        "seconds": elapsed,
        "before": before,
        "after_warmup": after_warmup or before,
        "after": after,
        "growth": after["rss"] - before["rss"],
        "growth_after_warmup": after["rss"] - (after_warmup or before)["rss"],
        "children": len(children),
        "old_kernels_alive": alive_old,
    }


def leftovers(root: Path) -> list[str]:
    """Processes whose command line names our temporary folder: ours, left behind."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and str(root) in " ".join(p.info["cmdline"] or []):
                found.append(p)
    return found


# -- the machine and the table -------------------------------------------------------------------


def machine() -> dict:
    import ipykernel
    import jupyter_client

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "ipykernel": ipykernel.__version__,
        "jupyter_client": jupyter_client.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
    }


def spread(ratios: list) -> str:
    """The median of per-batch ratios, and their range."""
    rs = sorted(ratios)
    return f"{median(rs):.2f}x ({rs[0]:.2f}..{rs[-1]:.2f})"


def floor_cell(res: dict, key: str, fmt=lambda x: f"{x:.2f}x") -> str:
    """The relay floor's ratio ``key`` (see ratio_key) in ``res``, or nothing when the floor was left out."""
    key = ratio_key("floor", key)
    return fmt(res[key]) if key in res else ""


def table(r: dict, m: dict, args) -> str:
    rows = []

    def row(what, direct, proxied, ratio, target, floor=""):
        rows.append(f"| {what} | {direct} | {proxied} | {ratio} | {floor} | {target} |")

    def ms(x):
        return f"{x * 1e3:.3f} ms"

    def s(x):
        return f"{x:.3f} s"

    if "roundtrip" in r:
        rt = r["roundtrip"]
        n = rt["direct"]["n"]
        row(
            f"round trip, empty cell, median (n={n} each)",
            ms(rt["direct"]["median"]),
            ms(rt["proxied"]["median"]),
            f"{rt['ratio_median']:.2f}x",
            "<= 1.10x",
            floor_cell(rt, "ratio_median"),
        )
        row(
            "round trip, empty cell, p95",
            ms(rt["direct"]["p95"]),
            ms(rt["proxied"]["p95"]),
            f"{rt['ratio_p95']:.2f}x",
            "",
            floor_cell(rt, "ratio_p95"),
        )
        batches = len(rt["batch_ratios"])
        row(
            f"round trip, per-batch median ratio ({batches} batches)",
            "",
            "",
            spread(rt["batch_ratios"]),
            "",
            floor_cell(rt, "batch_ratios", spread),
        )
    if "throughput" in r:
        tp = r["throughput"]
        mbytes = tp["bytes"] / MiB
        row(
            f"output throughput, {mbytes:g} MB in 1 KiB lines",
            f"{tp['direct']['mbps']:.1f} MB/s",
            f"{tp['proxied']['mbps']:.1f} MB/s",
            f"{tp['ratio']:.2f}x",
            ">= 0.95x",
        )
        row("output bytes lost (all reps)", str(tp["lost"]["direct"]), str(tp["lost"]["proxied"]), "", "0")
        ra = tp.get("rss_after")
        if ra:
            row(
                "RSS after the output cells: direct kernel / proxy (inner kernel)",
                mb(ra["direct"]),
                f"{mb(ra['proxy'])} ({mb(ra['inner'])})",
                "",
                "",
            )
    if "comms" in r:
        co = r["comms"]
        for mode in COMM_MODES:
            c = co[mode]
            row(
                f"comm messages/s client->kernel, {co['n']} echoed, {mode}",
                f"{c['direct']['rate']:.0f}/s",
                f"{c['proxied']['rate']:.0f}/s",
                f"{c['ratio']:.2f}x",
                ">= 0.9x",
                floor_cell(c, "ratio"),
            )
    if "buffer" in r:
        bu = r["buffer"]
        n = len(bu["direct"]["all"])
        row(
            f"comm buffer, {bu['mb']} MB each way, until the echo is in (n={n}; ratio of speeds)",
            s(bu["direct"]["seconds"]),
            s(bu["proxied"]["seconds"]),
            f"{bu['ratio']:.2f}x",
            ">= 0.9x",
            floor_cell(bu, "ratio"),
        )
    if "startup" in r:
        st = r["startup"]
        row(
            f"startup, launch to first execute reply (n={len(st['direct']['all'])})",
            s(st["direct"]["median"]),
            s(st["proxied"]["median"]),
            f"{st['ratio']:.2f}x",
            "<= 1.2x",
        )
    if "timeline" in r:
        tl = r["timeline"]
        n = len(tl["all"])
        for step, at in sorted(tl["steps"].items(), key=lambda item: item[1]):
            row(f"startup timeline (n={n}): {step}, after the launch", "", s(at), "", "")
        row(f"startup timeline (n={n}): first reply of the kernel used directly", s(tl["direct"]), "", "", "")
    if "restart" in r:
        rs = r["restart"]
        n = len(rs["%restart"]["all"])
        for step, at in sorted(rs.get("steps", {}).items(), key=lambda item: item[1]):
            row(f"%restart timeline (n={n}): {step}, after the restart began", "", s(at), "", "")
        row(
            f"restart until the kernel answers (n={n}): cold start vs %restart",
            s(rs["cold start"]["median"]),
            s(rs["%restart"]["median"]),
            f"{rs['ratio_cold']:.2f}x",
            "<= 0.9x",
        )
        row(
            "restart: KernelManager.restart_kernel vs %restart",
            s(rs["restart_kernel"]["median"]),
            s(rs["%restart"]["median"]),
            f"{rs['ratio_restart_kernel']:.2f}x",
            "< 1x",
        )
        row(
            "restart with --standby: cold start vs %restart",
            s(rs["cold start"]["median"]),
            s(rs["%restart --standby"]["median"]),
            f"{rs['ratio_standby']:.2f}x",
            "well under 0.1 s",
        )
    if "memory" in r:
        me = r["memory"]
        row(
            "memory RSS: inner kernel vs proxy",
            mb(me["inner"]["rss"]),
            mb(me["proxy"]["rss"]),
            f"{me['ratio_rss']:.2f}x",
            "<= 0.8x",
        )
        if "ratio_pss" in me:
            row(
                "memory PSS: inner kernel vs proxy",
                mb(me["inner"]["pss"]),
                mb(me["proxy"]["pss"]),
                f"{me['ratio_pss']:.2f}x",
                "",
            )
            row(
                "memory USS: inner kernel vs proxy",
                mb(me["inner"]["uss"]),
                mb(me["proxy"]["uss"]),
                f"{me['ratio_uss']:.2f}x",
                "",
            )
        row("memory RSS of the direct kernel (for scale)", mb(me["direct"]["rss"]), "", "", "")
    if "endurance" in r:
        en = r["endurance"]
        row(
            f"endurance: {en['restarts']} %restarts ({en['seconds']:.0f} s): proxy RSS growth",
            "",
            f"{en['growth'] / MiB:+.1f} MB ({en['growth_after_warmup'] / MiB:+.1f} MB after warm-up)",
            "",
            "< 5 MB",
        )
        row(
            "endurance: proxy open fds before -> after",
            "",
            f"{en['before']['fds']} -> {en['after']['fds']}",
            "",
            "no growth",
        )
        row(
            "endurance: proxy threads before -> after",
            "",
            f"{en['before']['threads']} -> {en['after']['threads']}",
            "",
            "",
        )
        row(
            "endurance: processes under the proxy / old kernels alive",
            "",
            f"{en['children']} / {len(en['old_kernels_alive'])}",
            "",
            "1 / 0",
        )
    if "leftovers" in r:
        row("processes left after the run", "", str(r["leftovers"]), "", "0")
    head = [
        "| measure | direct | proxied | proxied/direct | relay floor/direct | target |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    mach = "\n".join(f"- {k}: {v}" for k, v in m.items())
    return "\n".join(head + rows) + "\n\nMachine:\n" + mach + "\n"


# -- main ------------------------------------------------------------------------------------------


MEASURES = ("roundtrip", "throughput", "comms", "buffer", "startup", "timeline", "restart", "memory", "endurance")
#: the measures that also time the relay floor
FLOORED = {"roundtrip", "comms", "buffer"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions and 10 MB of output: a smoke run")
    p.add_argument("--only", default="", help=f"comma-separated subset: {','.join(MEASURES)}")
    p.add_argument("--batches", type=int, help="round trip: interleaved batches (default 20, quick 6)")
    p.add_argument("--per-batch", type=int, help="round trip: executes per batch (default 200, quick 100)")
    p.add_argument("--mb", type=int, help="throughput: MB printed (default 100, quick 10)")
    p.add_argument("--tp-reps", type=int, help="throughput: repetitions (default 3, quick 1)")
    p.add_argument("--comm-msgs", type=int, help="comms: comm_msgs echoed per measurement (default 2000, quick 500)")
    p.add_argument("--comm-reps", type=int, help="comms: repetitions of each way of sending (default 3, quick 1)")
    p.add_argument("--buffer-mb", type=int, help="buffer: MB of the comm buffer sent and echoed (default 50)")
    p.add_argument("--buffer-reps", type=int, help="buffer: repetitions (default 10, quick 3)")
    p.add_argument("--startups", type=int, help="startup: repetitions (default 8, quick 3)")
    p.add_argument("--restarts", type=int, help="restart: repetitions (default 8, quick 3)")
    p.add_argument("--endurance", type=int, help="endurance: %%restarts in a row (default 200, quick 20)")
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="leave out the relay floor (a forwarder on zmq's C proxy) from roundtrip, comms and buffer",
    )
    p.add_argument(
        "--floor-python",
        action="store_true",
        help="relay the floor's messages in one Python thread instead of zmq's C proxy: the floor of a Python relay",
    )
    p.add_argument(
        "--proxy-path", default=str(REPO), help="folder put first on PYTHONPATH for the proxy (default: this repo)"
    )
    p.add_argument("--kernel-log", help="append the kernels' stdout and stderr to this file (default: discarded)")
    p.add_argument("--json", help="also write every sample to this JSON file")
    p.add_argument(
        "--hold",
        action="store_true",
        help="print the kernels' pids and wait for Enter before measuring (for profilers)",
    )
    a = p.parse_args(argv)
    q = a.quick
    defaults = dict(
        batches=(6, 20),
        per_batch=(100, 200),
        mb=(10, 100),
        tp_reps=(1, 3),
        comm_msgs=(500, 2000),
        comm_reps=(1, 3),
        buffer_mb=(50, 50),
        buffer_reps=(3, 10),
        startups=(3, 8),
        restarts=(3, 8),
        endurance=(20, 200),
    )
    for k, (quick, full) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if q else full)
    a.only = set(filter(None, a.only.split(","))) or set(MEASURES)
    if a.only - set(MEASURES):
        p.error(f"--only: unknown {','.join(sorted(a.only - set(MEASURES)))}; choose from {','.join(MEASURES)}")
    return a


def main(argv=None) -> int:
    args = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="inplace-restarter-bench-"))
    t_start = time.time()

    def log(text):
        print(f"[{time.time() - t_start:6.1f} s] {text}", file=sys.stderr, flush=True)

    results: dict = {}
    direct = proxied = floor = None
    try:
        private_jupyter(root, Path(args.proxy_path).resolve())
        KERNEL_LOG["file"] = open(args.kernel_log, "ab") if args.kernel_log else open(os.devnull, "wb")
        m = machine()
        log(f"temporary Jupyter folders in {root}; proxy from {args.proxy_path}")
        if {"roundtrip", "throughput", "comms", "buffer", "memory"} & args.only:
            direct, proxied = start("direct"), start("proxied")
            if args.floor_python:
                FLOOR_OPTIONS.append("--python")
            floor = None if args.no_floor or not FLOORED & args.only else start_floor()
            kernels = [k for k in (direct, proxied, floor) if k is not None]
            for k in kernels:
                k.client.wait_iopub()
            if args.hold:
                print(f"direct kernel pid {direct.pid}; proxy pid {proxied.pid}; inner pid {inner_of(proxied).pid}")
                if floor is not None:
                    print(f"relay floor pid {floor.pid}; the kernel behind it {floor.inner.pid}")
                input("Enter to go on: ")
            if "memory" in args.only:
                results["memory"] = bench_memory(direct, proxied)
                log(
                    f"memory: proxy {mb(results['memory']['proxy']['rss'])}, inner {mb(results['memory']['inner']['rss'])}"
                )
            if "roundtrip" in args.only:
                results["roundtrip"] = bench_roundtrip(kernels, args.batches, args.per_batch, log)
            if "throughput" in args.only:
                results["throughput"] = bench_throughput(direct, proxied, args.mb, args.tp_reps, log)
                # what relaying the output left behind in each process
                results["throughput"]["rss_after"] = {
                    "direct": mem(direct.pid)["rss"],
                    "proxy": mem(proxied.pid)["rss"],
                    "inner": mem(inner_of(proxied).pid)["rss"],
                }
            if "comms" in args.only:
                results["comms"] = bench_comms(kernels, args.comm_msgs, args.comm_reps, log)
            if "buffer" in args.only:
                results["buffer"] = bench_buffer(kernels, args.buffer_mb, args.buffer_reps, log)
            stop(direct)
            stop(floor)
            direct = floor = None
        if "startup" in args.only:
            results["startup"] = bench_startup(args.startups, log)
        if "timeline" in args.only:
            results["timeline"] = bench_timeline(root, args.startups, log)
        if "restart" in args.only:
            results["restart"] = bench_restart(root, args.restarts, log)
        if "endurance" in args.only:
            if proxied is None:
                proxied = start("proxied")
                proxied.client.wait_iopub()
            results["endurance"] = bench_endurance(proxied, args.endurance, log)
        stop(proxied)
        proxied = None
        time.sleep(0.5)
        left = leftovers(root)
        results["leftovers"] = len(left)
        kill_all(left)
    finally:
        stop(direct)
        stop(proxied)
        stop(floor)
        kill_all(leftovers(root))
        shutil.rmtree(root, ignore_errors=True)
    text = table(results, m, args)
    print()
    print(text)
    print(f"command: python bench/run.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; took {time.time() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
