"""JupyterLab in headless Chromium on a proxied kernel: ``%restart`` as a person sees it.

Each test starts its own ``jupyter lab`` (loopback, token, private Jupyter folders) and
its own Chromium, opens a notebook on the proxied kernel and runs cells with clicks and
Shift+Enter. After ``%restart`` Lab must look like after any finished cell: the restart
message in the cell's output, the kernel status idle, no dialog, the same kernel in the
server, and a new Python process behind it.
"""

from __future__ import annotations

import re

import pytest

from ..helpers import wait_for_file
from .conftest import DISPLAY_NAME, RESTART_MESSAGE, open_notebook

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def lab_notebook(lab_server, browser_page):
    """Open a notebook of the given cells in JupyterLab."""
    return lambda sources: open_notebook(browser_page, lab_server, "/lab/tree", sources)


def pid_of(text: str) -> int:
    match = re.search(r"pid=(\d+)", text)
    assert match, f"no pid in {text!r}"
    return int(match.group(1))


def test_restart_shows_message_and_leaves_a_fresh_idle_kernel(lab_notebook, tmp_path, expect):
    nb = lab_notebook(
        [
            "x = 1\nimport os\nprint(f'pid={os.getpid()}')",
            "%restart",
            "x",
            "import os\nprint(f'pid={os.getpid()}')",
        ]
    )
    [kernel_before] = nb.kernels()

    nb.run(0)
    old_pid = pid_of(nb.output(0).inner_text())

    nb.run(1)
    expect(nb.output(1)).to_contain_text(RESTART_MESSAGE)
    expect(nb.status).to_have_attribute("data-status", "idle")

    nb.run(2)
    expect(nb.output(2)).to_contain_text("NameError")
    # counts start again at 1, as after Lab's own restart
    expect(nb.prompt(2)).to_have_text("[1]:")

    nb.run(3)
    assert pid_of(nb.output(3).inner_text()) != old_pid

    expect(nb.status).to_have_attribute("data-status", "idle")
    expect(nb.status_bar).to_have_text(f"{DISPLAY_NAME} | Idle")
    expect(nb.dialogs).to_have_count(0)
    nb.page.locator(".jp-SideBar [data-id='filebrowser']").click()  # the picture is of the notebook
    nb.page.screenshot(path=str(tmp_path / "restart-in-jupyterlab.png"))
    # the restart happened behind the kernel the server knows: same id, still alive
    [kernel_after] = nb.kernels()
    assert kernel_after["id"] == kernel_before["id"]
    assert kernel_after["execution_state"] == "idle"


def test_input_box_after_restart_answers_the_new_kernel(lab_notebook, expect):
    nb = lab_notebook(["%restart", "name = input('Your name? ')\nprint('hello', name)"])
    nb.run(0)
    expect(nb.output(0)).to_contain_text(RESTART_MESSAGE)

    nb.run(1, wait=False)
    box = nb.output(1).locator("input.jp-Stdin-input")
    expect(box).to_be_visible()
    expect(nb.output(1)).to_contain_text("Your name?")
    box.fill("Ada")
    box.press("Enter")
    expect(nb.prompt(1)).to_have_text("[1]:")
    expect(nb.output(1)).to_contain_text("hello Ada")


def test_interrupt_button_stops_a_sleeping_cell_after_restart(lab_notebook, expect):
    nb = lab_notebook(["%restart", "import time\ntime.sleep(60)", "print('still', 'here')"])
    nb.run(0)
    expect(nb.output(0)).to_contain_text(RESTART_MESSAGE)

    nb.run(1, wait=False)
    expect(nb.prompt(1)).to_have_text("[*]:")
    expect(nb.status).to_have_attribute("data-status", "busy")
    nb.page.locator("jp-button[data-command='notebook:interrupt-kernel']").click()
    expect(nb.output(1)).to_contain_text("KeyboardInterrupt", timeout=15_000)
    expect(nb.prompt(1)).to_have_text("[1]:")
    expect(nb.status).to_have_attribute("data-status", "idle")

    nb.run(2)
    expect(nb.output(2)).to_have_text("still here")


