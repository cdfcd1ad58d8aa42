"""An account with many live grants, written straight to the table (tests and ``make bench``).

Reaching thousands of live grants through the ledger takes one transaction each; to study the account item
at that size, its state item is written directly, with the grant record of the first grant in spend order
only (the one a debit depletes first closes its record). Nothing else of the ledger exists for these
grants: no entries, no money records. Use it on a table of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from credits_ledger.dal import items as it
from credits_ledger.domain.models import AccountState, CostBasis, Grant, LiveGrant, Source

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
    first = grants[0]
    record = Grant(
        grant_id=first.grant_id,
        account_id=account_id,
        amount=first.remaining,
        category=first.category,
        priority=first.priority,
        effective_at=first.effective_at,
        expires_at=first.expires_at,
        source=source,
        cost_basis=CostBasis(),
        created_at=created_at,
        remaining=first.remaining,
    )
    client.put_item(TableName=table, Item=it.to_dynamo(it.grant_to_item(record)))
