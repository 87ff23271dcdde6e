"""The provisioner's requests to the proxy, written on the proxy's command line wherever a launcher runs it."""

from __future__ import annotations

import pytest

from inplace_restarter.launchers import with_proxy_options

OPTIONS = ["--jupyter-restarts-in-place", "--report-to=10.1.2.3,10.1.2.4"]
PROXY = ["/opt/python", "-m", "inplace_restarter", "-f", "{connection_file}", "--resource-dir=/k"]


@pytest.mark.parametrize(
    "prefix",
    [
        [],
        ["ssh", "node2"],
        ["mpirun", "-np", "1", "--host", "node2"],
        ["srun", "-N1", "apptainer", "exec", "image.sif"],
        ["/site/bin/launch-on-a-node", "--queue", "gpu"],
    ],
)
def test_the_options_go_first_after_the_proxys_module_behind_any_launcher(prefix):
    assert with_proxy_options([*prefix, *PROXY], OPTIONS) == [*prefix, *PROXY[:3], *OPTIONS, *PROXY[3:]]


def test_the_console_script_gets_them_too():
    argv = ["/env/bin/jupyter-inplace-restarter", "-f", "{connection_file}"]
    assert with_proxy_options(argv, OPTIONS) == [argv[0], *OPTIONS, *argv[1:]]


def test_a_command_string_gets_them_in_the_string():
    """remote_ikernel's --kernel_cmd, a wrapper's ``sh -c``: the proxy's arguments are words of one argument."""
    argv = ["python", "-m", "remote_ikernel", "--kernel_cmd=/p/python -m inplace_restarter -f {host_connection_file}"]
    assert with_proxy_options(argv, OPTIONS)[-1] == (
        "--kernel_cmd=/p/python -m inplace_restarter --jupyter-restarts-in-place --report-to=10.1.2.3,10.1.2.4 "
        "-f {host_connection_file}"
    )
    wrapper = ["sh", "-c", "module load py && exec /env/bin/jupyter-inplace-restarter -f x"]
    assert with_proxy_options(wrapper, OPTIONS)[-1].endswith(f"jupyter-inplace-restarter {' '.join(OPTIONS)} -f x")


def test_a_command_that_does_not_run_the_proxy_is_left_alone():
    argv = ["srun", "python", "-m", "ipykernel_launcher", "-f", "{connection_file}", "--name=inplace_restarter"]
    assert with_proxy_options(argv, OPTIONS) == argv
