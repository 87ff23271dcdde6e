"""kernel.json rewriting: what install and remove do to a spec, as data."""

from __future__ import annotations

import json
import os
import stat
import sys
import warnings

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from inplace_restarter.kernelspec import (
    INSTALLABLE,
    INSTALLED,
    METADATA_KEY,
    UNKNOWN,
    SpecError,
    choose_python,
    inner_spec_fields,
    original_argv,
    place,
    proxy_argv,
    read_kernel_json,
    split_arguments,
    state_of,
    summary_of,
    survey,
    unwrapped,
    wrapped,
    write_kernel_json,
)

from .spec_helpers import (
    IJULIA_SPEC,
    IRKERNEL_SPEC,
    LEGACY_SPEC,
    NO_CONNECTION_FILE_SPEC,
    PYTHON_SPEC,
    load,
    write_spec,
)


def test_proxy_argv_comes_from_the_shipped_template():
    assert proxy_argv("/x/python") == [
        "/x/python",
        "-m",
        "inplace_restarter",
        "-f",
        "{connection_file}",
        "--resource-dir={resource_dir}",
    ]


@pytest.mark.parametrize("spec", [PYTHON_SPEC, IRKERNEL_SPEC, IJULIA_SPEC], ids=["python", "irkernel", "ijulia"])
def test_any_kernel_with_a_connection_file_is_installable_and_round_trips(spec):
    assert state_of(spec) == (INSTALLABLE, "")
    new = wrapped(spec, "/x/python")
    assert new["argv"] == proxy_argv("/x/python")
    assert original_argv(new) == spec["argv"]
    assert new["metadata"][METADATA_KEY]["original_argv"] == spec["argv"]
    assert {k: v for k, v in new.items() if k not in ("argv", "metadata")} == {
        k: v for k, v in spec.items() if k not in ("argv", "metadata")
    }
    assert state_of(new) == (INSTALLED, "")
    assert unwrapped(new) == spec


def test_install_keeps_existing_metadata_and_remove_keeps_it_too():
    new = wrapped(PYTHON_SPEC, sys.executable)
    assert new["metadata"]["debugger"] is True
    assert unwrapped(new)["metadata"] == {"debugger": True}


def test_remove_drops_the_metadata_entry_install_added_but_keeps_an_empty_one_that_was_there():
    assert "metadata" not in unwrapped(wrapped(IRKERNEL_SPEC, sys.executable))
    spec = {**IRKERNEL_SPEC, "metadata": {}}
    assert unwrapped(wrapped(spec, sys.executable)) == spec


def test_the_originals_are_not_modified():
    before = json.dumps(PYTHON_SPEC)
    unwrapped(wrapped(PYTHON_SPEC, sys.executable))
    assert json.dumps(PYTHON_SPEC) == before


@pytest.mark.parametrize(
    "spec, reason",
    [
        (NO_CONNECTION_FILE_SPEC, "argv has no {connection_file}"),
        ({"display_name": "x"}, "kernel.json has no argv"),
        ({"argv": "python -f {connection_file}"}, "argv is not a list of strings"),
        (
            {"argv": [sys.executable, "-m", "inplace_restarter", "-f", "{connection_file}"]},
            "original argv is not saved",
        ),
    ],
)
def test_specs_that_cannot_be_wrapped_are_unknown_with_the_reason(spec, reason):
    state, why = state_of(spec)
    assert state == UNKNOWN
    assert reason in why


def test_a_0_1_0_spec_is_installed_restores_and_migrates():
    assert state_of(LEGACY_SPEC) == (INSTALLED, "")
    assert original_argv(LEGACY_SPEC) == LEGACY_SPEC["restarter_original_argv"]
    restored = unwrapped(LEGACY_SPEC)
    assert restored["argv"] == LEGACY_SPEC["restarter_original_argv"]
    assert "restarter_original_argv" not in restored and "metadata" not in restored
    migrated = wrapped(LEGACY_SPEC, sys.executable)
    assert "restarter_original_argv" not in migrated
    assert migrated["argv"] == proxy_argv(sys.executable)
    assert original_argv(migrated) == LEGACY_SPEC["restarter_original_argv"]


def test_installing_twice_does_not_wrap_twice():
    once = wrapped(PYTHON_SPEC, sys.executable)
    assert original_argv(wrapped(once, sys.executable)) == PYTHON_SPEC["argv"]


def test_remove_on_a_spec_that_is_not_installed_is_an_error():
    with pytest.raises(SpecError, match="not installed"):
        unwrapped(PYTHON_SPEC)


def test_a_rewritten_spec_loads_through_kernelspecmanager_without_warning(jupyter_dirs):
    plain = {k: v for k, v in PYTHON_SPEC.items() if k != "extra_field"}
    folder = write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "rewritten", plain)
    write_kernel_json(folder, wrapped(plain, sys.executable))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = KernelSpecManager().get_kernel_spec("rewritten")
    assert spec.argv == proxy_argv(sys.executable)
    assert spec.metadata[METADATA_KEY]["original_argv"] == PYTHON_SPEC["argv"]


