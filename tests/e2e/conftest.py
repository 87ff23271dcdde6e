"""Real Jupyter clients against a proxied kernel, and fixtures that always stop them.

The clients' own packages (nbformat, nbclient, Playwright) are imported where a
test uses them, so that ``-m "not e2e"`` collects this folder without them.
Every test here starts what it uses (a Jupyter server, Chromium, a terminal) in the
private Jupyter folders of the root conftest, and stops it in the fixture's teardown.
A server or browser that fails to start fails the test: nothing here skips.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..helpers import descendants, free_port, processes_gone, wait_until
from ..spec_helpers import proxied, write_spec

KERNEL_NAME = "python3-inplace"
DISPLAY_NAME = "Python 3 (in-place restart)"

#: What ``%restart`` prints in the cell's output, e.g. ``Restarted the kernel in place in 0.8 s``.
RESTART_MESSAGE = re.compile(r"Restarted the kernel in place in \d+(\.\d+)? s")

#: Debian's Chromium; Playwright's own browser download cannot work on these machines.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def write_proxied_kernelspec(jupyter_path: Path, name: str = KERNEL_NAME) -> Path:
    """A kernelspec whose kernel is the proxy in front of ipykernel, as install writes it."""
    return write_spec(jupyter_path / "kernels", name, proxied(display_name=DISPLAY_NAME))


@pytest.fixture
def proxied_kernel(jupyter_dirs) -> str:
    """The name of a proxied ipykernel spec in this test's private JUPYTER_PATH."""
    write_proxied_kernelspec(jupyter_dirs["JUPYTER_PATH"])
    return KERNEL_NAME


