"""Helpers of the concurrency tests: a settable clock, per-thread clients and a full audit of one account.

The audit reads what DynamoDB holds for an account (every ledger entry through the LedgerByAccount index,
cross-checked against the base table, the account item with a consistent read, every grant item) and
replays the entries in ``seq`` order from nothing. Replaying re-derives, independently of the code under
test, the balance after every entry and what remained of every grant, and re-decides every debit with the
domain's spend order on the exact state that preceded it. Any overdraft, lost update, gap or doubled entry
shows up as a mismatch.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import boto3

from credits_dev.local.dynamodb_local import DUMMY_CREDENTIALS, REGION
from credits_ledger.aws import CLIENT_CONFIG
from credits_ledger.dal import items as it
from credits_ledger.dal.accounts import LEDGER_INDEX, AccountRepository
from credits_ledger.domain import spend
from credits_ledger.domain.models import (
    AccountState,
    EntryType,
    Grant,
    GrantStatus,
    LedgerEntry,
    LiveGrant,
)
from tests.support.live_grants import layout_problems

ZERO = Decimal(0)


class ManualClock:
    """A thread-safe clock the test moves forward; ``Ledger(clock=...)`` calls it for "now"."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            if moment < self._now:
                raise ValueError("the clock only moves forward")
            self._now = moment


def new_client(endpoint_url: str) -> Any:
    """A boto3 client with its own session (sessions are not thread-safe), configured like production."""
    session = boto3.session.Session()
    return session.client(
        "dynamodb", endpoint_url=endpoint_url, region_name=REGION, config=CLIENT_CONFIG, **DUMMY_CREDENTIALS
    )


class Milestones:
    """Counts finished attempts across threads and sets an event when a threshold is passed."""

    def __init__(self, *thresholds: int) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self.events = {t: threading.Event() for t in thresholds}

    def tick(self) -> None:
        with self._lock:
            self._count += 1
            count = self._count
        for threshold, event in self.events.items():
            if count >= threshold:
                event.set()

    def release_all(self) -> None:
        for event in self.events.values():
            event.set()

    def wait(self, threshold: int, timeout: float = 120.0) -> bool:
        return self.events[threshold].wait(timeout)


# ---------------------------------------------------------------------------------------------------------
def _all_items(client: Any, operation: str, **request: Any) -> list[dict[str, Any]]:
    """Every item a Query or a Scan (``operation``) returns, all pages (boto3's paginator)."""
    pages = client.get_paginator(operation).paginate(**request)
    return [it.from_dynamo(raw) for page in pages for raw in page.get("Items", [])]


def _scan_account(client: Any, table: str, account_id: str, sort_key: str) -> list[dict[str, Any]]:
    """The account's items of one kind (``sk``) in the base table: a consistent Scan, all pages."""
    return _all_items(
        client,
        "scan",
        TableName=table,
        FilterExpression="sk = :k AND account_id = :a",
        ExpressionAttributeValues={":k": {"S": sort_key}, ":a": {"S": account_id}},
        ConsistentRead=True,
    )


def ledger_entries(client: Any, table: str, account_id: str) -> list[LedgerEntry]:
    """Every ledger entry of the account, oldest first, read through the LedgerByAccount index (all pages)."""
    raw = _all_items(
        client,
        "query",
        TableName=table,
        IndexName=LEDGER_INDEX,
        KeyConditionExpression="account_id = :a",
        ExpressionAttributeValues={":a": {"S": account_id}},
        ScanIndexForward=True,
        Limit=250,  # several pages on purpose: pagination is part of what is checked
    )
    return [it.entry_from_item(item) for item in raw]


def base_table_entry_keys(client: Any, table: str, account_id: str) -> list[str]:
    """Entry keys of the account found in the base table (Scan): the index must show exactly these."""
    return [item["entry_key"] for item in _scan_account(client, table, account_id, it.ENTRY_SK)]


def grant_records(client: Any, table: str, account_id: str) -> dict[str, Grant]:
    """Grant items of the account (base table, consistent)."""
    grants = [it.grant_from_item(item) for item in _scan_account(client, table, account_id, it.GRANT_SK)]
    return {g.grant_id: g for g in grants}


# ---------------------------------------------------------------------------------------------------------
@dataclass
class GrantTotals:
    """What happened to one grant according to the ledger."""

    granted: Decimal = ZERO
    spent: Decimal = ZERO  # debits and negative adjustments
    expired: Decimal = ZERO
    voided: Decimal = ZERO
    revoked: Decimal = ZERO
    expire_entries: int = 0
    void_entries: int = 0
    closed_as: GrantStatus | None = None
    closed_at_seq: int | None = None

    @property
    def taken(self) -> Decimal:
        return self.spent + self.expired + self.voided + self.revoked