def test_old_slider_goes_away_and_a_new_one_is_bound_to_the_new_kernel(lab_notebook, expect):
    nb = lab_notebook(
        [
            "import ipywidgets\nold = ipywidgets.IntSlider(value=7)\nold",
            "%restart",
            "import ipywidgets\ns = ipywidgets.IntSlider(value=3)\ns",
            "print('value', s.value)",
        ]
    )
    nb.run(0)
    expect(nb.output(0).locator(".widget-slider")).to_be_visible()

    nb.run(1)
    expect(nb.output(1)).to_contain_text(RESTART_MESSAGE)
    # its comm was closed with the old kernel: Lab removes the view instead of keeping a dead slider
    expect(nb.output(0).locator(".widget-slider")).to_have_count(0)

    nb.run(2)
    handle = nb.output(2).locator(".widget-slider .noUi-handle")
    expect(handle).to_be_visible()
    # One change per check: ipywidgets holds a second change back until the
    # kernel is idle after the first, so it could arrive after the next cell.
    for value in (4, 5):
        handle.focus()
        nb.page.keyboard.press("ArrowRight")
        expect(nb.output(2).locator(".widget-readout")).to_have_text(str(value))
        nb.run(3)
        expect(nb.output(3)).to_have_text(f"value {value}")


def test_the_restart_kernel_command_restarts_in_place(restart_button_enabled, lab_notebook, expect):
    """Lab's own Restart Kernel (toolbar button, confirmed) with the server extension enabled."""
    pids = "import os\nprint(f'pid={os.getpid()} proxy={os.getppid()}')"
    nb = lab_notebook([f"x = 1\n{pids}", "x", pids])
    [kernel_before] = nb.kernels()
    nb.run(0)
    before = nb.output(0).inner_text()

    nb.page.locator("jp-button[data-command='notebook:restart-kernel']").click()
    expect(nb.dialogs).to_have_count(1)
    nb.dialogs.locator("button.jp-mod-accept").click()
    expect(nb.dialogs).to_have_count(0)
    expect(nb.status_bar).to_have_text(f"{DISPLAY_NAME} | Idle")

    nb.run(1)
    expect(nb.output(1)).to_contain_text("NameError")
    nb.run(2)
    after = nb.output(2).inner_text()
    assert pid_of(after) != pid_of(before)
    assert proxy_of(after) == proxy_of(before)
    expect(nb.status).to_have_attribute("data-status", "idle")
    expect(nb.dialogs).to_have_count(0)
    [kernel_after] = nb.kernels()
    assert kernel_after["id"] == kernel_before["id"]


def proxy_of(text: str) -> int:
    match = re.search(r"proxy=(\d+)", text)
    assert match, f"no proxy pid in {text!r}"
    return int(match.group(1))


def test_a_subshell_console_answers_while_a_notebook_cell_runs_also_after_restart(lab_notebook, tmp_path, expect):
    def waiting_cell(n: int) -> str:
        started, release = tmp_path / f"started-{n}", tmp_path / f"release-{n}"
        return (
            f"import os, time\nopen({str(started)!r}, 'w').close()\n"
            f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.05)"
        )

    nb = lab_notebook(["x = 42", waiting_cell(1), "%restart", "x = 7", waiting_cell(2)])
    nb.run(0)
    nb.prompt(0).click(button="right")
    item = nb.page.locator(".lm-Menu-item", has_text="New Subshell Console for Notebook")
    expect(item).to_be_visible()
    item.click()
    console = nb.page.locator(".jp-CodeConsole")
    expect(console).to_be_visible()

    def console_answers_while_cell_runs(cell: int, n: int, expected: str) -> None:
        nb.run(cell, wait=False)
        wait_for_file(tmp_path / f"started-{n}")
        console.locator(".jp-CodeConsole-promptCell .cm-content").click()
        nb.page.keyboard.type("x + 1")
        nb.page.keyboard.press("Shift+Enter")
        expect(console.locator(".jp-CodeConsole-content .jp-OutputArea-output").last).to_have_text(expected)
        # the notebook's cell is still running: it waits for the file the test creates next
        expect(nb.prompt(cell)).to_have_text("[*]:")
        (tmp_path / f"release-{n}").touch()
        expect(nb.prompt(cell)).to_have_text(re.compile(r"^\[\d+\]:$"))

    console_answers_while_cell_runs(1, 1, "43")
    nb.run(2)
    expect(nb.output(2)).to_contain_text(RESTART_MESSAGE)
    nb.run(3)
    console_answers_while_cell_runs(4, 2, "8")
    expect(nb.dialogs).to_have_count(0)