def write_notebook(path: Path, sources: list[str], kernel_name: str = KERNEL_NAME) -> Path:
    """A notebook of code cells that opens on ``kernel_name`` without asking."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": DISPLAY_NAME, "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, str(path))
    return path


# --- Jupyter server ------------------------------------------------------------------------


@dataclass
class JupyterServer:
    process: subprocess.Popen
    base_url: str
    token: str
    root_dir: Path
    log_path: Path

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}?token={self.token}"

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=None if body is None else json.dumps(body).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def jupyter_server(
    app_module: str,
    workdir: Path,
    startup_timeout: float = 60,
    python: str = sys.executable,
    on: tuple[list[str], str] = ([], "127.0.0.1"),
):
    """Run ``python -m <app_module>`` (jupyterlab, notebook or jupyter_server) on loopback with a token.

    It serves ``workdir/notebooks`` and logs to ``workdir/<app_module>.log``.
    ``on``: the argv prefix that runs it on another host and the address it listens on there
    (the cluster's login node: ``(cluster.enter("login"), cluster.address("login"))``).

    The server inherits the test's private Jupyter folders from the environment. It is
    stopped with SIGTERM (which shuts its kernels down) and killed if that does not do;
    every process it started must be gone afterwards.
    """
    root_dir = workdir / "notebooks"
    root_dir.mkdir()
    log_path = workdir / f"{app_module}.log"
    port = free_port()
    token = secrets.token_hex(16)
    prefix, ip = on
    argv = [
        *prefix, python, "-m", app_module,
        "--no-browser", "--allow-root",
        f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.terminals_enabled=False",
        # no network: no update checks, no news, no extension manager lookups on PyPI
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
        "--LabApp.extension_manager=readonly",
    ]  # fmt: skip
    # The announcements plugin pops a "get notified about Jupyter news?" toast over the page.
    labconfig = Path(os.environ["JUPYTER_CONFIG_DIR"]) / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    # Run from workdir: python -m puts the current folder (a checkout, say) on sys.path.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir
        )
    server = JupyterServer(proc, f"http://{ip}:{port}", token, root_dir, log_path)

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{app_module} exited with {proc.returncode} at startup:\n{server.log()[-4000:]}")
        try:
            server.api("/api/status")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    try:
        try:
            wait_until(answers, f"{app_module} to answer", startup_timeout, interval=0.2)
        except AssertionError as e:
            pytest.fail(f"{e}:\n{server.log()[-4000:]}")
        yield server
    finally:
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        processes_gone(children, f"the {app_module} server")


#: the file pip installs in etc/jupyter that enables the server extension
SERVER_EXTENSION_CONFIG = Path(__file__).parents[2] / "etc/jupyter/jupyter_server_config.d/inplace_restarter.json"


@pytest.fixture
def restart_button_enabled(jupyter_dirs, tmp_path_factory, monkeypatch) -> None:
    """The server extension enabled as pip install enables it; request it before the server.

    An editable install (the tests') has no data files, so the file goes to a
    config folder of its own on JUPYTER_CONFIG_PATH, standing in for the
    environment's etc/jupyter.
    """
    folder = tmp_path_factory.mktemp("etc-jupyter")
    (folder / "jupyter_server_config.d").mkdir()
    shutil.copy(SERVER_EXTENSION_CONFIG, folder / "jupyter_server_config.d")
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(folder))


#: the built JupyterLab extension, which pip installs into share/jupyter/labextensions
LAB_EXTENSION = Path(__file__).parents[2] / "share/jupyter/labextensions/inplace-restarter"


@pytest.fixture
def lab_extension(jupyter_dirs) -> None:
    """The package's JupyterLab extension, as pip installs it; request it before the server.

    An editable install (the tests') has no data files, so the built folder is
    linked into the private JUPYTER_PATH's labextensions, where JupyterLab and
    Notebook 7 look for extensions too.
    """
    folder = jupyter_dirs["JUPYTER_PATH"] / "labextensions"
    folder.mkdir(exist_ok=True)
    (folder / LAB_EXTENSION.name).symlink_to(LAB_EXTENSION, target_is_directory=True)


@pytest.fixture
def lab_server(proxied_kernel, tmp_path):
    with jupyter_server("jupyterlab", tmp_path) as server:
        yield server


@pytest.fixture
def notebook7_server(proxied_kernel, tmp_path):
    with jupyter_server("notebook", tmp_path) as server:
        yield server


# --- Chromium --------------------------------------------------------------------------------


@pytest.fixture
def browser_page(tmp_path):
    """A page in headless Debian Chromium with a fresh profile, closed after the test."""
    from playwright.sync_api import sync_playwright

    before = {p.pid for p in descendants(os.getpid())}
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 800},
        )
        # Playwright's driver and Chromium, started just now (a server's kernels come later)
        started = [p for p in descendants(os.getpid()) if p.pid not in before]
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()
    processes_gone(started, "the browser")


@pytest.fixture
def expect():
    """Playwright's ``expect``; imported here, so that a run that deselects the e2e tests needs no Playwright."""
    from playwright.sync_api import expect

    return expect


class NotebookPage:
    """A notebook open in JupyterLab or Notebook 7, driven with clicks and keys as a person would."""

    def __init__(self, page, server: JupyterServer, path: Path):
        self.page = page
        self.server = server
        self.path = path
        self.cells = page.locator(".jp-Notebook .jp-Cell")
        #: The toolbar's kernel status circle; ``data-status`` is the kernel's execution state.
        self.status = page.locator(".jp-Notebook-ExecutionIndicator")
        #: Lab's status bar: "<kernel name> | <state>" (Notebook 7 has none).
        self.status_bar = page.locator(".jp-StatusBar-TextItem", has_text=" | ")
        self.dialogs = page.locator(".jp-Dialog")

    def prompt(self, i: int):
        return self.cells.nth(i).locator(".jp-InputArea .jp-InputPrompt")

    def output(self, i: int):
        return self.cells.nth(i).locator(".jp-OutputArea")

    def run(self, i: int, wait: bool = True, timeout: float = 60_000):
        """Select cell ``i``, press Shift+Enter and (by default) wait until it has run."""
        from playwright.sync_api import expect

        self.prompt(i).click()
        self.page.keyboard.press("Shift+Enter")
        if wait:
            expect(self.prompt(i)).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=timeout)

    def kernels(self) -> list[dict]:
        return self.server.api("/api/kernels")


def open_notebook(page, server: JupyterServer, url_prefix: str, sources: list[str]) -> NotebookPage:
    """Write a notebook of ``sources`` into the server's root, open it, wait for an idle kernel."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    name = f"restart-{secrets.token_hex(3)}.ipynb"
    path = write_notebook(server.root_dir / name, sources)
    page.goto(server.url(f"{url_prefix}/{name}"))
    notebook = NotebookPage(page, server, path)
    expect(notebook.cells).to_have_count(len(sources), timeout=60_000)
    # The circle says idle before there is a kernel too, beside "No Kernel": ready is the
    # kernel's name and idle at once. A kernel that never answers fails here, as "Busy".
    try:
        page.wait_for_function(
            """(name) => document.querySelector('.jp-Toolbar-kernelName')?.textContent === name
                && document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'""",
            arg=DISPLAY_NAME,
            timeout=60_000,
        )
    except PlaywrightTimeoutError:
        # Read at once: a page that never drew the circle must not take the server's log with it.
        kernel = page.locator(".jp-Toolbar-kernelName").all_inner_texts()
        state = page.evaluate("() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status")
        pytest.fail(
            f"the notebook's kernel was not ready in 60 s: kernel {kernel}, status {state!r}\n"
            f"server log:\n{server.log()[-3000:]}"
        )
    return notebook
