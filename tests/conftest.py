"""Every test runs in private Jupyter folders, so no test touches the user's kernelspecs."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import private_jupyter_dirs, running
from .slurm import (  # noqa: F401  (fixtures for Slurm jobs)
    multinode,
    multinode_cluster,
    on_node2,
    slurm,
    slurm_cluster,
    slurm_memory,
    slurm_memory_cluster,
)
from .spec_helpers import proxied, with_provisioner, write_direct_and_proxied, write_spec
from .sshd import ssh_node2  # noqa: F401  (a fixture: an sshd on node2)


@pytest.fixture(autouse=True)
def jupyter_dirs(tmp_path_factory, monkeypatch):
    """Point every Jupyter and IPython folder at a fresh temporary tree."""
    return private_jupyter_dirs(tmp_path_factory.mktemp("jupyter"), monkeypatch)


@pytest.fixture
def kernels_dir(jupyter_dirs) -> Path:
    """Where tests write kernelspecs: the private JUPYTER_PATH's kernels folder."""
    path = jupyter_dirs["JUPYTER_PATH"] / "kernels"
    path.mkdir()
    return path


@pytest.fixture
def specs(kernels_dir) -> None:
    """The ``direct`` ipykernel and the same kernel ``proxied``."""
    write_direct_and_proxied(kernels_dir)


@pytest.fixture
def proxy(specs):
    """A running proxied kernel: ``(KernelManager, BlockingKernelClient)``."""
    with running("proxied") as pair:
        yield pair


@pytest.fixture
def proxy_with(kernels_dir):
    """A proxied kernel with these options: ``with proxy_with("--standby") as (km, kc):``.

    ``options`` go on the proxy's argv (traitlets options and flags),
    ``fields`` into its kernel.json, ``provisioner`` (the provisioner's
    config) names the package's provisioner there; the other keywords go to
    :func:`running`, which starts the kernel and stops it after the ``with``.
    """

    def start(*options: str, fields: dict | None = None, provisioner: dict | None = None, **launch):
        spec = proxied(**(fields or {}))
        spec["argv"] += options
        if provisioner is not None:
            spec = with_provisioner(spec, **provisioner)
        write_spec(kernels_dir, "proxied-with", spec)
        return running("proxied-with", **launch)

    return start
