"""An account with 20,000 live grants on DynamoDB Local (issue 11): debits, reads and expiry stay exact, and
what a debit writes does not grow with the number of live grants (dal/live_grants.py).

The account is seeded with what 20,000 grant transactions would have left (credits_dev.seed.seed_ledger:
the account item, the grants kept apart from it, every grant record and entry), then used through the
Ledger. Each grant holds 1 credit and expires a minute after the previous one, so the spend order is the
expiry order and any grant spent out of turn shows in the allocations.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_dev.seed import seed_ledger
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import Category, LiveGrant
from credits_ledger.domain.spend import order_key
from credits_ledger.ledger import DebitRequest, Ledger
from tests.support.ledger import FakeClock, assert_books_balance
from tests.support.live_grants import layout_problems
from tools.bench import item_size

pytestmark = [pytest.mark.dynamodb_local, pytest.mark.slow]

MANY, FEW = 20_000, 10
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _grants(count: int, prefix: str) -> list[LiveGrant]:
    return [
        LiveGrant(
            grant_id=f"{prefix}{index:06d}",
            remaining=Decimal(1),
            category=Category.PROMOTIONAL if index % 3 == 0 else Category.PAID,
            priority=50,
            effective_at=T0 - timedelta(days=1),
            expires_at=T0 + timedelta(hours=1, minutes=index),
        )
        for index in range(count)
    ]


def _write_units(client: Any, ledger: Ledger, account: str, request: DebitRequest) -> tuple[int, int]:
    """(write units by AWS's rules, items) of the one transaction the debit sends: 2 units per KB of each
    item it writes (the larger of old and new image for the account item)."""
    sent: list[dict[str, Any]] = []
    before = client.get_item(
        TableName=ledger.repository.table, Key={"pk": {"S": f"ACCOUNT#{account}"}, "sk": {"S": "STATE"}}
    )["Item"]

    def keep(params: Any, **_: Any) -> None:
        sent.extend(params["TransactItems"])

    client.meta.events.register("provide-client-params.dynamodb.TransactWriteItems", keep)
    try:
        ledger.debit(account, request)
    finally:
        client.meta.events.unregister("provide-client-params.dynamodb.TransactWriteItems", keep)
    units = 0
    for action in sent:
        ((kind, body),) = action.items()
        size = item_size(body["Item"]) if kind == "Put" else 100  # updates/deletes here: sub-KB items
        if kind == "Put" and body["Item"]["sk"]["S"] == "STATE":
            size = max(size, item_size(before))
        units += 2 * max(1, math.ceil(size / 1024))
    return units, len(sent)


def test_an_account_with_20000_live_grants_debits_reads_and_expires_exactly(local_tables: Any) -> None:
    client, table = local_tables.client, local_tables["CreditsTable"]
    clock = FakeClock(T0)
    many, few = _grants(MANY, "gm_"), _grants(FEW, "gf_")
    seed_ledger(client, table, "cus_many", many, T0 - timedelta(days=1))
    seed_ledger(client, table, "cus_few", few, T0 - timedelta(days=1))
    ledger = Ledger(AccountRepository(client, table), clock=clock)
    spend_order = [g.grant_id for g in sorted(many, key=order_key)]

    # The balance counts every grant, and knows which expires next
    balance = ledger.balance("cus_many")
    assert (balance.available, balance.next_expiry_at, balance.next_expiry_amount) == (
        MANY,
        T0 + timedelta(hours=1),
        1,
    )
    assert balance.promotional == len([g for g in many if g.category is Category.PROMOTIONAL])

    # A debit within the item's grants, and one reaching far into the grants kept apart, spend in order
    first = ledger.debit("cus_many", DebitRequest("use:1", Decimal(3), fingerprint="3")).entry
    assert [a.grant_id for a in first.allocations] == spend_order[:3]
    deep = ledger.debit("cus_many", DebitRequest("use:2", Decimal("45.5"), fingerprint="45.5")).entry
    assert [a.grant_id for a in deep.allocations] == spend_order[3:49]
    assert deep.metadata["available_after"] == str(MANY - Decimal("48.5"))

    # What a debit writes is what it writes on an account of 10 grants (once the spent grants are closed:
    # the next change of either account closes them, 30 at a time)
    for account in ("cus_many", "cus_few"):
        ledger.debit(account, DebitRequest(f"use:{account}:close", Decimal("0.1"), fingerprint="0.1"))
    many_units, many_items = _write_units(
        client, ledger, "cus_many", DebitRequest("use:m", Decimal("0.1"), "0.1")
    )
    few_units, few_items = _write_units(
        client, ledger, "cus_few", DebitRequest("use:f", Decimal("0.1"), "0.1")
    )
    assert many_units <= 2 * few_units, (many_units, few_units)
    assert (many_items, few_items) == (2, 2)

    # Grants past their expiry stop counting at once; the job then expires each for what one costs
    clock.advance(timedelta(hours=1, minutes=99, seconds=30))  # the first 100 have expired
    assert ledger.balance("cus_many").available == MANY - 100
    with pytest.raises(InsufficientCredits) as refused:
        ledger.debit("cus_many", DebitRequest("use:all", Decimal(MANY), fingerprint="all"))
    assert refused.value.available == MANY - 100
    expired = 0
    for grant_id in spend_order[:100]:
        outcome = ledger.expire(grant_id, clock.now)
        if outcome is not None:
            expired += 1
            assert -1 <= outcome.entry.amount < 0
    assert expired == 100 - 48  # the first 48 were spent whole, the 49th expires what is left of it
    assert ledger.balance("cus_many").available == MANY - 100

    # The books hold, and the grants apart from the item are where and as the item says
    assert assert_books_balance(ledger, "cus_many") == MANY - 100
    assert layout_problems(client, table, "cus_many", clock.now) == []
