"""The proxy's own functions an execute and a ``%restart`` pass through, in the order first called.

    python bench/trace.py                        # this repo's package
    python bench/trace.py --proxy-path /work/main   # another copy, to compare shapes

A ``sitecustomize`` on the proxy's path installs a ``sys.setprofile`` and
``threading.setprofile`` hook that appends ``file:function`` of every call
into the package to a file; the client marks the file before and after each
request (after a warm-up cell), and this prints the functions called between
the marks, each once, in the order of their first call, per request.  The
hook slows the proxy: this says which functions, not how long.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent

HOOK = """
import os, sys, threading
_out = open(os.environ["INPLACE_TRACE"], "a", buffering=1)
def _hook(frame, event, arg):
    if event == "call" and "inplace_restarter" in frame.f_code.co_filename:
        _out.write(os.path.basename(frame.f_code.co_filename) + ":" + frame.f_code.co_qualname + "\\n")
sys.setprofile(_hook)
threading.setprofile(_hook)
"""


def run(proxy_path: Path, folder: Path) -> dict[str, list[str]]:
    hook_dir = folder / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    trace = folder / "trace.txt"
    spec_dir = folder / "kernels" / "proxied"
    spec_dir.mkdir(parents=True)
    inner = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    argv = [sys.executable, "-m", "inplace_restarter", "-f", "{connection_file}", "--resource-dir={resource_dir}"]
    spec = {"argv": argv, "display_name": "traced", "language": "python"}
    spec["metadata"] = {"inplace_restarter": {"original_argv": inner}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = {**os.environ, "INPLACE_TRACE": str(trace), "PYTHONPATH": f"{hook_dir}{os.pathsep}{proxy_path}"}
    os.environ["JUPYTER_PATH"] = str(folder)
    os.environ["JUPYTER_RUNTIME_DIR"] = str(folder / "runtime")
    km = KernelManager(kernel_name="proxied")
    km.start_kernel(env=env, cwd=str(folder))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kc.execute_interactive("pass", timeout=60)
        marks = {}
        for name, code in (("execute", "pass"), ("%restart", "%restart")):
            before = len(trace.read_text().splitlines())
            kc.execute_interactive(code, timeout=60)
            # What the idle status sets off on the proxy's loop after the client has it.
            time.sleep(0.5)
            lines = trace.read_text().splitlines()[before:]
            marks[name] = list(dict.fromkeys(lines))
        return marks
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy-path", type=Path, default=REPO, help="the folder holding inplace_restarter")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name, functions in run(args.proxy_path.resolve(), Path(folder)).items():
            print(f"{name}: {len(functions)} functions")
            for function in functions:
                print(f"  {function}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
