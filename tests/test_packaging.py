"""The project as a user installs it: a wheel or an sdist, used from anywhere, the checkout included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .spec_helpers import IPYKERNEL_ARGV, direct, load, venv_seeing_ours, write_spec

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist of the working tree, built as pip would."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_an_installed_build_installs_on_a_spec_from_anywhere(built, kind, tmp_path, kernels_dir):
    python = venv_seeing_ours(tmp_path / "env", whole=False)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(built[kind])],
        check=True,
        capture_output=True,
        timeout=240,
    )
    folder = write_spec(kernels_dir, "plain", direct())
    for cwd in (tmp_path, REPO):
        done = subprocess.run(
            [python, "-m", "inplace_restarter", "install", "plain"], cwd=cwd, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"in {cwd}: {done.stderr}"
        assert load(folder)["metadata"]["inplace_restarter"]["original_argv"] == IPYKERNEL_ARGV
        done = subprocess.run(
            [python, "-m", "inplace_restarter", "remove", "plain"], cwd=cwd, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"in {cwd}: {done.stderr}"
        assert load(folder) == direct()
    where = subprocess.run(
        [python, "-c", "import inplace_restarter; print(inplace_restarter.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert where.startswith(str(tmp_path / "env")), "outside the checkout, the installed copy runs"
