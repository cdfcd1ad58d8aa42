"""Which expiry reminder threshold is due for a grant: the tightest one it is inside of, none when it is far
away or already due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from credits_ledger.domain.reminders import due_threshold, reminder_window

NOW = datetime(2030, 1, 1, 0, 15, tzinfo=UTC)
THRESHOLDS = (30, 7, 1)


@pytest.mark.parametrize(
    ("until_expiry", "expected"),
    [
        (timedelta(days=45), None),
        (timedelta(days=30, seconds=1), None),
        (timedelta(days=30), 30),  # exactly at the threshold counts
        (timedelta(days=20), 30),
        (timedelta(days=7), 7),
        (timedelta(days=5), 7),  # created inside two thresholds: only the tightest
        (timedelta(hours=23), 1),
        (timedelta(seconds=1), 1),
        (timedelta(0), None),  # due: the expiry itself is the news
        (timedelta(days=-1), None),
    ],
)
def test_due_threshold(until_expiry: timedelta, expected: int | None) -> None:
    # Given a grant expiring until_expiry from now / When asking which reminder is due / Then expected
    assert due_threshold(NOW + until_expiry, NOW, THRESHOLDS) == expected


def test_thresholds_tighten_so_each_is_due_on_one_run_only_if_runs_are_daily() -> None:
    # Given a grant expiring in 40 days and a nightly run
    expires = NOW + timedelta(days=40)
    # When the runs of the next 40 nights each compute the due threshold
    due = [due_threshold(expires, NOW + timedelta(days=n), THRESHOLDS) for n in range(41)]
    # Then the distinct thresholds appear in order 30, 7, 1: recording each one sent suffices
    firsts = [d for i, d in enumerate(due) if d is not None and (i == 0 or due[i - 1] != d)]
    assert firsts == [30, 7, 1]


def test_reminder_window_is_the_largest_threshold() -> None:
    # Given thresholds / Then the window to look at ends at now + the largest; none without thresholds
    assert reminder_window(NOW, THRESHOLDS) == NOW + timedelta(days=30)
    assert reminder_window(NOW, ()) is None
