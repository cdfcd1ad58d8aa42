"""PaymentRepository: Stripe payment records and processed-event records.

payment record   pk=PAYMENT#<pi_|in_|ch_ id>  sk=PAYMENT   (facts + what the ledger reflects; ``version``)
Stripe event     pk=STRIPE_EVENT#<evt id>     sk=EVENT     (processed or failed; TTL 35 days, failed 90)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import (
    TableRepository,
    cancellation_codes,
    failed_condition,
    raise_unless_cancelled,
)
from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.models import Category
from credits_ledger.domain.payments import DisputeEffect, DisputeStatus, GrantLine, PaymentRecord, Purchase

PAYMENT_SK = "PAYMENT"
EVENT_SK = "EVENT"
PROCESSED_EVENT_DAYS = 35  # Stripe retries for 3 days and lets operators resend events for 30
FAILED_EVENT_DAYS = 90


class EventAlreadyRecorded(CreditsError):
    def __init__(self, event_id: str) -> None:
        super().__init__(f"Stripe event {event_id} was processed before")
        self.event_id = event_id


class PaymentChanged(CreditsError):
    """A payment record changed since it was read: read it again and re-decide. ``index`` is the position of
    the failed condition in the transaction (-1 when DynamoDB did not say)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"condition {index} failed: payment record changed concurrently")
        self.index = index


@dataclass(frozen=True)
class FailedEvent:
    event_id: str
    event_type: str
    reason: str
    payload: str
    received_at: datetime


def _payment_key(key: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"PAYMENT#{key}", "sk": PAYMENT_SK})


def _event_key(event_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"STRIPE_EVENT#{event_id}", "sk": EVENT_SK})


def _line_to_item(line: GrantLine) -> dict[str, Any]:
    return {
        "id": line.line_id,
        "credits": line.credits,
        "category": line.category.value,
        "priority": line.priority,
        "valid_days": line.valid_days,
        "cost": line.cost_amount,
        "currency": line.currency,
        "pack": line.pack,
        "effective_at": it.iso(line.effective_at) if line.effective_at else None,
        "expires_at": it.iso(line.expires_at) if line.expires_at else None,
        "entry_key": line.entry_key,
        "grant_id": line.grant_id,
        "plan": line.plan,
        "subscription": line.subscription,
    }


def _line_from_item(item: dict[str, Any]) -> GrantLine:
    return GrantLine(
        line_id=item["id"],
        credits=item["credits"],
        category=Category(item["category"]),
        priority=int(item["priority"]) if item.get("priority") is not None else None,
        valid_days=int(item["valid_days"]) if item.get("valid_days") is not None else None,
        cost_amount=int(item.get("cost", 0)),
        currency=item.get("currency"),
        pack=item.get("pack"),
        effective_at=it.parse_iso(item["effective_at"]) if item.get("effective_at") else None,
        expires_at=it.parse_iso(item["expires_at"]) if item.get("expires_at") else None,
        entry_key=item.get("entry_key"),
        grant_id=item.get("grant_id"),
        plan=item.get("plan"),
        subscription=item.get("subscription"),
    )


def _purchase_to_item(purchase: Purchase | None) -> dict[str, Any] | None:
    if purchase is None:
        return None
    return {
        "account": purchase.account_id,
        "lines": [{k: v for k, v in _line_to_item(line).items() if v is not None} for line in purchase.lines],
        "paid_at": it.iso(purchase.paid_at),
        "source_type": purchase.source_type,
        "source_id": purchase.source_id,
        "charged": purchase.charged,
    }


def _purchase_from_item(raw: dict[str, Any] | None) -> Purchase | None:
    if not raw:
        return None
    return Purchase(
        account_id=raw["account"],
        lines=tuple(_line_from_item(line) for line in raw["lines"]),
        paid_at=it.parse_iso(raw["paid_at"]),
        source_type=raw["source_type"],
        source_id=raw["source_id"],
        charged=int(raw.get("charged", 0)),
    )


def record_to_item(record: PaymentRecord) -> dict[str, Any]:
    return {
        "pk": f"PAYMENT#{record.key}",
        "sk": PAYMENT_SK,
        "version": record.version,
        "purchase": _purchase_to_item(record.purchase),
        "preferred": _purchase_to_item(record.preferred),
        "refunds": {charge: {"a": a, "r": r} for charge, (a, r) in record.refunds.items()},
        "disputes": {d: s.value for d, s in record.disputes.items()},
        "parent": record.parent,
        "children": list(record.children),
        "granted": dict(record.granted),
        "revoked": dict(record.revoked),
        "dispute_effects": {g: e.value for g, e in record.dispute_effects.items()},
    }


