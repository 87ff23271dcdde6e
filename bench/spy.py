"""Profile the proxy process with py-spy while it relays a workload.

    pip install py-spy
    python bench/spy.py roundtrip            # 3000 empty cells
    python bench/spy.py throughput --mb 100  # one cell printing 100 MB
    python bench/spy.py roundtrip --proxy-path /tmp/exp   # a scratch copy of the package

py-spy samples the running proxy (``record --format raw``, its idle time
excluded unless --idle) and this prints the functions with the most samples,
by self time and including callees.  The collapsed stacks are kept with
--out FILE (feed them to flamegraph.pl or speedscope).

The proxy's startup imports are better seen with
``python -X importtime -c "import inplace_restarter.app"``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        # py-spy's first frame is "process ..." or the thread name
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples"]
    out.append("\nself time:")
    out += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    out.append("\nincluding callees:")
    out += [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", choices=["roundtrip", "throughput"])
    p.add_argument("--n", type=int, default=3000, help="round trip: empty cells")
    p.add_argument("--mb", type=int, default=100, help="throughput: MB printed")
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--idle", action="store_true", help="count idle (waiting) samples too")
    p.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL (Python CPU time)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", help="keep py-spy's collapsed stacks here")
    p.add_argument("--proxy-path", default=str(bench.REPO))
    a = p.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="inplace-restarter-profile-"))
    raw = Path(a.out) if a.out else root / "stacks.txt"
    proxied = spy = None
    try:
        bench.private_jupyter(root, Path(a.proxy_path).resolve())
        bench.KERNEL_LOG["file"] = open("/dev/null", "wb")
        proxied = bench.start("proxied")
        proxied.client.wait_iopub()
        for _ in range(50):
            proxied.client.execute("")
        cmd = [
            "py-spy",
            "record",
            "--pid",
            str(proxied.pid),
            "--rate",
            str(a.rate),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--threads",
        ]
        if a.idle:
            cmd.append("--idle")
        if a.gil:
            cmd.append("--gil")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        proxy, inner = bench.psutil.Process(proxied.pid), bench.inner_of(proxied)
        cpu0 = proxy.cpu_times(), inner.cpu_times()
        t0 = time.perf_counter()
        if a.workload == "roundtrip":
            for _ in range(a.n):
                proxied.client.execute("")
            what = f"{a.n} empty cells"
        else:
            lines = a.mb * 1024
            count = [0]
            proxied.client.execute(f"for _ in range({lines}):\n    print({'x' * 1023!r})", count=count, timeout=900)
            what = f"{a.mb} MB printed, {count[0]} bytes received"
        dt = time.perf_counter() - t0
        cpu1 = proxy.cpu_times(), inner.cpu_times()
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        print(f"{what} in {dt:.2f} s")
        for name, c0, c1 in (("proxy", cpu0[0], cpu1[0]), ("inner kernel", cpu0[1], cpu1[1])):
            print(f"  {name} CPU: user {c1.user - c0.user:.2f} s, system {c1.system - c0.system:.2f} s")
        if not raw.exists():
            print(err.decode(), file=sys.stderr)
            return 1
        print(summarize(raw, a.top))
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        bench.stop(proxied)
        bench.kill_all(bench.leftovers(root))
        if not a.out:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
