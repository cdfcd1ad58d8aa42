"""An account with many live grants, written straight to the table (tests and ``make bench``).

Reaching thousands of live grants through the ledger takes one transaction each. ``seed_ledger`` writes
what those transactions would have left: the account item, the grants kept apart from it, every grant
record and entry. ``seed_account`` writes an account item holding every grant itself (the layout before
grants moved out of it, or grants that must stay on it) with the grant record of the first grant in spend
order only; nothing else of the ledger exists for those grants. Use either on a table of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from credits_ledger.dal import items as it
from credits_ledger.dal.live_grants import HEAD_SIZE, StoredGrants, lay_out, live_item
from credits_ledger.domain.models import (
    AccountState,
    Allocation,
    CostBasis,
    EntryType,
    Grant,
    LedgerEntry,
    LiveGrant,
    Source,
)

SEED_SOURCE = Source("admin", "seed")


def account_holding(account_id: str, grants: Sequence[LiveGrant]) -> AccountState:
    """The state of an account whose ledger is exactly ``grants`` (version = their count)."""
    return AccountState(
        account_id=account_id,
        version=len(grants),
        ledger_balance=sum((g.remaining for g in grants), Decimal(0)),
        grants={g.grant_id: g for g in grants},
    )


def account_item(account_id: str, grants: Sequence[LiveGrant]) -> dict[str, Any]:
    """That account's item as DynamoDB stores it (its size decides whether DynamoDB takes it)."""
    return it.to_dynamo(it.state_to_item(account_holding(account_id, grants)))


def seed_account(
    client: Any,
    table: str,
    account_id: str,
    grants: Sequence[LiveGrant],
    created_at: datetime,
    source: Source = SEED_SOURCE,
) -> None:
    """Write the account item holding ``grants`` and the grant record of ``grants[0]``."""
    client.put_item(TableName=table, Item=account_item(account_id, grants))
    record = _record(account_id, grants[0], created_at, source)
    client.put_item(TableName=table, Item=it.to_dynamo(it.grant_to_item(record)))


def _record(account_id: str, grant: LiveGrant, created_at: datetime, source: Source) -> Grant:
    """The grant record of a live grant that nothing has spent yet."""
    return Grant(
        grant_id=grant.grant_id,
        account_id=account_id,
        amount=grant.remaining,
        category=grant.category,
        priority=grant.priority,
        effective_at=grant.effective_at,
        expires_at=grant.expires_at,
        source=source,
        cost_basis=CostBasis(),
        created_at=created_at,
        remaining=grant.remaining,
    )


def seed_ledger(
    client: Any,
    table: str,
    account_id: str,
    grants: Sequence[LiveGrant],
    created_at: datetime,
    *,
    head_size: int = HEAD_SIZE,
    source: Source = SEED_SOURCE,
    threads: int = 8,
) -> list[Grant]:
    """An account whose ledger is exactly ``grants`` (one ``grant`` entry each), written as the ledger would
    have left it: the account item, the grants kept apart from it (dal/live_grants.py), every grant record
    and every entry. For accounts of thousands of grants (tests at scale, ``make bench``), where as many
    Ledger.grant calls would take minutes. Returns the grant records."""
    records: list[Grant] = []
    entries: list[LedgerEntry] = []
    balance = Decimal(0)
    for seq, grant in enumerate(grants, start=1):
        balance += grant.remaining
        records.append(_record(account_id, grant, created_at, source))
        entries.append(
            LedgerEntry(
                entry_key=f"seed:{account_id}:{seq}",
                account_id=account_id,
                seq=seq,
                type=EntryType.GRANT,
                amount=grant.remaining,
                balance_after=balance,
                allocations=(Allocation(grant.grant_id, grant.remaining),),
                reference=None,
                created_at=created_at,
            )
        )
    state = replace(account_holding(account_id, grants), storage=StoredGrants(head_size=head_size))
    # one write placing every grant: no limit on how many leave the item (nothing here is a transaction)
    layout = lay_out(state, created_at, max_moves_out=len(grants))
    items = [it.state_to_item(state, layout)]
    items += [live_item(account_id, grant) for grant in layout.puts]
    items += [it.grant_to_item(record) for record in records]
    items += [it.entry_to_item(entry) for entry in entries]
    _write_all(client, table, items, threads)
    return records


def _write_all(client: Any, table: str, items: list[dict[str, Any]], threads: int) -> None:
    batches = [items[start : start + 25] for start in range(0, len(items), 25)]

    def write(batch: list[dict[str, Any]]) -> None:
        pending = {table: [{"PutRequest": {"Item": it.to_dynamo(item)}} for item in batch]}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, batches))
