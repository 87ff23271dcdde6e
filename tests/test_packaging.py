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


def installed_in_new_venv(build: Path, folder: Path) -> str:
    """A new virtual environment in ``folder`` with ``build`` installed and this test run's packages behind it.

    ``--ignore-installed``: the test run's own copy (an editable install) is on the new
    environment's path too, and pip would take it for this one.
    """
    python = venv_seeing_ours(folder, whole=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            str(build),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    return python


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_an_installed_build_installs_on_a_spec_from_anywhere(built, kind, tmp_path, kernels_dir):
    python = installed_in_new_venv(built[kind], tmp_path / "env")
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


#: where pip puts the JupyterLab extension, below the environment's prefix
LAB_EXTENSION = Path("share/jupyter/labextensions/inplace-restarter")


def test_the_wheel_carries_the_built_jupyterlab_extension(built):
    import zipfile

    data = f"{built['wheel'].name.split('-py3')[0]}.data/data"
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    shipped = {name.removeprefix(f"{data}/") for name in names if name.startswith(f"{data}/{LAB_EXTENSION}/")}
    committed = {str(path.relative_to(REPO)) for path in (REPO / LAB_EXTENSION).rglob("*") if path.is_file()}
    assert shipped == committed | {f"{LAB_EXTENSION}/install.json"}
    assert any(name.startswith(f"{LAB_EXTENSION}/static/remoteEntry.") for name in shipped)


@pytest.mark.timeout(300)
def test_jupyterlab_lists_the_extension_of_an_installed_wheel_as_enabled(built, tmp_path):
    python = installed_in_new_venv(built["wheel"], tmp_path / "env")
    assert (tmp_path / "env" / LAB_EXTENSION / "static").is_dir()
    listed = subprocess.run(
        [python, "-m", "jupyterlab.labextensions", "list"], capture_output=True, text=True, check=True, timeout=120
    )
    line = next((line for line in listed.stderr.splitlines() if "inplace-restarter" in line), "")
    assert "enabled" in line and "OK" in line and "(python, inplace_restarter)" in line, listed.stderr
