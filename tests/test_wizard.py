"""The wizard: a prompt_toolkit checkbox dialog, driven here through a pipe as keystrokes."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from prompt_toolkit.output.plain_text import PlainTextOutput

from inplace_restarter import wizard
from inplace_restarter.kernelspec import METADATA_KEY, survey

from .spec_helpers import IRKERNEL_SPEC, LEGACY_SPEC, NO_CONNECTION_FILE_SPEC, PYTHON_SPEC, load, snapshot, write_specs

UP, DOWN, SPACE, TAB, ENTER = "\x1b[A", "\x1b[B", " ", "\t", "\r"


@pytest.fixture
def kernels(jupyter_dirs):
    """In list order: 'a-ir' installable, 'b-old' installed (0.1.0), 'c-py' installable, 'd-weird' unknown."""
    return write_specs(
        jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels",
        {"a-ir": IRKERNEL_SPEC, "b-old": LEGACY_SPEC, "c-py": PYTHON_SPEC, "d-weird": NO_CONNECTION_FILE_SPEC},
    )


def press(keys: str) -> int:
    """Run the wizard with ``keys`` typed into it."""
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        pipe.send_text(keys)
        return wizard.run()


def test_the_dialog_shows_every_kernel_ticked_where_installed(kernels):
    screen = io.StringIO()
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=PlainTextOutput(screen)):
        pipe.send_text(TAB + ENTER)
        assert wizard.dialog(survey()).run() == ["b-old"]
    text = screen.getvalue()
    assert "[ ] a-ir  [installable]" in text
    assert "[*] b-old  [installed]" in text
    assert "[ ] c-py  [installable]" in text
    assert "d-weird: argv has no {connection_file}" in text, "unknown kernels are shown, not offered"
    assert "[ ] d-weird" not in text


@pytest.mark.timeout(60)
def test_ticking_installs_and_unticking_removes(kernels, capsys):
    before_ir = load(kernels["a-ir"])
    # to the top, tick a-ir, move to b-old and untick it, leave c-py, then OK
    assert press(UP + UP + SPACE + DOWN + SPACE + TAB + ENTER) == 0
    assert load(kernels["a-ir"])["metadata"][METADATA_KEY]["original_argv"] == before_ir["argv"]
    assert load(kernels["b-old"])["argv"] == LEGACY_SPEC["restarter_original_argv"]
    assert load(kernels["c-py"]) == PYTHON_SPEC
    out = capsys.readouterr().out
    assert "installed 'a-ir'" in out and "removed from 'b-old'" in out


@pytest.mark.timeout(60)
def test_cancel_changes_nothing(kernels, jupyter_dirs, capsys):
    before = snapshot(jupyter_dirs["JUPYTER_DATA_DIR"])
    assert press(SPACE + TAB + TAB + ENTER) == 0
    assert capsys.readouterr().out == "cancelled; nothing changed\n"
    assert snapshot(jupyter_dirs["JUPYTER_DATA_DIR"]) == before


@pytest.mark.timeout(60)
def test_ok_without_changes_touches_nothing(kernels, jupyter_dirs, capsys):
    before = snapshot(jupyter_dirs["JUPYTER_DATA_DIR"])
    assert press(TAB + ENTER) == 0
    assert capsys.readouterr().out == "nothing to change\n"
    assert snapshot(jupyter_dirs["JUPYTER_DATA_DIR"]) == before


def test_without_prompt_toolkit_the_command_says_how_to_get_it(kernels):
    code = (
        "import sys; sys.modules['prompt_toolkit'] = None\n"  # makes `import prompt_toolkit` fail, as if not installed
        "from inplace_restarter.cli import main; sys.exit(main(['wiz']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == 'error: the wizard needs prompt_toolkit: pip install "inplace_restarter[wizard]"\n'
