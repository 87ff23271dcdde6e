"""When the proxy restarts a dead kernel by itself: at most ``restart_limit`` times within ``restart_window`` s.

``RescuePolicy.may_restart`` is asked once per death; a yes counts as a
restart, a no does not.  Deaths older than the window no longer count, so a
kernel that dies now and then is always restarted, one that keeps dying is
left for the user's ``%restart``.
"""

from __future__ import annotations

import time

import pytest
from traitlets.config import Config

from inplace_restarter.rescue import RescuePolicy

from .helpers import wait_until


def answers(policy: RescuePolicy, times: int) -> list[bool]:
    return [policy.may_restart() for _ in range(times)]


def test_the_defaults_allow_five_restarts_a_minute_and_five_seconds_for_an_interrupt():
    policy = RescuePolicy()
    assert (policy.restart_limit, policy.restart_window) == (5, 60.0)
    assert (policy.interrupt_grace, policy.restart_hung) == (5.0, False)
    assert answers(policy, 6) == [True] * 5 + [False]


@pytest.mark.parametrize("limit", [0, 1, 3])
def test_within_the_window_restart_limit_restarts_are_allowed_and_no_more(limit):
    policy = RescuePolicy(restart_limit=limit, restart_window=3600)
    assert answers(policy, limit + 3) == [True] * limit + [False] * 3


def test_a_refusal_is_not_counted_as_a_restart():
    """Asking again after a no (a request that finds the kernel dead) changes nothing."""
    policy = RescuePolicy(restart_limit=2, restart_window=3600)
    assert answers(policy, 2) == [True, True]
    assert answers(policy, 10) == [False] * 10


def test_each_policy_counts_its_own_restarts():
    first, second = RescuePolicy(restart_limit=1), RescuePolicy(restart_limit=1)
    assert first.may_restart() and not first.may_restart()
    assert second.may_restart()


def test_restarts_older_than_the_window_no_longer_count():
    window = 1.0
    policy = RescuePolicy(restart_limit=1, restart_window=window)
    before = time.monotonic()
    assert answers(policy, 2) == [True, False]
    # The marker is the policy itself saying yes again, which it may only once the window has passed.
    wait_until(policy.may_restart, "a restart allowed again", timeout=30, interval=0.01)
    assert time.monotonic() - before >= window
    assert not policy.may_restart(), "the restart just allowed counts"


def test_the_limits_come_from_jupyter_config():
    """As set in inplace_restarter_config.py or with --RescuePolicy.restart_limit on the kernelspec's argv."""
    config = Config()
    config.RescuePolicy.restart_limit = 1
    config.RescuePolicy.restart_window = 10.5
    config.RescuePolicy.interrupt_grace = 2
    config.RescuePolicy.restart_hung = True
    policy = RescuePolicy(config=config)
    assert (policy.restart_limit, policy.restart_window, policy.interrupt_grace, policy.restart_hung) == (
        1,
        10.5,
        2,
        True,
    )
    assert answers(policy, 2) == [True, False]
