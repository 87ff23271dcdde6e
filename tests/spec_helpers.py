"""Kernelspec folders: sample specs, the proxied and direct ipykernel specs, writing and reading them, CLI runs."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

from inplace_restarter.kernelspec import wrapped
from inplace_restarter.provisioner import PROVISIONER_NAME

#: The kernel used directly and behind the proxy throughout the tests.
IPYKERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]

PYTHON_SPEC = {
    "argv": list(IPYKERNEL_ARGV),
    "display_name": "Python (test)",
    "language": "python",
    "env": {"TEST_VAR": "1"},
    "metadata": {"debugger": True},
    "interrupt_mode": "message",
    "extra_field": ["kept", 1],
}
IRKERNEL_SPEC = {
    "argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
    "display_name": "R",
    "language": "R",
}
IJULIA_SPEC = {
    "argv": ["/opt/julia/bin/julia", "-i", "--color=yes", "/opt/IJulia/src/kernel.jl", "{connection_file}"],
    "display_name": "Julia 1.10",
    "language": "julia",
    "env": {},
    "interrupt_mode": "signal",
}
#: As inplace_restarter 0.1.0 left a spec after installing on it.
LEGACY_SPEC = {
    "argv": [sys.executable, "-m", "inplace_restarter", "-f", "{connection_file}", "--Proxy.rd={resource_dir}"],
    "display_name": "Python (0.1.0)",
    "language": "python",
    "restarter_original_argv": list(IPYKERNEL_ARGV),
}
NO_CONNECTION_FILE_SPEC = {"argv": ["weird-kernel", "--port", "5555"], "display_name": "Weird", "language": "x"}


def direct(argv: list[str] = IPYKERNEL_ARGV, **fields) -> dict:
    """A kernel.json that starts ``argv`` (ipykernel by default) directly."""
    return {"argv": list(argv), "display_name": "Python (direct)", "language": "python", **fields}


def proxied(inner_argv: list[str] = IPYKERNEL_ARGV, **fields) -> dict:
    """The kernel.json ``install`` makes of ``direct(inner_argv, **fields)``: the proxy in front of it."""
    return wrapped(direct(inner_argv, **{"display_name": "Python (in-place restart)", **fields}), sys.executable)


def with_provisioner(spec: dict, **config) -> dict:
    """``spec`` naming the package's provisioner (with ``config``), as a spec may where the package is installed."""
    spec["metadata"] = {
        **spec.get("metadata", {}),
        "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config},
    }
    return spec


def write_spec(kernels_dir: Path, name: str, spec: dict | str) -> Path:
    """A spec folder ``kernels_dir/name`` with a logo; a str is written as the raw kernel.json text."""
    folder = Path(kernels_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    text = spec if isinstance(spec, str) else json.dumps(spec, indent=1)
    (folder / "kernel.json").write_text(text, encoding="utf-8")
    (folder / "logo-64x64.png").write_bytes(b"\x89PNG not really")
    return folder


def write_direct_and_proxied(kernels_dir: Path) -> None:
    """The ``direct`` ipykernel spec and the same kernel ``proxied``, side by side."""
    write_spec(kernels_dir, "direct", direct())
    write_spec(kernels_dir, "proxied", proxied())


def write_specs(kernels_dir: Path, specs: dict[str, dict]) -> dict[str, Path]:
    """Several spec folders at once; returns them by name."""
    return {name: write_spec(kernels_dir, name, spec) for name, spec in specs.items()}


def load(folder: Path) -> dict:
    return json.loads((Path(folder) / "kernel.json").read_text(encoding="utf-8"))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``root`` with its bytes and mode, to show nothing was touched."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def cli_command(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "inplace_restarter", *args]


def run_cli(*args: str, python: str = sys.executable, prefix: tuple[str, ...] = (), timeout: float = 60):
    """The CLI as a user runs it: a new process, in the test's Jupyter folders."""
    return subprocess.run(
        [*prefix, *cli_command(*args, python=python)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )


def venv_seeing_ours(folder: Path, whole: bool = True) -> str:
    """A new virtual environment whose Python also imports this test run's packages; returns its python.

    ``system_site_packages`` would show the base interpreter's packages,
    not those of the environment the tests run in.  A ``.pth`` file adds
    ours instead: with ``whole``, as a site folder (its own ``.pth`` files,
    an editable install among them, included); else as plain path entries
    behind the new environment's own packages, for testing a package
    installed there.
    """
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    ours = site.getsitepackages()
    lines = [f"import site; site.addsitedir({d!r})" for d in ours] if whole else ours
    (Path(own) / "test_run_packages.pth").write_text("\n".join(lines) + "\n")
    return str(python)
