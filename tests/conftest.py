"""Every test runs in private Jupyter folders, so no test touches the user's kernelspecs."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import running
from .slurm import multinode, multinode_cluster, on_node2, slurm, slurm_cluster  # noqa: F401  (fixtures for Slurm jobs)
from .spec_helpers import direct, proxied, write_spec


@pytest.fixture(autouse=True)
def jupyter_dirs(tmp_path_factory, monkeypatch):
    """Point every Jupyter and IPython folder at a fresh temporary tree."""
    root = tmp_path_factory.mktemp("jupyter")
    dirs = {
        "JUPYTER_PATH": root / "path",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "JUPYTER_CONFIG_DIR": root / "config",
        "IPYTHONDIR": root / "ipython",
    }
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    return dirs


@pytest.fixture
def kernels_dir(jupyter_dirs) -> Path:
    """Where tests write kernelspecs: the private JUPYTER_PATH's kernels folder."""
    path = jupyter_dirs["JUPYTER_PATH"] / "kernels"
    path.mkdir()
    return path


@pytest.fixture
def specs(kernels_dir) -> None:
    """The ``direct`` ipykernel and the same kernel ``proxied``."""
    write_spec(kernels_dir, "direct", direct())
    write_spec(kernels_dir, "proxied", proxied())


@pytest.fixture
def proxy(specs):
    """A running proxied kernel: ``(KernelManager, BlockingKernelClient)``."""
    with running("proxied") as pair:
        yield pair
