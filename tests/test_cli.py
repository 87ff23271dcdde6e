"""The ``list``/``install``/``remove`` commands as a user runs them, on real kernelspec folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inplace_restarter import cli
from inplace_restarter.kernelspec import METADATA_KEY, proxy_argv

from .helpers import needs
from .spec_helpers import (
    IJULIA_SPEC,
    IRKERNEL_SPEC,
    LEGACY_SPEC,
    NO_CONNECTION_FILE_SPEC,
    PYTHON_SPEC,
    load,
    run_cli,
    snapshot,
    venv_seeing_ours,
    write_spec,
    write_specs,
)


@pytest.fixture
def spec_dirs(jupyter_dirs):
    """A spec of each kind in the test's JUPYTER_PATH; returns their folders by name."""
    return write_specs(
        jupyter_dirs["JUPYTER_PATH"] / "kernels",
        {
            "py": PYTHON_SPEC,
            "ir": IRKERNEL_SPEC,
            "julia": IJULIA_SPEC,
            "old": LEGACY_SPEC,
            "weird": NO_CONNECTION_FILE_SPEC,
        },
    )


def listed(*args: str) -> dict:
    done = run_cli("list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return {state: {e["name"]: e for e in group} for state, group in json.loads(done.stdout).items()}


def test_list_shows_three_groups_with_folders_reasons_and_the_command_to_use(spec_dirs):
    done = run_cli("list")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    installed, installable, unknown = (
        out.index("In place restarting installed on:"),
        out.index("In place restarting installable on:"),
        out.index("Unknown kernel types, does not know how to install:"),
    )
    assert installed < out.index("✓ 'old'") < installable
    for name in ("py", "ir", "julia"):
        assert installable < out.index(f"- '{name}'") < unknown
        assert f"- '{name}'" in out and str(spec_dirs[name]) in out
    assert "✘ 'weird'" in out[unknown:] and "(argv has no {connection_file})" in out
    assert "to remove: python -m inplace_restarter remove old" in out
    assert "python -m inplace_restarter install " in out[installable:unknown]
    assert "(inplace_restarter 0.1.0 form; install migrates it)" in out


def test_list_json_is_the_same_for_scripts(spec_dirs):
    groups = listed()
    assert set(groups) == {"installed", "installable", "unknown"}
    assert groups["installed"]["old"]["legacy"] is True
    assert groups["installable"]["ir"]["resource_dir"] == str(spec_dirs["ir"])
    assert groups["unknown"]["weird"]["reason"] == "argv has no {connection_file}"


@pytest.mark.parametrize("name", ["py", "ir", "julia"])
def test_install_then_remove_gives_back_the_same_json(spec_dirs, name):
    before = load(spec_dirs[name])
    done = run_cli("install", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"installed '{name}' in {spec_dirs[name]}: the proxy runs with ")
    after = load(spec_dirs[name])
    assert after["argv"][1:] == proxy_argv()[1:]
    assert after["metadata"][METADATA_KEY]["original_argv"] == before["argv"]
    assert {k: after[k] for k in before if k not in ("argv", "metadata")} == {
        k: v for k, v in before.items() if k not in ("argv", "metadata")
    }
    assert name in listed()["installed"]

    done = run_cli("remove", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"removed from '{name}' in {spec_dirs[name]}: its argv is restored\n"
    assert load(spec_dirs[name]) == before
    assert (spec_dirs[name] / "logo-64x64.png").exists()


def test_install_says_which_python_runs_the_proxy_and_why(spec_dirs):
    done = run_cli("install", "py", "ir")
    assert done.returncode == 0, done.stderr
    assert (
        f"the proxy runs with {sys.executable}, the spec's own Python, which can import inplace_restarter"
        in done.stdout
    )
    assert (
        f"the proxy runs with {sys.executable}, the Python running install: the kernel is started by R, not Python"
        in done.stdout
    )
    assert load(spec_dirs["ir"])["argv"] == proxy_argv(sys.executable)


def test_installing_twice_fails_without_wrapping_twice(spec_dirs):
    assert run_cli("install", "py").returncode == 0
    before = snapshot(spec_dirs["py"])
    done = run_cli("install", "py")
    assert done.returncode == 1
    assert done.stderr == f"error: 'py' is already installed: {spec_dirs['py'] / 'kernel.json'}\n"
    assert snapshot(spec_dirs["py"]) == before


def test_remove_on_a_spec_not_installed_fails(spec_dirs):
    done = run_cli("remove", "py")
    assert done.returncode == 1
    assert done.stderr == f"error: 'py' is not installed: {spec_dirs['py'] / 'kernel.json'}\n"


def test_an_unknown_name_exits_2_and_lists_the_known_ones(spec_dirs, jupyter_dirs):
    before = snapshot(jupyter_dirs["JUPYTER_PATH"])
    done = run_cli("install", "py", "nope")
    assert done.returncode == 2
    assert done.stderr.startswith("error: no kernelspec named 'nope'; known: ")
    assert "ir, julia, old, py" in done.stderr
    assert snapshot(jupyter_dirs["JUPYTER_PATH"]) == before


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"argv": [', "is not valid JSON"),
        ('{"display_name": "no argv"}', "cannot be installed (kernel.json has no argv)"),
    ],
)
def test_a_broken_kernel_json_is_named_and_nothing_is_touched(spec_dirs, jupyter_dirs, text, message):
    broken = write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "broken", text)
    before = snapshot(jupyter_dirs["JUPYTER_PATH"])
    done = run_cli("install", "py", "broken")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert message in done.stderr and str(broken / "kernel.json") in done.stderr
    assert snapshot(jupyter_dirs["JUPYTER_PATH"]) == before, "py must not be installed when broken fails"


