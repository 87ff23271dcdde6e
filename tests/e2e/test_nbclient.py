"""Notebooks with ``%restart`` in the middle, executed start to end by nbclient and nbconvert.

Batch execution is where an in-place restart matters most: nothing restarts the kernel
for you, so the notebook itself says when. The run must not stop or lose outputs at the
restart, the cells after it must run in the new kernel, and the saved notebook must
hold every output in order.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import RESTART_MESSAGE, write_notebook

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CELLS = [
    "x = 1\nimport os\nprint('before', os.getpid())",
    "%restart",
    "print('x' in globals())",
    "import os\nprint('after', os.getpid())",
    "%restart\nimport os\nprint('same cell', os.getpid())",
    "print('end')",
]


def text_of(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def check_executed(nb) -> None:
    """What the saved notebook must show after CELLS ran through the proxy."""
    cells = nb.cells
    assert all(cell.outputs for cell in cells), [cell.source for cell in cells if not cell.outputs]
    first_pid = int(re.fullmatch(r"before (\d+)\n", text_of(cells[0])).group(1))
    assert RESTART_MESSAGE.search(text_of(cells[1]))
    assert text_of(cells[2]) == "False\n"
    second_pid = int(re.fullmatch(r"after (\d+)\n", text_of(cells[3])).group(1))
    assert second_pid != first_pid
    # lines after %restart in the same cell run in the next kernel, after the message
    restart_line, same_cell = text_of(cells[4]).splitlines()
    assert RESTART_MESSAGE.search(restart_line)
    third_pid = int(re.fullmatch(r"same cell (\d+)", same_cell).group(1))
    assert third_pid not in (first_pid, second_pid)
    assert text_of(cells[5]) == "end\n"


def test_nbclient_runs_a_notebook_with_restarts_start_to_end(proxied_kernel, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    path = write_notebook(tmp_path / "restarts.ipynb", CELLS, proxied_kernel)
    nb = nbformat.read(path, as_version=4)

    NotebookClient(
        nb, kernel_name=proxied_kernel, timeout=60, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    check_executed(nb)


def test_nbconvert_execute_saves_every_output_in_order(proxied_kernel, tmp_path):
    import nbformat

    path = write_notebook(tmp_path / "restarts.ipynb", CELLS, proxied_kernel)

    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--output", "executed.ipynb", str(path)],
        check=True, cwd=tmp_path, timeout=100,
    )  # fmt: skip

    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    check_executed(executed)
    # nbconvert keeps the kernel's counts, which start again at 1 in each new kernel
    # (NotebookClient.execute numbers cells itself, 1 to 6, whatever the kernel says)
    counts = [cell.execution_count for cell in executed.cells if not cell.source.startswith("%restart")]
    assert counts == [1, 1, 2, 2]
