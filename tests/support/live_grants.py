"""The layout of an account's live grants (dal/live_grants.py), read back from the table and checked against
every invariant the module states. Independent of the repository's reads: raw GetItem and Query only."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from credits_ledger.dal import items as it
from credits_ledger.dal import live_grants as lg
from credits_ledger.domain.models import Category
from credits_ledger.domain.spend import order_key


def layout_problems(client: Any, table: str, account_id: str, now: Any) -> list[str]:
    """Every way the stored head, tail items and tail summary of ``account_id`` break the invariants."""
    pk = f"ACCOUNT#{account_id}"
    raw = client.get_item(TableName=table, Key={"pk": {"S": pk}, "sk": {"S": "STATE"}}, ConsistentRead=True)
    if "Item" not in raw:
        return []
    item = it.from_dynamo(raw["Item"])
    state = it.state_from_item(account_id, item)
    copies: dict[str, Any] = {}
    query: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :live)",
        "ExpressionAttributeValues": {":pk": {"S": pk}, ":live": {"S": lg.LIVE_PREFIX}},
        "ConsistentRead": True,
    }
    while True:
        page = client.query(**query)
        for raw_item in page["Items"]:
            live = it.from_dynamo(raw_item)
            copies[str(live["sk"]).removeprefix(lg.LIVE_PREFIX)] = lg.live_from_item(live)
        if "LastEvaluatedKey" not in page:
            break
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    problems: list[str] = []
    for key, grant in copies.items():
        if order_key(grant) != key:
            problems.append(f"LIVE# item {key} holds grant {grant.grant_id} whose key is {order_key(grant)}")
    tail_summary = lg.TailSummary.from_item(item["tail"]) if "tail" in item else None
    boundary = tail_summary.boundary if tail_summary else None
    tail = {k: g for k, g in copies.items() if boundary is not None and k >= boundary}
    below = {k: g for k, g in copies.items() if boundary is None or k < boundary}
    flagged = {g for g, live in item.get("grants", {}).items() if live.get("t")}
    for key, grant in below.items():
        if grant.grant_id not in flagged or grant.grant_id not in state.grants:
            problems.append(f"LIVE# item {key} below the boundary is not a flagged head grant's copy")
    for grant_id in flagged:
        if grant_id not in {g.grant_id for g in below.values()}:
            problems.append(f"head grant {grant_id} is flagged but has no copy below the boundary")
    for grant_id in state.grants:
        if grant_id in {g.grant_id for g in tail.values()}:
            problems.append(f"grant {grant_id} is both in the head and in the tail")
    pinned = {a.grant_id for r in state.reservations.values() for a in r.allocations}
    for key, grant in tail.items():
        if not lg.settled(grant, now, pinned):
            problems.append(f"tail grant {grant.grant_id} ({key}) is not settled: spent, pending or pinned")
    if tail_summary is None:
        if tail:
            problems.append(f"{len(tail)} tail items but no tail summary")
        return problems
    expected = {
        "count": len(tail),
        "paid": sum((g.remaining for g in tail.values() if g.category is Category.PAID), Decimal(0)),
        "promotional": sum(
            (g.remaining for g in tail.values() if g.category is Category.PROMOTIONAL), Decimal(0)
        ),
    }
    stored = {"count": tail_summary.count, "paid": tail_summary.paid, "promotional": tail_summary.promotional}
    if stored != expected:
        problems.append(f"tail summary {stored} != its items {expected}")
    groups: dict[int, int] = {}
    for grant in tail.values():
        groups[grant.priority] = groups.get(grant.priority, 0) + 1
    if tail_summary.groups is not None and dict(tail_summary.groups) != groups:
        problems.append(f"tail groups {dict(tail_summary.groups)} != its items {groups}")
    expiries = [g.expires_at for g in tail.values() if g.expires_at is not None]
    if expiries and (tail_summary.expires_from is None or tail_summary.expires_from > min(expiries)):
        problems.append(
            f"tail expires_from {tail_summary.expires_from} is after its first expiry {min(expiries)}"
        )
    if not tail and tail_summary.count:
        problems.append("a tail summary without tail items")
    return problems
