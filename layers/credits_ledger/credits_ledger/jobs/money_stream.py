"""The money side of the ledger stream: daily revenue aggregates, burn per day and usage anomalies.

The ledger stream function hands each ledger entry record to ``MoneyBatch.account(account_id)`` before
publishing it; the first record of an account in a batch processes every entry record of that account in
the batch at once:

1. read its tracker (one strongly consistent BatchGetItem for all accounts of the batch) and the grants
   the entries touched (one BatchGetItem, for their amount and cost basis);
2. ``burn.fold``: the entries not counted yet (a redelivered record is already in the tracker), their burn;
   ``revenue.entry_movements``: the money they move (sold, recognized, breakage, refunded);
3. anomaly rule on the days that burned: only when a day's burn passes 3x its median is the account's
   low-balance threshold read; an anomaly publishes ``credits.usage.anomaly`` (at least once: published
   before the tracker records ``anomaly_day``; the detail's ``anomaly_id`` is ``<account>:<day>``);
4. one transaction: the tracker (conditioned on the version read) and the day totals (dal/money.py).

A moved tracker (a concurrent batch of the same account) is re-read and decided again. Cost per account
and batch: ~1 read unit (tracker) + 0.5 per grant touched + 2 write units per item of the transaction (the
tracker and usually one day item), whatever the number of entries; the anomaly adds nothing unless it
fires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from credits_ledger.bus import BusEvent, Publisher
from credits_ledger.dal import items as it
from credits_ledger.dal.account_settings import AccountSettingsRepository
from credits_ledger.dal.money import MoneyRepository, TrackerMoved
from credits_ledger.domain.burn import Tracker, anomaly_candidates, fold, is_anomaly
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.domain.money import format_amount
from credits_ledger.domain.revenue import (
    GrantCost,
    Totals,
    add_movements,
    consumed_before_from_allocations,
    entry_movements,
    missing_positions,
)
from credits_ledger.observability import logger, metrics

USAGE_ANOMALY = "credits.usage.anomaly"
MAX_DECISIONS = 5


@dataclass(eq=False)
class MoneyStream:
    """Long-lived dependencies of the money side of the stream function."""

    repository: MoneyRepository
    settings: AccountSettingsRepository
    bus: Publisher
    default_threshold: Callable[[], Decimal]

    def batch(self, event: dict[str, Any]) -> MoneyBatch:
        return MoneyBatch(self, event)


class MoneyBatch:
    def __init__(self, stream: MoneyStream, event: dict[str, Any]) -> None:
        self.stream = stream
        self._by_account: dict[str, list[LedgerEntry]] = {}
        for raw in event.get("Records", []):
            dynamodb = raw.get("dynamodb", {})
            pk = dynamodb.get("Keys", {}).get("pk", {}).get("S", "")
            if raw.get("eventName") == "INSERT" and pk.startswith("ENTRY#") and dynamodb.get("NewImage"):
                entry = it.entry_from_item(it.from_dynamo(dynamodb["NewImage"]))
                self._by_account.setdefault(entry.account_id, []).append(entry)
        self._trackers: dict[str, Tracker] | None = None
        self._costs: dict[str, GrantCost] | None = None
        self._done: set[str] = set()
        self.anomalies = 0

    def account(self, account_id: str) -> None:
        """Count every entry of ``account_id`` in this batch (once per batch; safe to repeat on a retry)."""
        if account_id in self._done or account_id not in self._by_account:
            return
        entries = self._by_account[account_id]
        tracker = self._tracker(account_id)
        for attempt in range(MAX_DECISIONS):
            try:
                self._decide_and_record(tracker, entries)
                break
            except TrackerMoved:
                if attempt == MAX_DECISIONS - 1:
                    raise
                tracker = self.stream.repository.trackers([account_id])[account_id]
        self._done.add(account_id)

    # ---- one decision --------------------------------------------------------------------------------------
    def _decide_and_record(self, tracker: Tracker, entries: list[LedgerEntry]) -> None:
        folded = fold(tracker, entries)
        if not folded.new_entries:
            return
        costs = self._costs_of(folded.new_entries)
        days: dict[tuple[date, str], Totals] = {}
        for entry in folded.new_entries:
            missing = missing_positions(entry)
            if missing:  # written before allocations said what was left: see docs/money.md (rebuild)
                logger.warning("entry without remaining_after", entry_key=entry.entry_key, grants=missing)
                metrics.add_metric(name="RevenueWithoutCarry", unit=MetricUnit.Count, value=len(missing))
            add_movements(days, entry_movements(entry, costs, consumed_before_from_allocations(entry, costs)))
        new_tracker = self._anomalies(folded.tracker, folded.burned_days)
        self.stream.repository.record(new_tracker, tracker.version, days)
        if self._trackers is not None:
            self._trackers[tracker.account_id] = new_tracker

    def _anomalies(self, tracker: Tracker, days: tuple[date, ...]) -> Tracker:
        candidates = anomaly_candidates(tracker, days)
        if not candidates:
            return tracker  # the common case: no settings read, no event
        threshold = self.stream.settings.get(tracker.account_id).low_balance_threshold
        if threshold is None:
            threshold = self.stream.default_threshold()
        raised: list[BusEvent] = []
        last = tracker.anomaly_day
        for day, burned, median in candidates:
            if not is_anomaly(burned, median, threshold):
                continue
            last = day
            raised.append(
                BusEvent(
                    USAGE_ANOMALY,
                    {
                        "anomaly_id": f"{tracker.account_id}:{day.isoformat()}",
                        "account": tracker.account_id,
                        "day": day.isoformat(),
                        "burn": format_amount(burned),
                        "median_30d": format_amount(median),
                        "threshold": format_amount(threshold),
                        "by_meter": {m: format_amount(v) for m, v in sorted(tracker.burn[day].items())},
                    },
                )
            )
        if not raised:
            return tracker
        self.stream.bus.publish(raised)  # before recording anomaly_day: at least once
        self.anomalies += len(raised)
        metrics.add_metric(name="UsageAnomalies", unit=MetricUnit.Count, value=len(raised))
        logger.info("usage anomaly", account_id=tracker.account_id, days=[e.detail["day"] for e in raised])
        days_raised = {date.fromisoformat(e.detail["day"]) for e in raised}
        return replace(tracker, anomaly_day=last, anomalies=tracker.anomalies | days_raised)

    # ---- batch-wide reads ------------------------------------------------------------------------------------
    def _tracker(self, account_id: str) -> Tracker:
        if self._trackers is None:
            self._trackers = self.stream.repository.trackers(self._by_account)
        return self._trackers[account_id]

    def _costs_of(self, entries: tuple[LedgerEntry, ...]) -> dict[str, GrantCost]:
        if self._costs is None:
            wanted = {a.grant_id for batch in self._by_account.values() for e in batch for a in e.allocations}
            self._costs = self.stream.repository.grant_costs(wanted)
        missing = {a.grant_id for e in entries for a in e.allocations} - set(self._costs)
        if missing:  # read too early by an eventually consistent read? read again, strongly
            self._costs.update(self.stream.repository.grant_costs(missing, consistent=True))
        for grant_id in missing - set(self._costs):
            # No grant record at all: count no money for it rather than block the shard (alerts and ledger
            # events wait behind a failing record); the metric alarms and a rebuild restates the days.
            logger.error("ledger entry names an unknown grant", grant_id=grant_id)
            metrics.add_metric(name="RevenueUnknownGrant", unit=MetricUnit.Count, value=1)
            self._costs[grant_id] = GrantCost(grant_id, Decimal(0))
        return self._costs
