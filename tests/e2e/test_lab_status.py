"""The JupyterLab extension in headless Chromium: the kernel's job in the status bar, its notices, Restart Kernel in Place.

The extension (built, as pip installs it) opens the proxy's ``inplace_restarter.job``
comm; a plain ipykernel closes it, and the notebook shows nothing. The Slurm tests run
the proxied kernel inside ``srun --time=...`` on the tests' single-node cluster, its
notices due within seconds (``--JobNotices.warn_before``), and in a job whose memory
cgroup holds it to ``--mem``. Notebook 7 has no status bar: the same item is in the
notebook's toolbar there.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from ..helpers import wait_until
from ..spec_helpers import direct, load, run_cli, write_spec
from ..test_slurm import SRUN_SPEC
from .conftest import DISPLAY_NAME, KERNEL_NAME, RESTART_MESSAGE, jupyter_server, open_notebook

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ITEM = ".jp-InplaceRestarter-job"
RESTART_COMMAND = "inplace-restarter:restart-kernel"
#: A cell that prints the Slurm job, the kernel's pid and its parent's (the proxy's).
WHERE = "import os\nprint(os.environ.get('SLURM_JOB_ID'), os.getpid(), os.getppid())"


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """Where pictures for the docs go: ``$INPLACE_RESTARTER_SCREENSHOTS``, else the test's own folder."""
    folder = Path(os.environ.get("INPLACE_RESTARTER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def lab(lab_extension, restart_button_enabled, proxied_kernel, tmp_path, browser_page):
    """JupyterLab with the extension, and Jupyter's restart in place; yields ``open(sources)``."""
    with jupyter_server("jupyterlab", tmp_path) as server:
        yield lambda sources: open_notebook(browser_page, server, "/lab/tree", sources)


@pytest.fixture
def notebook7(lab_extension, restart_button_enabled, proxied_kernel, tmp_path, browser_page):
    """Notebook 7 with the extension; yields ``open(sources)``."""
    with jupyter_server("notebook", tmp_path) as server:
        yield lambda sources: open_notebook(browser_page, server, "/notebooks", sources)


def where(nb, cell: int) -> tuple[str, int, int]:
    """Run ``cell`` (the WHERE cell) and read the job, the kernel's pid and the proxy's."""
    nb.run(cell)
    job, pid, proxy = nb.output(cell).inner_text().split()
    return job, int(pid), int(proxy)


def in_job(jupyter_dirs, *srun: str, proxy: tuple[str, ...] = ()) -> None:
    """Make the notebooks' kernel the proxied ipykernel in ``srun *srun``, as ``install`` writes it."""
    kernels = jupyter_dirs["JUPYTER_PATH"] / "kernels"
    argv = SRUN_SPEC["argv"]
    spec = {**SRUN_SPEC, "display_name": DISPLAY_NAME, "argv": [*argv[:4], *srun, *argv[4:]]}
    folder = write_spec(kernels, KERNEL_NAME, spec)
    done = run_cli("install", KERNEL_NAME)
    assert done.returncode == 0, done.stderr
    spec = load(folder)
    spec["argv"] += proxy
    write_spec(kernels, KERNEL_NAME, spec)


def toast(page, text: str):
    return page.locator(".Toastify__toast", has_text=text)


# --- outside Slurm ---------------------------------------------------------------------------------


def test_a_plain_kernel_shows_nothing(jupyter_dirs, tmp_path, lab, expect):
    write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", KERNEL_NAME, direct(display_name=DISPLAY_NAME))
    # ipykernel logs a comm it has no target for (and closes it) to a logger without handlers: one to a file
    refused = tmp_path / "comm.log"
    startup = jupyter_dirs["IPYTHONDIR"] / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "comm_log.py").write_text(
        f"import logging\nlogging.getLogger('ipykernel.comm').addHandler(logging.FileHandler({str(refused)!r}))\n"
    )
    nb = lab(["y = 2"])
    wait_until(
        lambda: refused.exists() and "No such comm target registered: inplace_restarter.job" in refused.read_text(),
        "the plain kernel to refuse the comm",
    )
    # its comm_close comes before the idle that ends the cell
    nb.run(0)
    expect(nb.page.locator(ITEM)).to_be_hidden()
    expect(nb.status_bar).to_have_text(f"{DISPLAY_NAME} | Idle")


def test_a_proxied_kernel_shows_its_host_and_restarts_in_place_from_the_palette(lab, expect):
    nb = lab(["x = 1\n" + WHERE, "x", WHERE])
    item = nb.page.locator(f"#jp-main-statusbar {ITEM}")
    here = re.escape(socket.gethostname())
    # Outside Slurm: the host, and the memory in use where a cgroup says
    expect(item).to_have_text(re.compile(rf"^{here}( · [\d.]+ (B|KB|MB|GB|TB)\b.*)?$"))
    expect(item).not_to_have_class(re.compile("jp-mod-warning"))
    _, pid, proxy = where(nb, 0)

    nb.page.locator(".lm-MenuBar-item", has_text="Kernel").click()
    in_menu = nb.page.locator(f".lm-Menu-item[data-command='{RESTART_COMMAND}']")
    expect(in_menu).to_have_text(re.compile("Restart Kernel in Place"))
    nb.page.keyboard.press("Escape")
    expect(in_menu).to_have_count(0)

    nb.prompt(0).click()
    nb.page.keyboard.press("Control+Shift+C")
    nb.page.locator(".lm-CommandPalette-input").fill("Restart Kernel in Place")
    nb.page.locator(".lm-CommandPalette-item", has_text="Restart Kernel in Place").click()
    # no question asked: the kernel restarts and is idle again
    expect(nb.status).to_have_attribute("data-status", "idle")
    expect(nb.status_bar).to_have_text(f"{DISPLAY_NAME} | Idle")
    expect(nb.dialogs).to_have_count(0)

    nb.run(1)
    expect(nb.output(1)).to_contain_text("NameError")
    _, new_pid, same_proxy = where(nb, 2)
    assert (new_pid != pid, same_proxy) == (True, proxy), "a new kernel behind the same proxy"
    expect(item).to_have_text(re.compile(rf"^{here}\b"))
    [kernel] = nb.kernels()
    assert kernel["execution_state"] == "idle"


def test_the_item_follows_the_current_console_shown_for_a_proxied_kernel_only(jupyter_dirs, lab, expect):
    """A notebook on the proxied kernel, then consoles on a plain and on a proxied kernel, each current in turn."""
    write_spec(jupyter_dirs["JUPYTER_PATH"] / "kernels", "plain", direct(display_name="Plain Python"))
    nb = lab(["x = 1"])
    item = nb.page.locator(f"#jp-main-statusbar {ITEM}")
    here = re.compile(rf"^{re.escape(socket.gethostname())}\b")
    expect(item).to_have_text(here)
    nb.prompt(0).click()

    def new_console(kernel: str) -> None:
        nb.page.keyboard.press("Control+Shift+C")
        nb.page.locator(".lm-CommandPalette-input").fill("New Console")
        nb.page.locator(".lm-CommandPalette-itemLabel", has_text=re.compile(r"^New Console$")).click()
        nb.dialogs.locator("select").select_option(label=kernel)
        nb.dialogs.locator("button.jp-mod-accept").click()
        expect(nb.dialogs).to_have_count(0)
        # The new console takes the focus once it is ready; a palette opened before that would close on it.
        expect(nb.page.locator(".jp-CodeConsole-input .cm-content:focus")).to_have_count(1)

    new_console("Plain Python")
    expect(nb.page.locator(".jp-CodeConsole")).to_have_count(1)
    expect(item).to_be_hidden()
    new_console(DISPLAY_NAME)
    expect(nb.page.locator(".jp-CodeConsole")).to_have_count(2)
    expect(item).to_have_text(here)


#: the time left early in a three-minute job, never rounded up: ``3 min`` or ``2 min 41 s``
OF_THREE_MINUTES = r"(3 min|2 min \d+ s)"


# --- in a Slurm job --------------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_a_notebook_in_a_job_shows_it_is_warned_and_keeps_it_across_restarts(
    slurm, jupyter_dirs, lab, screenshots, expect
):
    """A three-minute job, warned 160 s before its end: twenty seconds in, a notification."""
    in_job(jupyter_dirs, "--time=3", proxy=("--JobNotices.warn_before=[160]",))
    nb = lab([WHERE, "x = 1", "%restart", "x", WHERE])
    job, pid, proxy = where(nb, 0)
    item = nb.page.locator(f"#jp-main-statusbar {ITEM}")
    in_this_job = rf"^job {job} · {re.escape(slurm.host)}"
    # the end as soon as the proxy has read it from Slurm; a job in its last ten minutes is a warning
    expect(item).to_have_text(re.compile(rf"{in_this_job} · {OF_THREE_MINUTES} left( · .*)?$"))
    expect(item).to_have_class(re.compile("jp-mod-warning"))

    notice = toast(nb.page, "This job ends in")
    expect(notice).to_contain_text(f"job {job}", timeout=60_000)
    expect(notice).to_contain_text("save your work")
    # the status bar and the notification above it
    bottom = {
        "x": 0,
        "y": nb.page.viewport_size["height"] - 150,
        "width": nb.page.viewport_size["width"],
        "height": 150,
    }
    nb.page.screenshot(path=str(screenshots / "lab-status-item.png"), clip=bottom)

    item.click()
    details = nb.dialogs.locator(".jp-InplaceRestarter-details")
    expect(details).to_contain_text(f"Slurm job {job} on {slurm.host}")
    expect(details).to_contain_text("time limit 3:00")
    nb.dialogs.locator("button.jp-mod-accept").click()
    expect(nb.dialogs).to_have_count(0)

    nb.run(1)
    nb.run(2)
    expect(nb.output(2)).to_contain_text(RESTART_MESSAGE)
    expect(item).to_have_text(re.compile(in_this_job))

    nb.page.locator("jp-button[data-command='notebook:restart-kernel']").click()
    nb.dialogs.locator("button.jp-mod-accept").click()
    expect(nb.dialogs).to_have_count(0)
    expect(nb.status_bar).to_have_text(f"{DISPLAY_NAME} | Idle")
    nb.run(3)
    expect(nb.output(3)).to_contain_text("NameError")
    assert where(nb, 4)[::2] == (job, proxy), "the same job, the same proxy"
    expect(item).to_have_text(re.compile(rf"{in_this_job} · (\d+ min )?\d+ (s|min) left"))
    item.click()
    expect(details).to_contain_text("Restarted in place 2 times so far")


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_a_kernel_over_its_memory_limit_is_shown_the_limit_and_told_of_the_oom_kill(
    slurm_memory, jupyter_dirs, lab, expect
):
    in_job(jupyter_dirs, "--mem=200M")
    nb = lab([WHERE, "held = bytearray(400 * 2**20)", "print('after')"])
    job = where(nb, 0)[0]
    item = nb.page.locator(f"#jp-main-statusbar {ITEM}")
    expect(item).to_have_text(re.compile(rf"^job {job} · .* · [\d.]+ / 200 MB$"))

    # the cell fails with the proxy's DeadKernelError, and no execution count
    nb.run(1, wait=False)
    expect(nb.output(1)).to_contain_text("DeadKernelError", timeout=120_000)
    expect(toast(nb.page, "out-of-memory killer")).to_contain_text("200 MB")
    nb.run(2)
    expect(nb.output(2)).to_have_text("after")
    expect(item).to_have_text(re.compile(rf"^job {job} · "))


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_notebook7_shows_the_job_in_the_toolbar_and_the_notice(slurm, jupyter_dirs, notebook7, expect):
    in_job(jupyter_dirs, "--time=3", proxy=("--JobNotices.warn_before=[160]",))
    nb = notebook7([WHERE, "%restart"])
    job = where(nb, 0)[0]
    item = nb.page.locator(f".jp-NotebookPanel-toolbar {ITEM}")
    in_this_job = rf"^job {job} · {re.escape(slurm.host)}"
    expect(item).to_have_text(re.compile(rf"{in_this_job} · {OF_THREE_MINUTES} left"))
    expect(toast(nb.page, "This job ends in")).to_contain_text(f"job {job}", timeout=60_000)

    nb.run(1)
    expect(nb.output(1)).to_contain_text(RESTART_MESSAGE)
    expect(item).to_have_text(re.compile(in_this_job))
    item.click()
    expect(nb.dialogs.locator(".jp-InplaceRestarter-details")).to_contain_text(f"Slurm job {job}")
