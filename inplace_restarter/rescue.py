"""When the proxy restarts a dying or hung inner kernel by itself.

Policy only, kept apart from the mechanism in :mod:`.kernel`, as jupyter_client
keeps ``KernelRestarter``'s limits apart from ``KernelManager``.
"""

from __future__ import annotations

import time
from collections import deque

from traitlets import Bool, Float, Integer
from traitlets.config import LoggingConfigurable


class RescuePolicy(LoggingConfigurable):
    """Limits on automatic restarts, and the patience given to interrupts."""

    restart_limit = Integer(
        5,
        config=True,
        help="Automatic restarts of a dead kernel allowed within restart_window seconds; "
        "past that the proxy stops restarting and waits for %restart.",
    )
    restart_window = Float(60.0, config=True, help="Seconds over which restart_limit counts restarts.")
    interrupt_grace = Float(
        5.0,
        config=True,
        help="Seconds a running cell has to end after an interrupt before the kernel is called hung.",
    )
    restart_hung = Bool(
        False,
        config=True,
        help="Restart a hung kernel as soon as interrupt_grace has passed, instead of waiting "
        "for a second interrupt.",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._restarts: deque[float] = deque()

    def may_restart(self) -> bool:
        """Whether one more automatic restart is allowed now; counts it if so."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.restart_window:
            self._restarts.popleft()
        if len(self._restarts) >= self.restart_limit:
            return False
        self._restarts.append(now)
        return True