def test_a_spec_that_cannot_be_wrapped_says_why(spec_dirs):
    done = run_cli("install", "weird")
    assert done.returncode == 1
    assert "'weird' cannot be installed (argv has no {connection_file})" in done.stderr


def test_a_0_1_0_spec_is_listed_removed_and_migrated(spec_dirs):
    assert listed()["installed"]["old"]["legacy"] is True

    done = run_cli("install", "old")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"migrated 'old' in {spec_dirs['old']} from the 0.1.0 form: the proxy runs with ")
    migrated = load(spec_dirs["old"])
    assert "restarter_original_argv" not in migrated
    assert migrated["argv"] == proxy_argv(sys.executable)
    assert migrated["metadata"][METADATA_KEY]["original_argv"] == LEGACY_SPEC["restarter_original_argv"]
    assert listed()["installed"]["old"]["legacy"] is False

    shutil.rmtree(spec_dirs["old"])
    write_spec(spec_dirs["old"].parent, "old", LEGACY_SPEC)
    done = run_cli("remove", "old")
    assert done.returncode == 0, done.stderr
    expected = {k: v for k, v in LEGACY_SPEC.items() if k != "restarter_original_argv"}
    assert load(spec_dirs["old"]) == {**expected, "argv": LEGACY_SPEC["restarter_original_argv"]}


def test_names_are_matched_like_jupyter_does_case_insensitively(spec_dirs):
    assert run_cli("install", "PY").returncode == 0
    assert "py" in listed()["installed"]


def test_each_command_has_help():
    for command in ("list", "install", "remove", "wizard", "wiz"):
        done = run_cli(command, "--help")
        assert done.returncode == 0 and "usage: python -m inplace_restarter" in done.stdout


def test_main_can_be_called_directly(spec_dirs, capsys):
    assert cli.main(["install", "ir"]) == 0
    assert cli.main(["remove", "ir"]) == 0
    assert cli.main(["remove", "nothing-such"]) == 2
    assert "no kernelspec named 'nothing-such'" in capsys.readouterr().err


