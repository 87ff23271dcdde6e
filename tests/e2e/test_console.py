"""``jupyter console`` on a proxied kernel, typed into a real terminal (tmux).

The console is the client that cannot reconnect or hide anything: if ``%restart``
broke its channels, the next prompt would hang. Here one console session runs a cell,
restarts in place, finds the old variable gone and a new process, interrupts a sleeping
cell with Ctrl-C, and exits, taking the proxy and its kernel with it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import psutil
import pytest

from ..helpers import descendants, processes_gone, wait_until
from .conftest import RESTART_MESSAGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PROMPT = re.compile(r"\nIn \[\d+\]:$")


class Terminal:
    """A program in a private tmux server, read with capture-pane and typed into with send-keys."""

    def __init__(self, socket_path, argv: list[str], width: int = 160, height: int = 50):
        self.tmux = [shutil.which("tmux") or "tmux", "-S", str(socket_path), "-f", "/dev/null"]
        command = subprocess.list2cmdline(argv)
        # remain-on-exit keeps the last screen and the exit status readable after the program ends
        self._tmux("new-session", "-d", "-x", str(width), "-y", str(height), command,
                   ";", "set-option", "-w", "remain-on-exit", "on")  # fmt: skip
        self.pid = int(self._tmux("display-message", "-p", "#{pane_pid}"))

    def _tmux(self, *args: str) -> str:
        return subprocess.run(self.tmux + list(args), check=True, capture_output=True, text=True, timeout=10).stdout

    def screen(self) -> str:
        """Everything the terminal showed since it started, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-").rstrip()

    def wait_for(self, pattern: re.Pattern, since: int = 0, timeout: float = 30) -> str:
        """The screen from ``since`` on, once ``pattern`` is on it."""
        try:
            return wait_until(
                lambda: pattern.search(text := self.screen()[since:]) and text,
                f"{pattern.pattern!r} on the screen",
                timeout,
                interval=0.1,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}:\n{self.screen()}") from None

    def type_line(self, line: str) -> None:
        self._tmux("send-keys", "-l", line)
        self._tmux("send-keys", "Enter")

    def press(self, key: str) -> None:
        self._tmux("send-keys", key)

    def run(self, line: str, timeout: float = 30) -> str:
        """Type a cell and return what the console printed up to its next prompt."""
        mark = len(self.screen())
        self.type_line(line)
        return self.wait_for(PROMPT, since=mark, timeout=timeout)

    def exit_status(self, timeout: float = 30) -> int:
        try:
            wait_until(
                lambda: self._tmux("display-message", "-p", "#{pane_dead}").strip() == "1",
                "the program to exit",
                timeout,
                interval=0.1,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}:\n{self.screen()}") from None
        return int(self._tmux("display-message", "-p", "#{pane_dead_status}"))

    def close(self) -> None:
        subprocess.run(self.tmux + ["kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def console(proxied_kernel, tmp_path):
    """``jupyter console`` on the proxied kernel, at its first prompt."""
    terminal = Terminal(tmp_path / "tmux.sock", [sys.executable, "-m", "jupyter_console", f"--kernel={proxied_kernel}"])
    started = []
    try:
        terminal.wait_for(PROMPT, timeout=60)
        started = descendants(terminal.pid)
        yield terminal
    finally:
        started += [psutil.Process(terminal.pid)] if psutil.pid_exists(terminal.pid) else []
        terminal.close()
        processes_gone(started, "the console")


def test_console_restarts_in_place_interrupts_and_exits(console):
    kernel_processes = descendants(console.pid)
    assert kernel_processes, "the console started no kernel"

    console.run("x = 1")
    out = console.run("import os; os.getpid()")
    old_pid = int(re.search(r"Out\[\d+\]: (\d+)", out).group(1))

    out = console.run("%restart")
    assert RESTART_MESSAGE.search(out), out
    old_kernel = [p for p in kernel_processes if p.pid == old_pid]
    assert old_kernel, "the kernel's pid is not a descendant of the console"
    processes_gone(old_kernel, "%restart", timeout=5)

    out = console.run("x")
    assert "NameError" in out, out
    assert "Cell In[1]" in out, "the first cell after %restart is not the new kernel's first"
    out = console.run("import os; os.getpid()")
    new_pid = int(re.search(r"Out\[\d+\]: (\d+)", out).group(1))
    assert new_pid != old_pid

    mark = len(console.screen())
    console.type_line("import time; print('sleeping'); time.sleep(60)")
    console.wait_for(re.compile(r"\nsleeping$"), since=mark)
    console.press("C-c")
    out = console.wait_for(PROMPT, since=mark, timeout=15)
    assert "KeyboardInterrupt" in out, out

    out = console.run("print('after', 'interrupt')")
    assert "after interrupt" in out

    running = descendants(console.pid)
    assert new_pid in [p.pid for p in running]
    console.type_line("exit")
    assert console.exit_status() == 0
    # the proxy and the kernel behind it end with the console
    processes_gone(running + kernel_processes, "the console's exit")
