"""Notebook 7 in headless Chromium on a proxied kernel: the same ``%restart`` as in Lab.

Notebook 7 is built from JupyterLab's pieces but has its own page and kernel status
widget; a user of either sees the restart message, a fresh kernel, and nothing alarming.
"""

from __future__ import annotations

import pytest

from .conftest import RESTART_MESSAGE, open_notebook

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_restart_in_notebook7(notebook7_server, browser_page, expect):
    nb = open_notebook(browser_page, notebook7_server, "/notebooks", ["x = 1", "%restart", "x", "'back'"])
    nb.run(0)

    nb.run(1)
    expect(nb.output(1)).to_contain_text(RESTART_MESSAGE)

    nb.run(2)
    expect(nb.output(2)).to_contain_text("NameError")
    nb.run(3)
    expect(nb.output(3)).to_contain_text("'back'")
    expect(nb.prompt(3)).to_have_text("[2]:")
    expect(nb.status).to_have_attribute("data-status", "idle")
    # Notebook 7 says "Kernel Restarting" or "Kernel Dead" here when something went wrong
    expect(nb.page.locator(".jp-NotebookKernelStatus")).to_have_text("")
    expect(nb.dialogs).to_have_count(0)