def test_why_not_a_top_level_key_jupyter_client_warns_about_the_0_1_0_form(jupyter_dirs):
    write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "legacy", LEGACY_SPEC)
    with pytest.warns(DeprecationWarning, match="restarter_original_argv"):
        KernelSpecManager().get_kernel_spec("legacy")


def test_write_is_atomic_keeps_the_permission_bits_and_leaves_no_temporary_file(jupyter_dirs):
    folder = write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "perm", PYTHON_SPEC)
    os.chmod(folder / "kernel.json", 0o640)
    inode = (folder / "kernel.json").stat().st_ino
    write_kernel_json(folder, wrapped(PYTHON_SPEC, sys.executable))
    assert stat.S_IMODE((folder / "kernel.json").stat().st_mode) == 0o640
    assert (folder / "kernel.json").stat().st_ino != inode, "replaced by rename, not rewritten in place"
    assert sorted(p.name for p in folder.iterdir()) == ["kernel.json", "logo-64x64.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(jupyter_dirs):
    folder = write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "fail", PYTHON_SPEC)
    with pytest.raises(TypeError):
        write_kernel_json(folder, {"argv": [object()]})
    assert load(folder) == PYTHON_SPEC
    assert sorted(p.name for p in folder.iterdir()) == ["kernel.json", "logo-64x64.png"]


def test_read_errors_name_the_file(jupyter_dirs):
    folder = write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "broken", '{"argv": [')
    with pytest.raises(SpecError, match=f"{folder / 'kernel.json'} is not valid JSON"):
        read_kernel_json(folder)
    with pytest.raises(SpecError, match="does not exist"):
        read_kernel_json(folder / "nowhere")