@dataclass
class Audit:
    entries: list[LedgerEntry]
    state: AccountState
    grants: dict[str, Grant]
    totals: dict[str, GrantTotals] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def by_key(self) -> dict[str, LedgerEntry]:
        return {e.entry_key: e for e in self.entries}

    def of_type(self, entry_type: EntryType) -> list[LedgerEntry]:
        return [e for e in self.entries if e.type is entry_type]


def audit_account(client: Any, table: str, account_id: str) -> Audit:
    """Read everything of ``account_id`` and check the ledger invariants; ``Audit.problems`` lists violations."""
    entries = ledger_entries(client, table, account_id)
    state = AccountRepository(client, table).state(account_id, consistent=True, all_grants=True)
    grants = grant_records(client, table, account_id)
    audit = Audit(entries=entries, state=state, grants=grants)
    problems = audit.problems
    # -- the grants kept apart from the account item are where and as the item says (dal/live_grants.py) -----
    if entries:
        problems.extend(layout_problems(client, table, account_id, max(e.created_at for e in entries)))

    # -- the index holds every entry exactly once, and only entries the base table has -----------------------
    keys = [e.entry_key for e in entries]
    doubled = [k for k, n in Counter(keys).items() if n > 1]
    if doubled:
        problems.append(f"entry keys listed twice by the index: {doubled[:5]}")
    base_keys = base_table_entry_keys(client, table, account_id)
    if sorted(base_keys) != sorted(keys):
        missing = set(base_keys) - set(keys)
        extra = set(keys) - set(base_keys)
        problems.append(f"index and base table disagree: {len(missing)} missing, {len(extra)} extra")

    # -- seq numbers 1..N, no gap, no duplicate; the account version counts them ----------------------------
    seqs = [e.seq for e in entries]
    if seqs != list(range(1, len(entries) + 1)):
        dup = [s for s, n in Counter(seqs).items() if n > 1]
        gaps = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
        problems.append(f"seq not 1..N: duplicates {dup[:5]}, gaps {gaps[:5]}")
    if state.version != len(entries):
        problems.append(f"account version {state.version} != {len(entries)} entries")

    # -- replay from nothing ---------------------------------------------------------------------------------
    live: dict[str, LiveGrant] = {}
    totals: dict[str, GrantTotals] = defaultdict(GrantTotals)
    balance = ZERO
    for entry in sorted(entries, key=lambda e: e.seq):
        balance += entry.amount
        if entry.balance_after != balance:
            problems.append(f"seq {entry.seq}: balance_after {entry.balance_after} != running sum {balance}")
        if balance < 0:
            problems.append(f"seq {entry.seq}: OVERDRAFT, balance {balance}")
        allocated = sum((a.amount for a in entry.allocations), ZERO)
        takes = entry.type in (EntryType.DEBIT, EntryType.EXPIRE, EntryType.VOID, EntryType.REVOKE) or (
            entry.type is EntryType.ADJUSTMENT and entry.amount < 0
        )
        if takes and allocated != -entry.amount:
            problems.append(f"seq {entry.seq}: allocations {allocated} != {-entry.amount}")
        _replay_entry(entry, live, totals, grants, problems)
    audit.totals = dict(totals)

    # -- what the account item says == what the ledger says == what the live grants hold ---------------------
    live_sum = sum((g.remaining for g in state.grants.values()), ZERO)
    if state.ledger_balance != balance:
        problems.append(f"account balance {state.ledger_balance} != ledger sum {balance}")
    if live_sum != balance:
        problems.append(f"sum of live grant remaining {live_sum} != ledger sum {balance}")
    replayed_live = {gid: g.remaining for gid, g in live.items()}
    stored_live = {gid: g.remaining for gid, g in state.grants.items()}
    if replayed_live != stored_live:
        problems.append(f"live grants on the account {stored_live} != replayed {replayed_live}")
    held_stored = {gid for gid, g in state.grants.items() if g.held}
    held_replayed = {gid for gid, g in live.items() if g.held}
    if held_stored != held_replayed:
        problems.append(f"held grants {held_stored} != replayed {held_replayed}")

    # -- per grant: never more taken than granted; closed grants are closed for the reason the ledger says ---
    for grant_id, total in totals.items():
        record = grants.get(grant_id)
        if record is None:
            problems.append(f"grant {grant_id} has entries but no grant item")
            continue
        if total.granted != record.amount:
            problems.append(f"grant {grant_id}: granted {total.granted} != amount {record.amount}")
        if total.taken > record.amount:
            problems.append(f"grant {grant_id}: {total.taken} taken out of {record.amount}")
        if total.expire_entries > 1 or total.void_entries > 1:
            problems.append(
                f"grant {grant_id}: {total.expire_entries} expire / {total.void_entries} void entries"
            )
        remaining = record.amount - total.taken
        if grant_id in live:
            if record.status in (GrantStatus.DEPLETED, GrantStatus.EXPIRED, GrantStatus.VOIDED):
                problems.append(f"grant {grant_id} is live in the ledger but its item says {record.status}")
            if live[grant_id].remaining != remaining:
                problems.append(f"grant {grant_id}: live remaining {live[grant_id].remaining} != {remaining}")
        else:
            if total.closed_as is None:
                problems.append(f"grant {grant_id} left the live set without being closed")
            elif record.status is not total.closed_as:
                problems.append(
                    f"grant {grant_id}: item says {record.status}, ledger closed it {total.closed_as}"
                )
            if total.closed_as is GrantStatus.DEPLETED and remaining != 0:
                problems.append(f"grant {grant_id} depleted with {remaining} left")
            if total.closed_as in (GrantStatus.EXPIRED, GrantStatus.VOIDED) and remaining != 0:
                problems.append(f"grant {grant_id} {total.closed_as} but {remaining} unaccounted for")
    return audit


