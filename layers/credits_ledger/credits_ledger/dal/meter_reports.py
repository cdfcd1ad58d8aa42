"""MeterReportRepository: our own record of each overage debit reported to Stripe as a billing meter event.

  meter report   pk=METER#<entry key>  sk=METER

``status`` goes ``sending`` -> ``reported`` (Stripe answered) or ``rejected`` (Stripe refused it: 4xx) or
``unknown`` (still ``sending`` when Stripe's 24 h de-duplication window had passed: never resent, an
operator checks the meter's summary). ``generation`` numbers the attempts that failed without an answer;
it is part of the idempotency key (Stripe stores a 5xx answer under its key), while the meter event
``identifier`` stays the same for every attempt. Every transition is conditional on the status it leaves,
so a redelivered record never reports twice. No ``account_id`` attribute: in no index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import TableRepository, failed_condition

SENDING = "sending"
REPORTED = "reported"
REJECTED = "rejected"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class MeterReport:
    entry_key: str
    account: str
    value: Decimal
    identifier: str
    status: str
    first_sent_at: datetime
    generation: int = 0
    reason: str | None = None


def _key(entry_key: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"METER#{entry_key}", "sk": "METER"})


def _from_item(item: it.Item) -> MeterReport:
    return MeterReport(
        entry_key=item["entry_key"],
        account=item["account"],
        value=item["value"],
        identifier=item["identifier"],
        status=item["status"],
        first_sent_at=it.parse_iso(item["first_sent_at"]),
        generation=int(item.get("generation", 0)),
        reason=item.get("reason"),
    )


class MeterReportRepository(TableRepository):
    def claim(self, report: MeterReport) -> MeterReport:
        """Create the record in ``sending`` unless one exists; returns the stored record either way."""
        item = {
            "pk": f"METER#{report.entry_key}",
            "sk": "METER",
            "entry_key": report.entry_key,
            "account": report.account,
            "value": report.value,
            "identifier": report.identifier,
            "status": SENDING,
            "first_sent_at": it.iso(report.first_sent_at),
            "generation": 0,
        }
        try:
            self._client.put_item(
                TableName=self._table,
                Item=it.to_dynamo(item),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
            old = exc.response.get("Item")
            return _from_item(it.from_dynamo(old)) if old else self.get(report.entry_key)  # type: ignore[return-value]
        return _from_item(item)

    def get(self, entry_key: str) -> MeterReport | None:
        raw = self._client.get_item(TableName=self._table, Key=_key(entry_key), ConsistentRead=True).get(
            "Item"
        )
        return _from_item(it.from_dynamo(raw)) if raw else None

    def settle(self, entry_key: str, status: str, at: datetime, reason: str | None = None) -> bool:
        """``sending`` -> ``status``; False when it had left ``sending`` already (another delivery did it)."""
        values: dict[str, Any] = {":sending": SENDING, ":status": status, ":at": it.iso(at)}
        update = "SET #s = :status, settled_at = :at"
        if reason:
            update += ", reason = :reason"
            values[":reason"] = reason[:500]
        return self._update_if(
            Key=_key(entry_key),
            UpdateExpression=update,
            ConditionExpression="#s = :sending",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=it.to_dynamo(values),
        )

    def next_generation(self, entry_key: str, seen: int) -> None:
        """After an attempt without an answer: the next one uses a fresh idempotency key. Conditional on the
        generation this attempt used, so two deliveries failing at once bump it once."""
        self._update_if(
            Key=_key(entry_key),
            UpdateExpression="SET generation = :next",
            ConditionExpression="#s = :sending AND generation = :seen",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=it.to_dynamo({":next": seen + 1, ":seen": seen, ":sending": SENDING}),
        )
