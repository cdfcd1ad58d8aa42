"""ReservationRepository: the reservation record in DynamoDB, written only inside the account's transaction.

  reservation   pk=RESERVATION#<id>  sk=RESERVATION   (in ExpiringGrants, partition RESERVATION, while open)

The account item holds what an open reservation pins (that decides debits); this record keeps what the API
answers: the customer, what was asked, when it ends, how it ended. Every write here is a TransactWriteItems
action committed with the account change (AccountRepository.commit ``extra_actions``), each with a condition
stating its invariant: created once (``attribute_not_exists``), ended or extended only while ``active``.
While open it carries ``expiry_shard = RESERVATION`` and ``expiry_key = <epoch µs>#<id>``: the sweep queries
the sparse ExpiringGrants index for reservations due, so its cost follows what is due, not the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from credits_ledger.dal import items as it
from credits_ledger.dal.accounts import EXPIRY_INDEX
from credits_ledger.dal.client import TableRepository
from credits_ledger.dal.pages import Page, decode_cursor, encode_cursor, pages
from credits_ledger.domain.models import Allocation
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.reservations import ReservationNotFound, ReservationStatus

RESERVATION_SK = "RESERVATION"
RESERVATION_SHARD = "RESERVATION"


@dataclass(frozen=True)
class ReservationRecord:
    reservation_id: str
    account_id: str
    credits: Decimal
    expires_at: datetime
    created_at: datetime
    status: ReservationStatus = ReservationStatus.ACTIVE
    allocations: tuple[Allocation, ...] = ()
    meter: str | None = None
    quantity: Decimal | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    captured: Decimal = ZERO
    released: Decimal = ZERO
    expired: Decimal = ZERO
    available_after: Decimal | None = None
    capture_allocations: tuple[Allocation, ...] = ()
    ended_at: datetime | None = None

    def ended(
        self,
        status: ReservationStatus,
        at: datetime,
        *,
        captured: Decimal = ZERO,
        released: Decimal = ZERO,
        expired: Decimal = ZERO,
        available_after: Decimal | None = None,
        capture_allocations: tuple[Allocation, ...] = (),
    ) -> ReservationRecord:
        return replace(
            self,
            status=status,
            ended_at=at,
            captured=captured,
            released=released,
            expired=expired,
            available_after=available_after,
            capture_allocations=capture_allocations,
        )


def reservation_key(reservation_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"RESERVATION#{reservation_id}", "sk": RESERVATION_SK})


def _allocations(raw: Any) -> tuple[Allocation, ...]:
    return tuple(Allocation(a["g"], a["a"]) for a in raw or [])


def _raw_allocations(allocations: Iterable[Allocation]) -> list[dict[str, Any]]:
    return [{"g": a.grant_id, "a": a.amount} for a in allocations]


def record_to_item(record: ReservationRecord) -> it.Item:
    item: it.Item = {
        "pk": f"RESERVATION#{record.reservation_id}",
        "sk": RESERVATION_SK,
        "reservation_id": record.reservation_id,
        "account_id": record.account_id,
        "credits": record.credits,
        "status": record.status.value,
        "expires_at": it.iso(record.expires_at),
        "created_at": it.iso(record.created_at),
        "allocations": _raw_allocations(record.allocations),
        "meter": record.meter,
        "quantity": record.quantity,
        "metadata": record.metadata or None,
        "fingerprint": record.fingerprint or None,
    }
    if record.status is ReservationStatus.ACTIVE:
        item["expiry_shard"] = RESERVATION_SHARD
        item["expiry_key"] = it.expiry_sort_key(record.expires_at, record.reservation_id)
    return item


def record_from_item(item: it.Item) -> ReservationRecord:
    return ReservationRecord(
        reservation_id=item["reservation_id"],
        account_id=item["account_id"],
        credits=item["credits"],
        expires_at=it.parse_iso(item["expires_at"]),
        created_at=it.parse_iso(item["created_at"]),
        status=ReservationStatus(item["status"]),
        allocations=_allocations(item.get("allocations")),
        meter=item.get("meter"),
        quantity=item.get("quantity"),
        metadata=dict(item.get("metadata") or {}),
        fingerprint=item.get("fingerprint") or "",
        captured=item.get("captured", ZERO),
        released=item.get("released", ZERO),
        expired=item.get("expired", ZERO),
        available_after=item.get("available_after"),
        capture_allocations=_allocations(item.get("capture_allocations")),
        ended_at=it.parse_iso(item["ended_at"]) if item.get("ended_at") else None,
    )


class ReservationRepository(TableRepository):
    # ---- reads -------------------------------------------------------------------------------------------
    def get(self, reservation_id: str) -> ReservationRecord:
        response = self._client.get_item(
            TableName=self._table, Key=reservation_key(reservation_id), ConsistentRead=True
        )
        raw = response.get("Item")
        if not raw:
            raise ReservationNotFound(reservation_id)
        return record_from_item(it.from_dynamo(raw))

    def get_many(self, reservation_ids: Iterable[str]) -> dict[str, ReservationRecord]:
        keys = [reservation_key(r) for r in dict.fromkeys(reservation_ids)]
        found: dict[str, ReservationRecord] = {}
        for raw in self._batch_get(keys):
            record = record_from_item(it.from_dynamo(raw))
            found[record.reservation_id] = record
        return found

    def due(self, before: datetime, limit: int = 100, cursor: str | None = None) -> Page:
        """(account id, reservation id) of open reservations with ``expires_at <= before``."""
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": EXPIRY_INDEX,
            "KeyConditionExpression": "expiry_shard = :s AND expiry_key <= :t",
            "ExpressionAttributeValues": {
                ":s": {"S": RESERVATION_SHARD},
                ":t": {"S": it.expiry_sort_key(before, "~")},
            },
            "Limit": limit,
        }
        start = decode_cursor(cursor)
        if start is not None:
            query["ExclusiveStartKey"] = start
        response = self._client.query(**query)
        items = []
        for raw in response.get("Items", []):
            item = it.from_dynamo(raw)
            items.append((item["account_id"], item["pk"].removeprefix("RESERVATION#")))
        return Page(items=items, next_cursor=encode_cursor(response.get("LastEvaluatedKey")))

    def iter_due(self, before: datetime) -> Iterator[tuple[str, str]]:
        for _, page in pages(lambda cursor: self.due(before, cursor=cursor)):
            yield from page.items

    # ---- transaction actions (committed with the account change) ----------------------------------------
    def create_action(self, record: ReservationRecord) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": it.to_dynamo(record_to_item(record)),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def end_action(self, record: ReservationRecord) -> dict[str, Any]:
        """``record`` as it ended; only an ``active`` reservation ends (once), and it leaves the sweep's index."""
        values: dict[str, Any] = {
            ":status": record.status.value,
            ":active": ReservationStatus.ACTIVE.value,
            ":captured": record.captured,
            ":released": record.released,
            ":expired": record.expired,
            ":ended": it.iso(record.ended_at) if record.ended_at else None,
            ":capture_allocations": _raw_allocations(record.capture_allocations),
        }
        sets = (
            "#status = :status, captured = :captured, released = :released, expired = :expired, "
            "ended_at = :ended, capture_allocations = :capture_allocations"
        )
        if record.available_after is not None:
            values[":available"] = record.available_after
            sets += ", available_after = :available"
        return {
            "Update": {
                "TableName": self._table,
                "Key": reservation_key(record.reservation_id),
                "UpdateExpression": f"SET {sets} REMOVE expiry_shard, expiry_key",
                "ConditionExpression": "#status = :active",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": it.to_dynamo(values),
            }
        }

    def extend_action(self, reservation_id: str, expires_at: datetime) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._table,
                "Key": reservation_key(reservation_id),
                "UpdateExpression": "SET expires_at = :at, expiry_key = :key",
                "ConditionExpression": "#status = :active",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": it.to_dynamo(
                    {
                        ":at": it.iso(expires_at),
                        ":key": it.expiry_sort_key(expires_at, reservation_id),
                        ":active": ReservationStatus.ACTIVE.value,
                    }
                ),
            }
        }
