"""Burn per day, the forecast and the usage anomaly rule at its edges (domain/burn.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from credits_ledger.domain.burn import (
    Applied,
    Tracker,
    anomaly_candidates,
    daily_median,
    fold,
    forecast,
    is_anomaly,
)
from credits_ledger.domain.models import Allocation, EntryType, LedgerEntry

D = Decimal
DAY = date(2030, 2, 1)
NOW = datetime(2030, 2, 1, 12, tzinfo=UTC)


def entry(
    seq: int, kind: EntryType, amount: str, at: datetime, meter: str | None = "api_call"
) -> LedgerEntry:
    return LedgerEntry(
        entry_key=f"k{seq}",
        account_id="cus_b",
        seq=seq,
        type=kind,
        amount=D(amount),
        balance_after=D(0),
        allocations=(Allocation("g", abs(D(amount))),),
        reference=None,
        created_at=at,
        metadata={"meter": meter} if meter else {},
    )


def history(values: dict[int, str]) -> dict[date, Decimal]:
    """Burn ``values[n]`` on the day ``n`` days before DAY."""
    return {DAY - timedelta(days=n): D(v) for n, v in values.items()}


# ---- anomaly rule --------------------------------------------------------------------------------------------
def test_anomaly_needs_strictly_more_than_three_times_the_median_and_the_threshold() -> None:
    burn = history({n: "100" for n in range(1, 31)})  # 30 days of 100: median 100
    median = daily_median(burn, DAY, since=DAY - timedelta(days=30))
    assert median == D(100)
    assert not is_anomaly(D(300), median, D(50))  # exactly 3x: not above
    assert is_anomaly(D("300.000001"), median, D(50))
    assert not is_anomaly(D(301), median, D(301))  # not above the low-balance threshold
    assert is_anomaly(D(301), median, D(300))


def test_median_counts_quiet_days_as_zero_but_only_since_the_first_burn() -> None:
    # 10 days of history since the first burn, 3 of them with usage: median of 10 values, 7 zeros -> 0
    burn = history({1: "50", 2: "50", 3: "50"})
    assert daily_median(burn, DAY, since=DAY - timedelta(days=10)) == D(0)
    # even count: mean of the middle two
    assert daily_median(history({1: "10", 2: "20"}), DAY, since=DAY - timedelta(days=2)) == D(15)
    # first day of burn: nothing to compare with, never an anomaly
    assert daily_median({DAY: D(10_000)}, DAY, since=DAY) is None
    assert not is_anomaly(D(10_000), None, D(0))
    # only the 30 days before: a huge day 31 days ago does not count
    far = history({31: "1000000", **{n: "10" for n in range(1, 31)}})
    assert daily_median(far, DAY, since=DAY - timedelta(days=40)) == D(10)


def test_candidates_at_most_once_per_day_and_never_for_an_earlier_day() -> None:
    burn = {d: {"api_call": v} for d, v in history({n: "10" for n in range(1, 31)}).items()}
    burn[DAY] = {"api_call": D(31), "storage": D(0)}
    tracker = Tracker("cus_b", burn=burn, since=DAY - timedelta(days=30))
    assert anomaly_candidates(tracker, [DAY]) == [(DAY, D(31), D(10))]
    assert anomaly_candidates(Tracker("cus_b", burn=burn, since=tracker.since, anomaly_day=DAY), [DAY]) == []
    later = Tracker("cus_b", burn=burn, since=tracker.since, anomaly_day=DAY + timedelta(days=1))
    assert anomaly_candidates(later, [DAY]) == []


# ---- fold: counted once, in any order ---------------------------------------------------------------------
def test_fold_counts_debits_by_day_and_meter_once_whatever_the_order_and_redelivery() -> None:
    e1 = entry(1, EntryType.GRANT, "1000", NOW)
    e2 = entry(2, EntryType.DEBIT, "-30", NOW, "api_call")
    e3 = entry(3, EntryType.DEBIT, "-5", NOW, "storage")
    e4 = entry(4, EntryType.EXPIRE, "-100", NOW)  # expiry is not burn
    e5 = entry(5, EntryType.DEBIT, "-7", NOW + timedelta(days=1), None)
    first = fold(Tracker("cus_b"), [e3, e1, e5])  # 2 and 4 arrive later (another shard)
    assert first.tracker.applied == Applied(1, frozenset({3, 5}))
    second = fold(first.tracker, [e2, e3, e4, e5])  # 3 and 5 redelivered
    assert [e.seq for e in second.new_entries] == [2, 4]
    assert second.tracker.applied == Applied(5, frozenset())
    assert second.tracker.burn == {
        DAY: {"api_call": D(30), "storage": D(5)},
        DAY + timedelta(days=1): {"other": D(7)},
    }
    assert second.tracker.since == DAY
    assert fold(second.tracker, [e1, e2, e3, e4, e5]).new_entries == ()


def test_fold_counts_usage_sent_late_on_the_day_it_happened() -> None:
    # Given yesterday's usage recorded today (its timestamp says yesterday) and today's own usage
    late = replace(
        entry(1, EntryType.DEBIT, "-40", NOW),
        metadata={"meter": "api_call", "timestamp": "2030-01-31T23:00:00Z"},
    )
    today = entry(2, EntryType.DEBIT, "-3", NOW)
    # Then yesterday burned 40 and today 3: a backlog upload is no spike
    folded = fold(Tracker("cus_b"), [late, today])
    assert folded.tracker.burn == {DAY - timedelta(days=1): {"api_call": D(40)}, DAY: {"api_call": D(3)}}
    assert folded.tracker.since == DAY - timedelta(days=1)
    assert late.usage_time == datetime(2030, 1, 31, 23, tzinfo=UTC) and today.usage_time == NOW


@pytest.mark.parametrize("stamp", ["yesterday", "2030-13-45T00:00:00Z", "", "9999-12-31T23:59:59-23:59"])
def test_a_stamp_that_is_no_time_counts_as_the_recording_time(stamp: str) -> None:
    odd = replace(entry(1, EntryType.DEBIT, "-5", NOW), metadata={"meter": "api_call", "timestamp": stamp})
    assert odd.usage_time == NOW
    assert fold(Tracker("cus_b"), [odd]).tracker.burn == {DAY: {"api_call": D(5)}}


def test_fold_forgets_days_the_window_no_longer_reaches() -> None:
    old = entry(1, EntryType.DEBIT, "-1", NOW - timedelta(days=40))
    new = entry(2, EntryType.DEBIT, "-1", NOW)
    folded = fold(Tracker("cus_b"), [old, new])
    assert set(folded.tracker.burn) == {DAY}


# ---- forecast ------------------------------------------------------------------------------------------------
def test_forecast_divides_thirty_days_of_debits_by_thirty_and_projects_available() -> None:
    burn = history({0: "100", 5: "200", 29: "300", 30: "100000"})  # day 30 ago is outside the window
    result = forecast(burn, D(600), NOW)
    assert result.burn_per_day == D(20)  # (100 + 200 + 300) / 30
    assert result.runs_out_at == NOW + timedelta(days=30)
    assert result.window_days == 30


def test_forecast_is_null_when_nothing_burns_and_now_when_nothing_is_left() -> None:
    assert forecast({}, D(500), NOW).runs_out_at is None
    assert forecast({}, D(500), NOW).burn_per_day == D(0)
    assert forecast(history({1: "30"}), D(0), NOW).runs_out_at == NOW
    assert forecast(history({1: "1"}), D(1), NOW).burn_per_day == D("0.033333")


@pytest.mark.parametrize("naive", [datetime(2030, 2, 1)])
def test_forecast_refuses_naive_times(naive: datetime) -> None:
    with pytest.raises(ValueError):
        forecast({}, D(1), naive)
