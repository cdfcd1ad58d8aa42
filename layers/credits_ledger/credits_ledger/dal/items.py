"""DynamoDB item layouts of the account aggregate and their explicit mapping to domain models.

Keys (one table, see docs/data-model.md):
  account state   pk=ACCOUNT#<account>  sk=STATE
  grant           pk=GRANT#<grant id>   sk=GRANT   (GSIs: GrantsByAccount, ExpiringGrants)
  ledger entry    pk=ENTRY#<entry key>  sk=ENTRY   (GSI LedgerByAccount; the key is the idempotency key)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from credits_ledger.dal.live_grants import (
    HEAD_SIZE,
    Layout,
    StoredGrants,
    TailSummary,
    live_fields,
    unloaded_part,
)
from credits_ledger.domain.models import (
    AccountState,
    Allocation,
    Category,
    CostBasis,
    EntryType,
    Grant,
    GrantStatus,
    LedgerEntry,
    LiveGrant,
    LiveReservation,
    Source,
)
from credits_ledger.domain.spend import order_key

# Items store times as the domain spells them; re-exported as the codec the data-access modules use (it.iso).
from credits_ledger.domain.times import epoch_us, from_epoch_us
from credits_ledger.domain.times import iso as iso
from credits_ledger.domain.times import parse_iso as parse_iso

STATE_SK = "STATE"
GRANT_SK = "GRANT"
ENTRY_SK = "ENTRY"
EXPIRY_SHARD = "EXPIRY"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

Item = dict[str, Any]


def to_dynamo(item: Item) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in item.items() if v is not None}


def from_dynamo(item: dict[str, Any]) -> Item:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def account_key(account_id: str) -> dict[str, Any]:
    return to_dynamo({"pk": f"ACCOUNT#{account_id}", "sk": STATE_SK})


def grant_key(grant_id: str) -> dict[str, Any]:
    return to_dynamo({"pk": f"GRANT#{grant_id}", "sk": GRANT_SK})


def entry_key(key: str) -> dict[str, Any]:
    return to_dynamo({"pk": f"ENTRY#{key}", "sk": ENTRY_SK})


# The live-grant map is on the hot path of every debit: short attribute names keep the account item under
# 1 KB for ~10 live grants, i.e. 2 write units per transactional write.
def state_to_item(state: AccountState, layout: Layout | None = None) -> Item:
    """The account item of ``state``: all its grants, or, with a ``layout`` (dal/live_grants.py), the head
    grants it places on the item and the summary of the tail it keeps apart."""
    grants: dict[str, Any] = {}
    for grant in (layout.head if layout is not None else state.grants).values():
        live = live_fields(grant)
        if grant.held:
            live["h"] = True
        if layout is not None and grant.grant_id in layout.stale_copies:
            live["t"] = True  # an inert LIVE# copy of it sorts before the tail's boundary
        grants[grant.grant_id] = live
    item: Item = {
        "pk": f"ACCOUNT#{state.account_id}",
        "sk": STATE_SK,
        "account_id": state.account_id,
        "version": state.version,
        "balance": state.ledger_balance,
        "grants": grants,
    }
    if state.reservations:
        # open reservations: expiry instant and what each holds per grant, in capture order
        item["reservations"] = {
            r.reservation_id: {
                "x": epoch_us(r.expires_at),
                "a": [{"g": a.grant_id, "a": a.amount} for a in r.allocations],
            }
            for r in state.reservations.values()
        }
    if state.overage_month is not None:  # only accounts that ever went into overage carry these
        item["overage_month"] = state.overage_month
        item["overage_used"] = state.overage_used
    if state.queue_busy_until is not None:  # only accounts whose debit queue was ever busy
        item["queue_busy_until"] = epoch_us(state.queue_busy_until)
    if layout is not None and layout.tail is not None:  # only accounts with more grants than the head holds
        item["tail"] = layout.tail.to_item()
    return item


def state_from_item(account_id: str, item: Item | None, head_size: int = HEAD_SIZE) -> AccountState:
    """The state the account item alone gives: its head grants, and its tail as grants not loaded (a
    promise that holds until the tail's first expiry may have come: ``GrantsNotLoaded.spendable_until``)."""
    if item is None:
        return AccountState(account_id=account_id, storage=StoredGrants(head_size=head_size))
    grants = {
        grant_id: LiveGrant(
            grant_id=grant_id,
            remaining=live["r"],
            category=Category(live["c"]),
            priority=int(live["p"]),
            effective_at=from_epoch_us(live["e"]),
            expires_at=from_epoch_us(live["x"]) if "x" in live else None,
            held=bool(live.get("h", False)),
        )
        for grant_id, live in item.get("grants", {}).items()
    }
    reservations = {
        reservation_id: LiveReservation(
            reservation_id=reservation_id,
            expires_at=from_epoch_us(live["x"]),
            allocations=tuple(Allocation(a["g"], a["a"]) for a in live.get("a", [])),
        )
        for reservation_id, live in item.get("reservations", {}).items()
    }
    tail = TailSummary.from_item(item["tail"]) if "tail" in item else None
    stale = {
        grant_id: order_key(grants[grant_id])
        for grant_id, live in item.get("grants", {}).items()
        if live.get("t")
    }
    storage = StoredGrants(tail=tail, stale_copies=stale, head_size=head_size)
    unloaded = unloaded_part(tail, {}, tail.boundary if tail else None, tail.expires_from if tail else None)
    return AccountState(
        unloaded=unloaded,
        storage=storage,
        account_id=account_id,
        version=int(item["version"]),
        ledger_balance=item["balance"],
        grants=grants,
        reservations=reservations,
        overage_month=item.get("overage_month"),
        overage_used=item.get("overage_used", Decimal(0)),
        queue_busy_until=from_epoch_us(item["queue_busy_until"]) if "queue_busy_until" in item else None,
    )


def expiry_sort_key(expires_at: datetime, grant_id: str) -> str:
    return f"{epoch_us(expires_at):017d}#{grant_id}"


def grant_to_item(grant: Grant) -> Item:
    item: Item = {
        "pk": f"GRANT#{grant.grant_id}",
        "sk": GRANT_SK,
        "grant_id": grant.grant_id,
        "account_id": grant.account_id,
        "amount": grant.amount,
        "remaining": grant.remaining,
        "category": grant.category.value,
        "priority": grant.priority,
        "effective_at": iso(grant.effective_at),
        "expires_at": iso(grant.expires_at) if grant.expires_at else None,
        "status": grant.status.value,
        "source_type": grant.source.type,
        "source_id": grant.source.id,
        "cost_amount": grant.cost_basis.amount,
        "cost_currency": grant.cost_basis.currency,
        "created_at": iso(grant.created_at),
        "funding_key": grant.funding_key,
        "reason": grant.reason,
        "metadata": grant.metadata or None,
    }
    if grant.expires_at is not None and grant.status not in (GrantStatus.EXPIRED, GrantStatus.VOIDED):
        # Sparse index: only grants that may still expire are in ExpiringGrants, so the nightly job reads
        # what is due and never the rest of the table.
        item["expiry_shard"] = EXPIRY_SHARD
        item["expiry_key"] = expiry_sort_key(grant.expires_at, grant.grant_id)
    return item


def grant_from_item(item: Item) -> Grant:
    return Grant(
        grant_id=item["grant_id"],
        account_id=item["account_id"],
        amount=item["amount"],
        remaining=item["remaining"],
        category=Category(item["category"]),
        priority=int(item["priority"]),
        effective_at=parse_iso(item["effective_at"]),
        expires_at=parse_iso(item["expires_at"]) if item.get("expires_at") else None,
        status=GrantStatus(item["status"]),
        source=Source(type=item["source_type"], id=item.get("source_id")),
        cost_basis=CostBasis(amount=item["cost_amount"], currency=item.get("cost_currency")),
        created_at=parse_iso(item["created_at"]),
        closed_at=parse_iso(item["closed_at"]) if item.get("closed_at") else None,
        funding_key=item.get("funding_key"),
        reason=item.get("reason"),
        metadata=dict(item.get("metadata") or {}),
    )


def _allocation_to_item(allocation: Allocation) -> Item:
    item: Item = {"g": allocation.grant_id, "a": allocation.amount}
    if allocation.remaining_after is not None:
        item["r"] = allocation.remaining_after
    return item


def entry_to_item(entry: LedgerEntry) -> Item:
    return {
        "pk": f"ENTRY#{entry.entry_key}",
        "sk": ENTRY_SK,
        "entry_key": entry.entry_key,
        "account_id": entry.account_id,
        "seq": entry.seq,
        "type": entry.type.value,
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "allocations": [_allocation_to_item(a) for a in entry.allocations],
        "reference": entry.reference,
        "created_at": iso(entry.created_at),
        "fingerprint": entry.fingerprint or None,
        "metadata": entry.metadata or None,
    }


def entry_from_item(item: Item) -> LedgerEntry:
    return LedgerEntry(
        entry_key=item["entry_key"],
        account_id=item["account_id"],
        seq=int(item["seq"]),
        type=EntryType(item["type"]),
        amount=item["amount"],
        balance_after=item["balance_after"],
        allocations=tuple(Allocation(a["g"], a["a"], a.get("r")) for a in item.get("allocations", [])),
        reference=item.get("reference"),
        created_at=parse_iso(item["created_at"]),
        fingerprint=item.get("fingerprint", ""),
        metadata=dict(item.get("metadata") or {}),
    )