def test_jupyter_finds_the_subcommand_through_the_console_script(spec_dirs):
    jupyter = Path(sys.executable).with_name("jupyter")
    needs(
        jupyter.exists() and jupyter.with_name("jupyter-inplace-restarter").exists(),
        "the package is not installed with its console script",
    )
    done = subprocess.run(
        [str(jupyter), "inplace-restarter", "install", "ir"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run([str(jupyter), "inplace-restarter", "list"], capture_output=True, text=True, timeout=60)
    assert "to remove: jupyter inplace-restarter remove ir" in done.stdout


# A spec folder the user cannot write. Root ignores file modes, so the folder is
# made really read-only: a read-only bind mount in a private mount namespace.
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" || exit 99; shift; exec "$@"'


@pytest.fixture
def env_python(tmp_path, monkeypatch):
    """A Python whose environment kernels folder sits below the user's, like a system-wide one.

    In a virtual environment jupyter_core searches the environment before the
    user's folder unless JUPYTER_PREFER_ENV_PATH says otherwise.
    """
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    return venv_seeing_ours(tmp_path / "env"), tmp_path / "env" / "share" / "jupyter"


def run_read_only(folder: Path, *args: str, python: str):
    needs(shutil.which("unshare"), "unshare (util-linux) is needed for a read-only folder")
    done = run_cli(*args, python=python, prefix=("unshare", "-m", "sh", "-c", READ_ONLY, "sh", str(folder)))
    needs(done.returncode != 99, f"cannot make a read-only bind mount here: {done.stderr.strip()}")
    return done


@pytest.mark.timeout(180)
def test_a_spec_folder_the_user_cannot_write_offers_user_which_installs_on_a_copy(env_python, jupyter_dirs):
    python, env_share = env_python
    system_spec = write_spec(env_share / "kernels", "sys-wide", IRKERNEL_SPEC)
    before = snapshot(system_spec)

    done = run_read_only(system_spec.parent, "install", "sys-wide", python=python)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: 'sys-wide' is in {system_spec}, which you cannot write (a system-wide spec?); "
        f"add --user to install on a copy in {jupyter_dirs['JUPYTER_DATA_DIR'] / 'kernels'}\n"
    )

    done = run_read_only(system_spec.parent, "install", "--user", "sys-wide", python=python)
    assert done.returncode == 0, done.stderr
    copy = jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels" / "sys-wide"
    assert done.stdout.startswith(f"installed 'sys-wide' in {copy}: ")
    assert snapshot(system_spec) == before
    assert load(copy)["metadata"][METADATA_KEY]["original_argv"] == IRKERNEL_SPEC["argv"]
    assert (copy / "logo-64x64.png").exists()

    done = run_cli("list", "--json", python=python)
    assert json.loads(done.stdout)["installed"][0] == {
        "name": "sys-wide",
        "resource_dir": str(copy),
        "reason": None,
        "legacy": False,
        "restart": "the proxy starts the kernel itself: %restart restarts the kernel process",
        "restart_button_in_place": False,
    }


def test_user_refuses_a_copy_that_jupyter_path_would_hide(spec_dirs, jupyter_dirs):
    done = run_cli("install", "--user", "ir")
    assert done.returncode == 1
    assert (
        f"a copy in {jupyter_dirs['JUPYTER_DATA_DIR'] / 'kernels'} would be hidden by {spec_dirs['ir']}" in done.stderr
    )
    assert not (jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels").exists()


def test_user_on_a_spec_already_in_the_user_folder_installs_in_place(jupyter_dirs):
    folder = write_spec(jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels", "mine", IRKERNEL_SPEC)
    done = run_cli("install", "--user", "mine")
    assert done.returncode == 0, done.stderr
    assert load(folder)["argv"] == proxy_argv(sys.executable)


SRUN_SPEC = {
    "argv": [
        "srun",
        "--nodes=1",
        "--job-name=nb",
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ],
    "display_name": "Slurm",
    "language": "python",
}
#: the order that keeps the job, written by hand before install could
HAND_PROXIED_SPEC = {
    **SRUN_SPEC,
    "argv": [
        *SRUN_SPEC["argv"][:3],
        sys.executable,
        "-m",
        "inplace_restarter",
        "-f",
        "{connection_file}",
        "--resource-dir=/x",
    ],
}


def test_list_and_install_say_where_the_proxy_runs_and_what_restart_does(jupyter_dirs):
    folders = write_specs(jupyter_dirs["JUPYTER_PATH"] / "kernels", {"slurm": SRUN_SPEC, "by-hand": HAND_PROXIED_SPEC})
    inside = "the proxy runs inside srun: %restart restarts only the kernel and keeps the job"
    assert inside in run_cli("list").stdout
    groups = listed()
    assert groups["installable"]["slurm"]["restart"] == inside
    assert "not wrapped again" in groups["unknown"]["by-hand"]["reason"]

    before = snapshot(folders["by-hand"])
    done = run_cli("install", "by-hand")
    assert done.returncode == 1 and "not wrapped again" in done.stderr
    assert snapshot(folders["by-hand"]) == before

    done = run_cli("install", "slurm")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"  {inside}"
    assert listed()["installed"]["slurm"]["restart"] == inside


def test_install_outside_and_remove_round_trip(jupyter_dirs):
    folder = write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "slurm", SRUN_SPEC)
    before = load(folder)
    done = run_cli("install", "--outside", "slurm")
    assert done.returncode == 0, done.stderr
    outside = "the proxy runs outside srun: %restart starts srun again (a new job)"
    assert outside in done.stdout
    assert load(folder)["argv"] == proxy_argv(sys.executable)
    assert outside in run_cli("list").stdout
    assert run_cli("remove", "slurm").returncode == 0
    assert load(folder) == before
