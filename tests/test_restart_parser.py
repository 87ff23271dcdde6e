"""Which cells are ``%restart`` cells, and what the command line of one says.

A cell is a restart cell when its first non-blank line is ``%restart``
(IPython's ``%restart?`` asks for help); the lines after it run in the new
kernel.  A command line that does not parse is a usage error to show the
user, never an exception.
"""

from __future__ import annotations

import pytest

from inplace_restarter.kernel import RestartCell, parse_restart


@pytest.mark.parametrize(
    "code, expected",
    [
        ("%restart", RestartCell([], "")),
        ("\n  \n%restart\nx = 1\n", RestartCell([], "x = 1\n")),
        ("   %restart   \n", RestartCell([], "")),
        ("%restart\tx", RestartCell(["x"], "")),
        ("%restart --help", RestartCell(["--help"], "")),
        ("%restart?", RestartCell(["--help"], "")),
        ("%restart?\nprint(1)", RestartCell(["--help"], "print(1)")),
        ("%restart --cold", RestartCell(["--cold"], "")),
        ("%restart --cold 'a b'", RestartCell(["--cold", "a b"], "")),
    ],
)
def test_a_restart_cell_is_one_whose_first_non_blank_line_is_restart(code, expected):
    assert parse_restart(code) == expected


@pytest.mark.parametrize(
    "code",
    [
        "x = 1\n%restart",
        "%restarting = 1",
        "%restart_all",
        "print('%restart')",
        "# %restart",
        "%%restart",
        "!%restart",
        "",
        "\n   \n",
    ],
)
def test_any_other_cell_is_not_a_restart_cell(code):
    assert parse_restart(code) is None


def test_the_rest_of_the_cell_is_kept_as_written_for_the_new_kernel():
    rest = "def f():\n    return 1\n\n\nprint(f())  # %restart\n"
    assert parse_restart(f"%restart --cold\n{rest}") == RestartCell(["--cold"], rest)
    assert parse_restart("%restart\r\nx = 1\r\n").rest == "x = 1\r\n"


def test_options_are_not_checked_here_only_split_as_a_shell_would():
    """Unknown options are the command's to refuse (a UsageError, see test_kernel); parsing only splits."""
    assert parse_restart("%restart --sideways -x").options == ["--sideways", "-x"]
    assert parse_restart('%restart "--cold"').options == ["--cold"]


@pytest.mark.parametrize("line", ["%restart 'x", '%restart "', "%restart --cold \\"])
def test_a_restart_line_that_does_not_parse_is_a_usage_error_not_an_exception(line):
    cell = parse_restart(f"{line}\nx = 1\n")
    assert cell.error.startswith("%restart: ") and cell.error.endswith("; see %restart --help")
    assert cell.options == []
    assert cell.rest == "x = 1\n"


def test_a_cell_that_parses_has_no_error():
    assert parse_restart("%restart --cold").error is None


@pytest.mark.parametrize(
    "line, action",
    [
        ("%restart", "restart"),
        ("%restart --cold", "cold"),
        ("%restart --info", "info"),
        ("%restart --help", "help"),
        ("%restart -h", "help"),
        ("%restart?", "help"),
    ],
)
def test_each_option_is_an_action_of_its_own(line, action):
    cell = parse_restart(line)
    assert (cell.action, cell.usage) == (action, None)


@pytest.mark.parametrize("line", ["%restart --sideways", "%restart --info --cold", "%restart --cold x"])
def test_options_it_does_not_take_or_takes_only_alone_are_a_usage_error(line):
    cell = parse_restart(line)
    assert cell.action is None
    assert cell.usage == f"%restart takes no option {line.removeprefix('%restart ')!r}; see %restart --help"