def test_survey_finds_specs_in_every_jupyter_folder_through_kernelspecmanager(jupyter_dirs):
    write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "in-path", PYTHON_SPEC)
    write_spec(jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels", "in-user", IRKERNEL_SPEC)
    write_spec(jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels", "broken", "not json")
    found = {e.name: e for e in survey()}
    assert found["in-path"].state == INSTALLABLE
    assert found["in-user"].resource_dir == jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels" / "in-user"
    assert found["broken"].state == UNKNOWN and "not valid JSON" in found["broken"].reason
    assert set(found) == set(KernelSpecManager().find_kernel_specs())


def test_the_proxy_runs_with_the_spec_s_own_python_when_it_can_import_inplace_restarter():
    python, why = choose_python(PYTHON_SPEC["argv"])
    assert python == sys.executable
    assert "spec's own Python" in why


@pytest.mark.timeout(180)
def test_a_spec_python_without_inplace_restarter_falls_back_to_ours(tmp_path):
    import venv

    venv.create(tmp_path / "venv", with_pip=False)
    other = str(tmp_path / "venv" / "bin" / "python")
    python, why = choose_python([other, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    assert python == sys.executable
    assert f"the spec's Python {other} cannot import inplace_restarter" in why


def test_a_kernel_not_started_by_python_gets_our_python():
    python, why = choose_python(IRKERNEL_SPEC["argv"])
    assert python == sys.executable
    assert "started by R, not Python" in why


KERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
PROXY = [sys.executable, "-m", "inplace_restarter", "-f", "{connection_file}", "--resource-dir={resource_dir}"]


@pytest.mark.parametrize(
    "prefix, launcher, interrupt_mode",
    [
        (["srun", "-N", "1", "--job-name", "nb", "--pty", "-c2"], "srun", "message"),
        (["mpirun", "-np", "1", "--mca", "btl", "self", "--oversubscribe"], "mpirun", "message"),
        (["mpiexec", "-n", "1"], "mpiexec", "message"),
        (["mpiexec.mpich", "-localhost", "login", "-n", "1", "-hosts", "node2"], "mpiexec", "message"),
        (["/usr/bin/mpirun.openmpi", "-np", "1", "--host", "node2"], "mpirun", "message"),
        (["ssh", "-p", "2222", "-o", "BatchMode=yes", "node7"], "ssh", "message"),
    ],
)
def test_install_puts_the_proxy_behind_a_launcher_and_remove_restores_the_spec(prefix, launcher, interrupt_mode):
    spec = {"argv": [*prefix, *KERNEL], "display_name": "x", "language": "python", "interrupt_mode": "signal"}
    placement = place(spec["argv"])
    assert (placement.order, placement.launchers, placement.python) == ("inside", [launcher], sys.executable)
    assert f"the same path must work where {launcher} runs it" in placement.why
    new = wrapped(spec, placement)
    assert new["argv"] == [*prefix, *PROXY]
    assert new["interrupt_mode"] == interrupt_mode
    assert state_of(new) == (INSTALLED, "")
    assert summary_of(new).startswith(f"the proxy runs inside {launcher}: %restart restarts only the kernel")
    assert unwrapped(new) == spec


def test_the_proxy_starts_the_kernel_command_behind_the_launcher_with_the_spec_s_own_interrupt_mode(tmp_path):
    spec = {"argv": ["srun", *KERNEL], "display_name": "x", "language": "python", "env": {"A": "1"}}
    write_kernel_json(tmp_path, wrapped(spec, sys.executable))
    assert inner_spec_fields(tmp_path) == {**spec, "argv": KERNEL}
    assert "interrupt_mode" not in unwrapped(read_kernel_json(tmp_path))


def test_outside_keeps_the_launcher_behind_the_proxy_which_interrupts_through_it_by_message(tmp_path):
    spec = {"argv": ["srun", *KERNEL], "display_name": "x", "language": "python"}
    placement = place(spec["argv"], outside=True)
    assert placement.summary() == "the proxy runs outside srun: %restart starts srun again (a new job)"
    new = wrapped(spec, placement)
    assert new["argv"] == proxy_argv(sys.executable) and "interrupt_mode" not in new
    write_kernel_json(tmp_path, new)
    assert inner_spec_fields(tmp_path)["argv"] == spec["argv"]
    assert inner_spec_fields(tmp_path)["interrupt_mode"] == "message"
    assert unwrapped(new) == spec


def test_a_container_whose_python_cannot_import_the_proxy_gets_it_in_front_inside_the_job():
    argv = [
        "srun",
        "-N1",
        "apptainer",
        "exec",
        "--nv",
        "-B",
        "/a:/b",
        "image.sif",
        "python3",
        "-m",
        "ipykernel",
        "-f",
        "{connection_file}",
    ]
    placement = place(argv)
    assert placement.launchers == ["srun", "apptainer"]
    assert placement.inner_argv == argv[2:], "the proxy starts the container"
    assert wrapped({"argv": argv}, placement)["argv"] == ["srun", "-N1", *PROXY]
    assert "so it runs in front of apptainer" in placement.why
    assert placement.summary().endswith("keeps the job and the container")


def test_remote_ikernel_with_a_batch_interface_runs_the_proxy_in_its_kernel_command(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "remote_ikernel",
        "--interface",
        "slurm",
        "--kernel_cmd",
        "ipython kernel -f {host_connection_file}",
        "{connection_file}",
    ]
    spec = {"argv": argv, "display_name": "rik", "language": "python"}
    new = wrapped(spec, place(argv), tmp_path)
    command = new["argv"][6]
    assert command.startswith(f"{sys.executable} -m inplace_restarter -f ") and "{host_connection_file}" in command
    assert command.endswith(f"--resource-dir={tmp_path}"), "remote_ikernel does not fill in {resource_dir}"
    assert new["argv"][:6] == argv[:6] and new["argv"][7:] == argv[7:]
    assert new["metadata"][METADATA_KEY]["inner_argv"] == ["ipython", "kernel", "-f", "{connection_file}"]
    assert unwrapped(new) == spec
    local = [*argv[:4], "local", *argv[5:]]
    assert place(local).order == "", "an interface without a job is an ordinary kernel command"


@pytest.mark.parametrize(
    "argv",
    [
        ["srun", "-N1", *PROXY],
        ["ssh", "node", "python3", "-m", "inplace_restarter", "-f", "{connection_file}"],
        [
            sys.executable,
            "-m",
            "remote_ikernel",
            "--interface=slurm",
            "--kernel_cmd=python -m inplace_restarter -f {host_connection_file}",
            "{connection_file}",
        ],
    ],
)
def test_a_spec_running_the_proxy_anywhere_is_never_wrapped_again(argv):
    state, why = state_of({"argv": argv})
    assert state == UNKNOWN and "runs inplace_restarter but the original argv is not saved" in why


def test_the_proxy_s_own_arguments_are_those_its_kernel_json_gives_it_and_what_follows_is_the_kernel_s():
    """jupyter_client appends a client's extra_arguments after the spec's argv; a launcher in front changes nothing."""
    spec = [*PROXY, "--standby"]
    own = ["-f", "/run/kernel-1.json", "--resource-dir=/k/py", "--standby"]
    assert split_arguments([*own, "--profile-dir", "/p", "--debug"], spec) == (own, ["--profile-dir", "/p", "--debug"])
    assert split_arguments(own, ["srun", "-N1", *spec]) == (own, [])
    inserted = ["--ProxyKernelApp.bind_ip=10.0.0.2", *own]
    assert split_arguments([*inserted, "--x"], spec) == (inserted, ["--x"]), "options in front stay the proxy's"
    assert split_arguments([*own, "--x"], KERNEL) == ([*own, "--x"], []), "a spec without the proxy splits nothing"
    assert split_arguments(["-f", "/run/k.json"], spec) == (["-f", "/run/k.json"], []), "nor one that does not match"
