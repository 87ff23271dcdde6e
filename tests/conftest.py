"""Every test runs in private Jupyter folders, so no test touches the user's kernelspecs."""

from __future__ import annotations

import os

import pytest


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