def record_from_item(key: str, item: dict[str, Any] | None) -> PaymentRecord:
    if item is None:
        return PaymentRecord(key=key)
    return PaymentRecord(
        key=key,
        version=int(item["version"]),
        purchase=_purchase_from_item(item.get("purchase")),
        preferred=_purchase_from_item(item.get("preferred")),
        refunds={c: (int(v["a"]), int(v["r"])) for c, v in (item.get("refunds") or {}).items()},
        disputes={d: DisputeStatus(s) for d, s in (item.get("disputes") or {}).items()},
        parent=item.get("parent"),
        children=tuple(item.get("children") or ()),
        granted=dict(item.get("granted") or {}),
        revoked={g: Decimal(v) for g, v in (item.get("revoked") or {}).items()},
        dispute_effects={g: DisputeEffect(e) for g, e in (item.get("dispute_effects") or {}).items()},
    )


class PaymentRepository(TableRepository):
    def transact(self, actions: list[dict[str, Any]]) -> None:
        """Write conditional actions of records that ride along with payments (subscription periods)."""
        self._transact(actions)

    def get_many(self, keys: Sequence[str]) -> dict[str, PaymentRecord]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        for raw in self._batch_get([_payment_key(k) for k in wanted]):
            item = it.from_dynamo(raw)
            found[item["pk"].removeprefix("PAYMENT#")] = item
        return {k: record_from_item(k, found.get(k)) for k in wanted}

    def put_action(self, old: PaymentRecord, new: PaymentRecord) -> dict[str, Any]:
        """A TransactWriteItems Put of ``new`` that only succeeds if the record is still ``old``."""
        item = record_to_item(new)
        item["version"] = old.version + 1
        put: dict[str, Any] = {"TableName": self._table, "Item": it.to_dynamo(item)}
        if old.version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "version = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": str(old.version)}}
        return {"Put": put}

    def save(
        self, old: PaymentRecord, new: PaymentRecord, with_actions: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Replace ``old`` by ``new`` (and write ``with_actions`` in the same transaction)."""
        self._transact([*with_actions, self.put_action(old, new)])

    def record_facts(
        self,
        event_id: str,
        event_type: str,
        changes: Sequence[tuple[PaymentRecord, PaymentRecord]],
        now: datetime,
        extra_actions: Sequence[dict[str, Any]] = (),
    ) -> None:
        """The event's facts and the record that the event was processed, in one transaction: a redelivered
        event raises EventAlreadyRecorded and changes nothing."""
        event_item = {
            "pk": f"STRIPE_EVENT#{event_id}",
            "sk": EVENT_SK,
            "event_type": event_type,
            "status": "processed",
            "received_at": it.iso(now),
            "ttl": int((now + timedelta(days=PROCESSED_EVENT_DAYS)).timestamp()),
        }
        actions = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": it.to_dynamo(event_item),
                    "ConditionExpression": "attribute_not_exists(pk) OR #status = :failed",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {":failed": {"S": "failed"}},
                }
            },
            *(self.put_action(old, new) for old, new in changes),
            *extra_actions,
        ]
        try:
            self._transact(actions)
        except PaymentChanged as exc:
            if exc.index == 0:
                raise EventAlreadyRecorded(event_id) from exc
            raise

    def record_failed(
        self,
        event_id: str,
        event_type: str,
        reason: str,
        payload: str,
        now: datetime,
        *,
        replace_processed: bool = False,
    ) -> None:
        """Keep an event we could not act on, with its payload, so an operator can replay it after a fix.

        ``replace_processed``: the event's facts were recorded ("processed") but applying them failed for good;
        the failed record replaces the processed one so a replay runs the event again (its facts merge as no-ops).
        """
        item = {
            "pk": f"STRIPE_EVENT#{event_id}",
            "sk": EVENT_SK,
            "event_type": event_type,
            "status": "failed",
            "reason": reason,
            "payload": payload,
            "received_at": it.iso(now),
            "ttl": int((now + timedelta(days=FAILED_EVENT_DAYS)).timestamp()),
        }
        try:
            self._client.put_item(
                TableName=self._table,
                Item=it.to_dynamo(item),
                ConditionExpression="attribute_not_exists(pk) OR #status IN (:failed, :also)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":failed": {"S": "failed"},
                    ":also": {"S": "processed" if replace_processed else "failed"},
                },
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
            raise EventAlreadyRecorded(event_id) from exc

    def failed_event(self, event_id: str) -> FailedEvent | None:
        raw = self._client.get_item(TableName=self._table, Key=_event_key(event_id), ConsistentRead=True).get(
            "Item"
        )
        if not raw:
            return None
        item = it.from_dynamo(raw)
        if item.get("status") != "failed":
            return None
        return FailedEvent(
            event_id, item["event_type"], item["reason"], item["payload"], it.parse_iso(item["received_at"])
        )

    def _transact(self, actions: list[dict[str, Any]]) -> None:
        try:
            self._client.transact_write_items(TransactItems=actions)
        except ClientError as exc:
            raise_unless_cancelled(exc)
            failed = [i for i, code in enumerate(cancellation_codes(exc)) if code == "ConditionalCheckFailed"]
            raise PaymentChanged(failed[0] if failed else -1) from exc
