"""When the notebook is warned that its job ends, what it is told, and how the job is described.

``JobNotices.due`` is asked with the time left; each offset of
``warn_before`` gives one notice as the time left passes it, in order, and
no more, unless the time limit is extended past it. Durations read as a
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

JOB = Job("1234", "node2", end=None, time_limit="12:00:00")


def notices_for(policy: JobNotices, times_left: list[float | None]) -> list[str | None]:
    return [policy.due(left, JOB) for left in times_left]


def test_by_default_the_notebook_is_warned_ten_and_two_minutes_ahead():
    policy = JobNotices()
    assert (policy.enabled, policy.warn_before) == (True, [600.0, 120.0])
    assert notices_for(policy, [3600, 601, 599.6, 300, 121, 119.8, 60, 1, 0, -5]) == [
        None,
        None,
        "This job ends in 10 min (Slurm time limit 12:00:00, job 1234): save your work",
        None,
        None,
        "This job ends in 2 min (Slurm time limit 12:00:00, job 1234): save your work",
        None,
        None,
        None,
        None,
    ]


def test_offsets_passed_together_give_one_notice_and_an_ended_job_none():
    policy = JobNotices(warn_before=[600, 300, 120])
    assert notices_for(policy, [200, 100, 50]) == [
        "This job ends in 3 min (Slurm time limit 12:00:00, job 1234): save your work",
        "This job ends in 2 min (Slurm time limit 12:00:00, job 1234): save your work",
        None,
    ]
    assert notices_for(JobNotices(), [0, -1]) == [None, None], "a job past its end is not warned about"


def test_an_extended_time_limit_makes_its_notices_due_again():
    policy = JobNotices(warn_before=[60])
    assert notices_for(policy, [59, 30]) == [
        "This job ends in 59 s (Slurm time limit 12:00:00, job 1234): save your work",
        None,
    ]
    assert notices_for(policy, [3600, 60, 10]) == [
        None,
        "This job ends in 1 min (Slurm time limit 12:00:00, job 1234): save your work",
        None,
    ]


def test_no_notice_when_turned_off_unknown_or_without_limit():
    assert notices_for(JobNotices(enabled=False), [599, 119]) == [None, None]
    assert notices_for(JobNotices(), [None, math.inf]) == [None, None]
    assert JobNotices(enabled=False).next_due(700) is None


def test_the_offsets_come_from_configuration():
    config = Config({"JobNotices": {"warn_before": [30, 5], "enabled": True}})
    policy = JobNotices(config=config)
    assert policy.warn_before == [30.0, 5.0]
    assert policy.next_due(100) == 70
    assert policy.due(29.6, JOB).startswith("This job ends in 30 s")
    assert policy.next_due(29.6) == pytest.approx(24.6)
    assert policy.due(4.9, JOB).startswith("This job ends in 5 s")
    assert policy.next_due(4.9) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (44.6, "45 s"),
        (59.6, "1 min"),
        (599.6, "10 min"),
        (2460, "41 min"),
        (3599, "1 h"),
        (5400, "1 h 30 min"),
        (86400, "1 day"),
        (3 * 86400 + 7200 + 59, "3 days 2 h"),
    ],
)
def test_durations_read_as_a_user_reads_them(seconds, text):
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