def _replay_entry(
    entry: LedgerEntry,
    live: dict[str, LiveGrant],
    totals: dict[str, GrantTotals],
    grants: dict[str, Grant],
    problems: list[str],
) -> None:
    seq = entry.seq
    if entry.type is EntryType.GRANT or (entry.type is EntryType.ADJUSTMENT and entry.amount > 0):
        for allocation in entry.allocations:
            record = grants.get(allocation.grant_id)
            if record is None:
                problems.append(f"seq {seq}: grant {allocation.grant_id} has no grant item")
                continue
            live[allocation.grant_id] = replace(record.live(), remaining=allocation.amount)
            totals[allocation.grant_id].granted += allocation.amount
        return

    if entry.type in (EntryType.DEBIT, EntryType.ADJUSTMENT):
        # Re-decide the debit on the state that preceded it: same grants, same amounts, same order.
        try:
            expected = spend.allocate(entry.account_id, live.values(), -entry.amount, entry.created_at)
        except Exception as exc:  # InsufficientCredits: the debit should have been refused
            problems.append(f"seq {seq}: OVERDRAFT, debit of {-entry.amount} not coverable: {exc}")
            expected = None
        if expected is not None and list(expected) != list(entry.allocations):
            problems.append(f"seq {seq}: allocations {entry.allocations} != spend order {expected}")
        for allocation in entry.allocations:
            grant = live.get(allocation.grant_id)
            if grant is None:
                problems.append(f"seq {seq}: debit spends grant {allocation.grant_id}, which is not live")
                continue
            if not grant.is_spendable(entry.created_at):
                problems.append(
                    f"seq {seq}: debit spends {allocation.grant_id}, not spendable at that instant"
                )
            left = grant.remaining - allocation.amount
            totals[allocation.grant_id].spent += allocation.amount
            if left < 0:
                problems.append(f"seq {seq}: OVERDRAFT of grant {allocation.grant_id} ({left})")
            if left <= 0:
                del live[allocation.grant_id]
                totals[allocation.grant_id].closed_as = GrantStatus.DEPLETED
                totals[allocation.grant_id].closed_at_seq = seq
            else:
                live[allocation.grant_id] = replace(grant, remaining=left)
        return

    closing = {
        EntryType.EXPIRE: GrantStatus.EXPIRED,
        EntryType.VOID: GrantStatus.VOIDED,
    }
    if entry.type in closing or entry.type is EntryType.REVOKE:
        for allocation in entry.allocations:
            grant = live.get(allocation.grant_id)
            total = totals[allocation.grant_id]
            if grant is None:
                problems.append(f"seq {seq}: {entry.type} of grant {allocation.grant_id}, which is not live")
                continue
            if entry.type is EntryType.EXPIRE:
                total.expired += allocation.amount
                total.expire_entries += 1
                if not grant.is_expired(entry.created_at):
                    problems.append(f"seq {seq}: grant {allocation.grant_id} expired before its expires_at")
            elif entry.type is EntryType.VOID:
                total.voided += allocation.amount
                total.void_entries += 1
            else:
                total.revoked += allocation.amount
            left = grant.remaining - allocation.amount
            if left < 0:
                problems.append(f"seq {seq}: {entry.type} takes more than grant {allocation.grant_id} holds")
            if entry.type in closing and left != 0:
                problems.append(f"seq {seq}: {entry.type} of grant {allocation.grant_id} left {left}")
            if entry.type in closing or left <= 0:
                del live[allocation.grant_id]
                total.closed_as = closing.get(entry.type, GrantStatus.VOIDED)
                total.closed_at_seq = seq
            else:
                live[allocation.grant_id] = replace(grant, remaining=left)
        return

    if entry.type in (EntryType.HOLD, EntryType.RELEASE):
        for allocation in entry.allocations:
            grant = live.get(allocation.grant_id)
            if grant is None:
                problems.append(f"seq {seq}: {entry.type} of grant {allocation.grant_id}, which is not live")
                continue
            live[allocation.grant_id] = replace(grant, held=entry.type is EntryType.HOLD)
        return

    problems.append(f"seq {seq}: unexpected entry type {entry.type}")
