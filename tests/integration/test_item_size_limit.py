"""An account item at DynamoDB's 400 KB item limit, on DynamoDB Local (issue 11, item 3).

Live grants no longer make an account item grow: past the first ones in spend order they are kept apart
(dal/live_grants.py). Grants that are not settled stay on the item, though: a grant that takes effect later
(pending), a held one, one a reservation pins. About 5,000 pending grants still fill it. There DynamoDB
cancels the transaction with ``ValidationError``: the ledger must name it (WriteRejected) after ONE send,
not take it for a version conflict and retry it 60 times.

The account is seeded by writing its state item directly: the largest set of pending grants whose item
still fits (by AWS's item size rules, checked against DynamoDB Local), so the test does not run 5,000 grant
transactions. Only the grant a debit spends first also gets its grant record.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_dev.seed import account_item, seed_account
from credits_ledger.domain.errors import WriteRejected
from credits_ledger.domain.models import Category, LiveGrant
from credits_ledger.ledger import DebitRequest, Ledger
from tests.support.ledger import T0, FakeClock, SleepRecorder, make_ledger, spec
from tools.bench import item_size

pytestmark = pytest.mark.slow  # DynamoDB Local takes seconds per 400 KB item

ACCT = "cus_many_grants"


def _live(index: int) -> LiveGrant:
    """A grant that takes effect tomorrow (it stays on the account item until then), but the first."""
    return LiveGrant(
        grant_id=f"gr_{index:012x}{index:014x}",  # the shape of ledger.new_id's ids (29 characters)
        remaining=Decimal(1),
        category=Category.PROMOTIONAL,
        priority=50,
        effective_at=T0 - timedelta(days=1) if index == 0 else T0 + timedelta(days=1),
        expires_at=T0 + timedelta(days=365) + timedelta(seconds=index),
    )


ITEM_LIMIT = 400 * 1024  # bytes, names and values (tools/bench.py: item_size follows AWS's sizing rules)


def _largest_that_fits(grants: list[LiveGrant]) -> int:
    sizes = [item_size(account_item(ACCT, grants[:n])) for n in (0, 1)]
    per_grant = sizes[1] - sizes[0]
    count = (ITEM_LIMIT - sizes[0]) // per_grant + 1
    while item_size(account_item(ACCT, grants[:count])) > ITEM_LIMIT:
        count -= 1
    return count


@pytest.fixture
def full_account(local_tables: Any) -> tuple[Ledger, SleepRecorder, int]:
    client, table = local_tables.client, local_tables["CreditsTable"]
    grants = [_live(i) for i in range(7_000)]
    count = _largest_that_fits(grants)
    # One more grant of this shape would not fit: DynamoDB Local agrees with the size rules
    with pytest.raises(client.exceptions.ClientError, match="Item size has exceeded"):
        client.put_item(TableName=table, Item=account_item(ACCT, grants[: count + 1]))
    # the grant spent first (soonest expiry) also gets its grant record: a debit that depletes it closes it
    seed_account(client, table, ACCT, grants[:count], created_at=grants[0].effective_at)
    sleeps = SleepRecorder()
    return make_ledger(client, table, FakeClock(), sleep=sleeps), sleeps, count


def test_a_grant_past_the_item_limit_is_rejected_once_and_writes_nothing(
    full_account: tuple[Ledger, SleepRecorder, int], local_tables: Any
) -> None:
    ledger, sleeps, live_grants = full_account
    assert 4_500 < live_grants < 6_000  # the wall the issue measured: ~78 bytes a grant
    sends: list[str] = []
    ledger.repository._client.meta.events.register(  # type: ignore[attr-defined]
        "before-send.dynamodb.TransactWriteItems", lambda **_: sends.append("twi")
    )
    before = ledger.repository.state(ACCT, consistent=True)
    # When one more grant would push the account item past 400 KB
    with pytest.raises(WriteRejected) as caught:
        one_more = spec(
            f"gr_{'f' * 26}",
            "1",
            category=Category.PROMOTIONAL,
            effective_at=T0 + timedelta(days=1),
            expires_at=T0 + timedelta(days=400),
        )  # the shape of the seeded grants (pending too): it grows the item by as much as each of them
        ledger.grant(ACCT, one_more, key="grant:one-too-many")
    # Then the rejection is named, sent once, never retried as a conflict
    assert "Item size has exceeded" in caught.value.detail  # DynamoDB Local: ValidationException; AWS: a
    # cancellation whose reason is ValidationError (both are WriteRejected, see test_failure_injection.py)
    assert sends == ["twi"] and sleeps.calls == []
    # and nothing changed
    after = ledger.repository.state(ACCT, consistent=True)
    assert after == before and len(after.grants) == live_grants
    assert ledger.repository.entry("grant:one-too-many") is None
    # A debit that does not grow the item still works at the limit
    outcome = ledger.debit(ACCT, DebitRequest("use:at-the-limit", Decimal(1), fingerprint="u"))
    assert outcome.entry.amount == Decimal(-1)
    assert ledger.repository.state(ACCT, consistent=True).ledger_balance == before.ledger_balance - 1
