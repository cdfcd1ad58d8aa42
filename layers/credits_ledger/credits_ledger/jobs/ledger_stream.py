"""The table's stream, record by record: ledger events, low-balance alerts and the reconcile registry.

- a new ledger entry item (pk ``ENTRY#``, INSERT) -> ``credits.ledger.entry`` on the bus;
- every new ledger entry also feeds the daily revenue aggregate, the account's burn per day and the usage
  anomaly rule (jobs/money_stream.py), counted once per entry whatever the redeliveries;
- an account state item (pk ``ACCOUNT#``, sk ``STATE``) -> ``credits.balance.low`` /
  ``credits.balance.depleted`` when the available balance crosses the account's threshold (domain/alerts.py);
  its first INSERT also registers the account for reconciliation.

Alerts fire on crossings only. "Before" is the alert state remembered on the account's settings item (the
available balance last seen in a different band) and "after" the NEW image's available balance at the
record's creation time. Remembering instead of reading the OLD image matters for credits that stop counting
because time passed (a grant past ``expires_at`` leaves ``available`` without any write): the next change
of the account, whichever it is, sees the drop exactly once. The OLD image is the fallback for an account
seen for the first time. Alert state is written the first time and then only when the band changes, so most
records cost no write.

Ordering: records of one account arrive in order on one shard. After a record fails, every later record of
the batch is failed too (without side effects), so the retry starts at the first failure and nothing is
processed out of order. Events are published before the alert state is saved: at-least-once; every detail
carries an id (the stream record's ``eventID``, the entry key) for consumers to deduplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)

from credits_ledger.bus import BusEvent, Publisher
from credits_ledger.dal import items as it
from credits_ledger.dal.account_settings import AccountSettings, AccountSettingsRepository
from credits_ledger.dal.reconcile import ReconcileRepository
from credits_ledger.domain.alerts import alert_crossings, available, band
from credits_ledger.domain.models import AccountState, LedgerEntry
from credits_ledger.domain.money import format_amount
from credits_ledger.jobs.in_order import InOrderBatch
from credits_ledger.jobs.money_stream import MoneyStream
from credits_ledger.observability import logger, metrics
from credits_ledger.pricing import Pricing

LEDGER_ENTRY = "credits.ledger.entry"
METRIC_NAMES = {
    LEDGER_ENTRY: "LedgerEntriesPublished",
    "credits.balance.low": "BalanceLowAlerts",
    "credits.balance.depleted": "BalanceDepletedAlerts",
}


def entry_detail(entry: LedgerEntry, event_id: str | None) -> dict[str, Any]:
    """The public view of a ledger entry (amounts as strings, times in UTC with Z)."""
    return {
        "event_id": event_id,
        "entry_key": entry.entry_key,
        "account": entry.account_id,
        "seq": entry.seq,
        "type": entry.type.value,
        "amount": format_amount(entry.amount),
        "balance_after": format_amount(entry.balance_after),
        "allocations": [{"grant": a.grant_id, "amount": format_amount(a.amount)} for a in entry.allocations],
        "reference": entry.reference,
        "created_at": it.iso(entry.created_at),
        "metadata": dict(entry.metadata),
    }


@dataclass(eq=False)
class LedgerStream:
    """Long-lived dependencies; ``batch(event)`` gives the per-invocation processor."""

    bus: Publisher
    settings: AccountSettingsRepository
    registry: ReconcileRepository
    pricing: Pricing
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    money: MoneyStream | None = None  # revenue aggregates, burn and anomalies (jobs/money_stream.py)

    def batch(self, event: dict[str, Any]) -> StreamBatch:
        return StreamBatch(self, event)


class StreamBatch(InOrderBatch):
    def __init__(self, stream: LedgerStream, event: dict[str, Any]) -> None:
        self.stream = stream
        self._event = event
        self._settings: dict[str, AccountSettings] | None = None
        self.published = 0
        self.money = stream.money.batch(event) if stream.money is not None else None

    # ---- the record handler (Powertools BatchProcessor calls it once per record, in order) -----------------
    def _handle(self, record: DynamoDBRecord) -> None:
        stream = record.dynamodb
        if stream is None:
            return
        pk, sk = str(stream.keys.get("pk", "")), str(stream.keys.get("sk", ""))
        if pk.startswith("ENTRY#") and record.event_name is DynamoDBRecordEventName.INSERT:
            entry = it.entry_from_item(stream.new_image)
            if self.money is not None:
                self.money.account(entry.account_id)  # idempotent: counted once per entry, whatever retries
            self._publish(
                [BusEvent(LEDGER_ENTRY, entry_detail(entry, record.event_id), time=entry.created_at)]
            )
        elif pk.startswith("ACCOUNT#") and sk == it.STATE_SK and stream.new_image:
            account_id = pk.removeprefix("ACCOUNT#")
            at = self._created_at(record)
            if record.event_name is DynamoDBRecordEventName.INSERT:
                self.stream.registry.register(account_id, at)
            self._alerts(record, account_id, at)

    # ---- alerts ------------------------------------------------------------------------------------------
    def _alerts(self, record: DynamoDBRecord, account_id: str, at: datetime) -> None:
        assert record.dynamodb is not None
        settings = self._settings_of(account_id)
        threshold = settings.low_balance_threshold
        if threshold is None:
            threshold = self.stream.pricing.low_balance_threshold
        new = _image_state(account_id, record.dynamodb.new_image)
        after = available(new, at)
        before = settings.alert_available
        if before is None:
            old_image = record.dynamodb.old_image
            before = available(_image_state(account_id, old_image), at) if old_image else Decimal(0)
        if settings.alert_available is not None and band(before, threshold) == band(after, threshold):
            return  # the common case: no crossing possible, nothing to remember, no write
        alerts = alert_crossings(before, after, threshold)
        self._publish(
            [
                BusEvent(
                    alert.value,
                    {
                        "alert_id": f"{record.event_id}:{alert.value}",
                        "account": account_id,
                        "available_before": format_amount(before),
                        "available": format_amount(after),
                        "threshold": format_amount(threshold),
                        "ledger_balance": format_amount(new.ledger_balance),
                        "version": new.version,
                        "as_of": it.iso(at),
                    },
                    time=at,
                )
                for alert in alerts
            ]
        )
        self.stream.settings.set_alert_available(account_id, after, settings.alert_available)
        assert self._settings is not None
        self._settings[account_id] = replace(settings, alert_available=after)
        if alerts:
            logger.info("balance alert", account_id=account_id, alerts=[a.value for a in alerts])

    def _settings_of(self, account_id: str) -> AccountSettings:
        """Settings of every account with a state record in this batch, read once (strongly consistent: the
        alert state may have been written by the previous batch a moment ago)."""
        if self._settings is None:
            accounts = []
            for raw in self._event.get("Records", []):
                keys = raw.get("dynamodb", {}).get("Keys", {})
                pk, sk = keys.get("pk", {}).get("S", ""), keys.get("sk", {}).get("S", "")
                if pk.startswith("ACCOUNT#") and sk == it.STATE_SK:
                    accounts.append(pk.removeprefix("ACCOUNT#"))
            self._settings = self.stream.settings.get_many(accounts or [account_id])
        if account_id not in self._settings:
            self._settings[account_id] = self.stream.settings.get(account_id)
        return self._settings[account_id]

    # ---- helpers -----------------------------------------------------------------------------------------
    def _created_at(self, record: DynamoDBRecord) -> datetime:
        seconds = record.dynamodb.approximate_creation_date_time if record.dynamodb else None
        return datetime.fromtimestamp(seconds, UTC) if seconds is not None else self.stream.clock()

    def _publish(self, events: list[BusEvent]) -> None:
        if events:
            self.stream.bus.publish(events)  # PublishFailed fails the record: it is retried
            self.published += len(events)
            for event in events:
                name = METRIC_NAMES.get(event.detail_type, "OtherEventsPublished")
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


def _image_state(account_id: str, image: dict[str, Any]) -> AccountState:
    """An account item from the stream as a state. Its tail (the grants kept apart from the item,
    dal/live_grants.py) counts whole: the tail grants past their expiry, which the item does not name, count
    as available until the expiry job writes them off, so an alert can come that much later."""
    state = it.state_from_item(account_id, image)
    return replace(state, unloaded=replace(state.unloaded, spendable_until=None))
