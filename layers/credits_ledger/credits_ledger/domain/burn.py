"""Burn: credits debited per UTC day, the forecast of when available credits run out, and the usage anomaly
rule (docs/money.md). Pure; only ``debit`` entries burn (expiry, voids and refunds do not)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from credits_ledger.domain.models import EntryType, LedgerEntry, utc
from credits_ledger.domain.money import SCALE, ZERO, canonical

WINDOW_DAYS = 30
ANOMALY_FACTOR = Decimal(3)
# The longest delay a date can be kept for: the window before the oldest day an anomaly may be judged on.
KEPT_DAYS = WINDOW_DAYS + 1


def window(today: date, days: int = WINDOW_DAYS) -> list[date]:
    """The ``days`` UTC days ending with ``today`` (today included), oldest first."""
    return [today - timedelta(days=n) for n in range(days - 1, -1, -1)]


@dataclass(frozen=True)
class Forecast:
    burn_per_day: Decimal
    runs_out_at: datetime | None
    window_days: int = WINDOW_DAYS


def forecast(burn: Mapping[date, Decimal], available: Decimal, now: datetime) -> Forecast:
    """Credits debited over the 30 UTC days ending today, divided by 30 (rounded down to 6 digits), and
    ``now + available / burn_per_day``; ``runs_out_at`` is None when nothing burns (or nothing is left to
    burn, then it is now)."""
    now = utc(now)
    total = sum((burn.get(day, ZERO) for day in window(now.date())), ZERO)
    per_day = canonical((total / WINDOW_DAYS).quantize(SCALE, rounding=ROUND_DOWN))
    if per_day <= 0:
        return Forecast(ZERO, None)
    if available <= 0:
        return Forecast(per_day, now)
    seconds = available / per_day * 86_400
    return Forecast(per_day, now + timedelta(seconds=float(min(seconds, Decimal(86_400 * 36_500)))))


def daily_median(burn: Mapping[date, Decimal], day: date, since: date | None) -> Decimal | None:
    """Median burn over the 30 days before ``day`` (days without debits count 0), counting only days from
    ``since`` (the account's first day of burn) on; None when there is no such day (nothing to compare)."""
    days = [d for d in window(day - timedelta(days=1)) if since is None or d >= since]
    if not days:
        return None
    values = sorted(burn.get(d, ZERO) for d in days)
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2


def is_anomaly(day_burn: Decimal, median: Decimal | None, threshold: Decimal) -> bool:
    """A day's burn above 3x the 30-day daily median and above the low-balance threshold (both strict)."""
    return median is not None and day_burn > ANOMALY_FACTOR * median and day_burn > threshold


# ---- per-account bookkeeping of the ledger stream ----------------------------------------------------------
OTHER_METER = "other"


@dataclass(frozen=True)
class Applied:
    """Which ledger entries (by ``seq``) of an account the stream already counted: every seq up to ``upto``,
    plus those in ``above``. Entries of one account may arrive out of order (their items live in different
    partitions, hence different stream shards), so a plain high-water mark would drop late ones."""

    upto: int = 0
    above: frozenset[int] = frozenset()

    def has(self, seq: int) -> bool:
        return seq <= self.upto or seq in self.above

    def with_seqs(self, seqs: Iterable[int]) -> Applied:
        pending = set(self.above) | {s for s in seqs if s > self.upto}
        upto = self.upto
        while upto + 1 in pending:
            upto += 1
            pending.discard(upto)
        return Applied(upto, frozenset(pending))


@dataclass(frozen=True)
class Tracker:
    """What the stream remembers per account: entries counted, burn per day and meter (the last
    ``KEPT_DAYS``), the first day of burn, the last day an anomaly was raised, and an optimistic version."""

    account_id: str
    applied: Applied = Applied()
    burn: Mapping[date, Mapping[str, Decimal]] = field(default_factory=dict)
    since: date | None = None
    anomaly_day: date | None = None
    version: int = 0
    anomalies: frozenset[date] = frozenset()  # days an anomaly was raised, within the kept days

    def daily(self) -> dict[date, Decimal]:
        return {day: sum(meters.values(), ZERO) for day, meters in self.burn.items()}


@dataclass(frozen=True)
class Folded:
    tracker: Tracker
    new_entries: tuple[LedgerEntry, ...]
    burned_days: tuple[date, ...]


def fold(tracker: Tracker, entries: Iterable[LedgerEntry]) -> Folded:
    """Count the entries not counted yet: debits add to the burn (by meter) of the day their usage happened
    (``LedgerEntry.usage_time``). Days older than ``KEPT_DAYS`` before the newest day are forgotten (the
    window no longer reaches them)."""
    new = sorted({e.seq: e for e in entries if not tracker.applied.has(e.seq)}.values(), key=lambda e: e.seq)
    if not new:
        return Folded(tracker, (), ())
    burn = {day: dict(meters) for day, meters in tracker.burn.items()}
    since = tracker.since
    days: set[date] = set()
    for entry in new:
        if entry.type is not EntryType.DEBIT or entry.amount >= 0:
            continue
        day = entry.usage_time.date()  # usage sent late counts on the day it happened, not as a spike today
        meter = entry.metadata.get("meter") or OTHER_METER
        meters = burn.setdefault(day, {})
        meters[meter] = meters.get(meter, ZERO) - entry.amount
        since = day if since is None else min(since, day)
        days.add(day)
    anomalies = tracker.anomalies
    if burn:
        newest = max(burn)
        burn = {d: m for d, m in burn.items() if (newest - d).days <= KEPT_DAYS}
        anomalies = frozenset(d for d in anomalies if (newest - d).days <= KEPT_DAYS)
    folded = replace(
        tracker,
        applied=tracker.applied.with_seqs(e.seq for e in new),
        burn=burn,
        anomalies=anomalies,
        since=since,
        version=tracker.version + 1,
    )
    return Folded(folded, tuple(new), tuple(sorted(d for d in days if d in burn)))


def anomaly_candidates(tracker: Tracker, days: Iterable[date]) -> list[tuple[date, Decimal, Decimal]]:
    """Days whose burn exceeds 3x their 30-day median and that may still raise an anomaly (at most one per
    account per day, never for a day before the last one raised): ``(day, burn, median)``, oldest first.
    The threshold is checked by the caller, which reads it only for these (rare) days."""
    daily = tracker.daily()
    found = []
    for day in sorted(days):
        if tracker.anomaly_day is not None and day <= tracker.anomaly_day:
            continue
        median = daily_median(daily, day, tracker.since)
        if median is not None and daily.get(day, ZERO) > ANOMALY_FACTOR * median:
            found.append((day, daily[day], median))
    return found
