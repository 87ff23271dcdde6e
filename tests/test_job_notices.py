"""When the notebook is warned that its job ends, what it is told, and how the job is described.

``JobNotices.due`` is asked with the time left; each offset of
``warn_before`` gives one notice as the time left passes it, in order, and
no more, unless the time limit is extended past it. A notice is worded when
it is shown, with the time left then, never rounded up. Durations read as a
user reads them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from datetime import datetime

import pytest
from traitlets.config import Config

from inplace_restarter.job import Job, JobNotices, format_duration, parse_slurm_time, where

NOW = 1_800_000_000.0


def job_ending_in(seconds: float) -> Job:
    return Job("1234", "node2", end=datetime.fromtimestamp(NOW + seconds).astimezone(), time_limit="12:00:00")


def notice(left: str) -> str:
    return f"This job ends in {left} (Slurm time limit 12:00:00, job 1234): save your work"


def test_by_default_the_notebook_is_warned_ten_and_two_minutes_ahead():
    policy = JobNotices()
    assert (policy.enabled, policy.warn_before) == (True, [600.0, 120.0])
    due = [policy.due(left) for left in [3600, 601, 599.6, 300, 121, 119.8, 60, 1, 0, -5]]
    assert due == [False, False, True, False, False, True, False, False, False, False]


def test_offsets_passed_together_give_one_notice_and_an_ended_job_none():
    policy = JobNotices(warn_before=[600, 300, 120])
    assert [policy.due(left) for left in [200, 100, 50]] == [True, True, False]
    assert [JobNotices().due(left) for left in [0, -1]] == [False, False], "a job past its end is not warned about"


def test_an_extended_time_limit_makes_its_notices_due_again():
    policy = JobNotices(warn_before=[60])
    assert [policy.due(left) for left in [59, 30]] == [True, False]
    assert [policy.due(left) for left in [3600, 60, 10]] == [False, True, False]


def test_no_notice_when_turned_off_unknown_or_without_limit():
    assert [JobNotices(enabled=False).due(left) for left in [599, 119]] == [False, False]
    assert [JobNotices().due(left) for left in [None, math.inf]] == [False, False]
    assert JobNotices(enabled=False).next_due(700) is None


def test_the_offsets_come_from_configuration():
    config = Config({"JobNotices": {"warn_before": [30, 5], "enabled": True}})
    policy = JobNotices(config=config)
    assert policy.warn_before == [30.0, 5.0]
    assert policy.next_due(100) == 70
    assert policy.due(29.6)
    assert policy.next_due(29.6) == pytest.approx(24.6)
    assert policy.due(4.9)
    assert policy.next_due(4.9) is None


def test_a_notice_says_the_time_left_when_it_is_worded_never_more():
    job = job_ending_in(100)
    policy = JobNotices()
    assert policy.word(job, NOW) == notice("1 min 40 s")
    assert policy.word(job, NOW + 0.4) == notice("1 min 39 s"), "99.6 s left is not 1 min 40 s"
    assert policy.word(job, NOW + 41) == notice("59 s")
    assert policy.word(job, NOW + 99.5) is None, "nothing to save for at the end"
    assert policy.word(Job("1234", "node2", time_limit="UNLIMITED"), NOW) is None


def test_a_held_notice_is_worded_when_taken_once_and_dropped_past_the_end(caplog):
    job, policy = job_ending_in(100), JobNotices()
    caplog.set_level(logging.INFO)
    assert policy.take(job, NOW) is None, "nothing held"
    policy.hold(NOW)
    assert policy.take(job, NOW + 20) == notice("1 min 20 s"), "with the time left when the cell runs"
    assert policy.take(job, NOW + 21) is None, "once"
    due_at, shown_at = (time.strftime("%H:%M:%S", time.localtime(t)) for t in (NOW, NOW + 20))
    assert f"Time-limit notice due at {due_at} shown at {shown_at}: {notice('1 min 20 s')}" in caplog.messages

    policy.hold(NOW + 10)
    policy.hold(NOW + 40)
    assert policy.take(job, NOW + 50) == notice("50 s"), "a later notice supersedes, and one is shown"
    assert policy.take(job, NOW + 51) is None

    policy.hold(NOW + 90)
    assert policy.take(job, NOW + 101) is None, "the job's end passed: dropped"
    assert "dropped" in caplog.messages[-1]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (-3, "0 s"),
        (44.6, "44 s"),
        (59, "59 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (100, "1 min 40 s"),
        (119.8, "1 min 59 s"),
        (599.6, "9 min 59 s"),
        (600, "10 min"),
        (2460, "41 min"),
        (2519, "41 min"),
        (3599, "59 min"),
        (3600, "1 h"),
        (5400, "1 h 30 min"),
        (86400, "1 day"),
        (3 * 86400 + 7200 + 3599, "3 days 2 h"),
    ],
)
def test_durations_read_as_a_user_reads_them_never_rounded_up(seconds, text):
    assert format_duration(seconds) == text


def test_a_job_is_described_by_its_id_node_and_time_left():
    now = time.time()
    end = datetime.fromtimestamp(now + 41 * 60 + 10).astimezone()
    assert Job("1234", "node2", end=end, time_limit="1:00:00").describe(now) == "Slurm job 1234 on node2, 41 min left"
    assert Job("1234", "node2", time_limit="UNLIMITED").describe() == "Slurm job 1234 on node2, no time limit"
    assert Job("1234", "node2").describe() == "Slurm job 1234 on node2", "nothing about an end not known"
    past = Job("1234", "node2", end=datetime.fromtimestamp(now - 1).astimezone(), time_limit="1:00")
    assert past.describe(now) == "Slurm job 1234 on node2, at its time limit"


def test_a_job_told_its_end_does_not_ask_slurm_until_refresh_interval_has_passed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    end = datetime.fromtimestamp(time.time() + 600).astimezone()
    told = Job("1234", "node2", end=end, time_limit="10:00", command_timeout=1)
    assert asyncio.run(told.end_time()) == end
    assert not [r for r in caplog.records if "squeue" in r.getMessage()], "squeue was not asked"
    stale = Job("1234", "node2", end=end, time_limit="10:00", command_timeout=1, refresh_interval=0)
    assert asyncio.run(stale.end_time()) == end, "a failed reading keeps what the job was told"
    assert [r.levelno for r in caplog.records if "squeue: No such file" in r.getMessage()] == [logging.WARNING]


def test_outside_slurm_there_is_no_job_and_only_the_host_is_said():
    assert Job.from_environ({"PATH": "/bin"}) is None
    assert where(None) == f"on host {socket.gethostname()}"
    job = Job.from_environ({"SLURM_JOB_ID": "77", "SLURMD_NODENAME": "node9"})
    assert (job.id, job.node, job.known) == ("77", "node9", False)
    assert where(job) == "Slurm job 77 on node9"
    assert Job.from_environ({"SLURM_JOB_ID": "77"}).node == socket.gethostname()


def test_slurm_times_are_local_times_and_its_words_for_no_end_are_none():
    assert parse_slurm_time("2026-12-02T16:57:00") == datetime(2026, 12, 2, 16, 57).astimezone()
    assert [parse_slurm_time(word) for word in ("NONE", "N/A", "Unknown", "UNLIMITED")] == [None] * 4
    with pytest.raises(ValueError):
        parse_slurm_time("soon")
