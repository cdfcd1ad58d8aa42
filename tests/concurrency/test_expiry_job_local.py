"""The expiry job racing debits and a duplicate of itself on a real DynamoDB engine (DynamoDB Local).

Given three accounts, each with five grants due before the run's time and one that never expires, When four
threads debit the accounts (decided at an instant before the grants' expiry, so the debits compete with the
expiry for the very same grants) while two copies of the expiry job run at once, Then every credit of every
due grant is either spent or expired, never both and never twice; each due grant has at most one expire
entry; and each account's ledger sums to its balance and to its live grants.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest

from credits_ledger.aws import CLIENT_CONFIG
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.reminders import ReminderRepository
from credits_ledger.domain.errors import ConcurrencyConflict, InsufficientCredits
from credits_ledger.domain.models import EntryType, Source
from credits_ledger.domain.transitions import GrantSpec
from credits_ledger.jobs.expiry import ExpiryJob, ExpirySummary
from credits_ledger.jobs.scheduled import Deadline
from credits_ledger.ledger import DebitRequest, Ledger
from credits_ledger.pricing import parse_pricing
from credits_ledger.reservations import Reservations
from tests.support.bus import DiscardingBus

pytestmark = [pytest.mark.dynamodb_local, pytest.mark.slow]

D = Decimal
T0 = datetime(2030, 1, 1, tzinfo=UTC)
DEBIT_AT = T0 + timedelta(hours=12)  # before every expiry: debits may spend the due grants
RUN_AT = T0 + timedelta(days=2)  # after every expiry
ACCOUNTS = ("cus_r0", "cus_r1", "cus_r2")
DUE_PER_ACCOUNT = 5
THREADS = 4
DEBITS_PER_THREAD = 20  # ~130 credits asked of 210: some due credits are always left to expire


def new_client(endpoint_url: str) -> Any:
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        config=CLIENT_CONFIG,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def ledger_on(endpoint_url: str, table: str, now: datetime) -> Ledger:
    return Ledger(AccountRepository(new_client(endpoint_url), table), clock=lambda: now)


def entries_of(client: Any, table: str, account: str) -> list[Any]:
    from credits_ledger.dal import items as it

    query: dict[str, Any] = {
        "TableName": table,
        "IndexName": "LedgerByAccount",
        "KeyConditionExpression": "account_id = :a",
        "ExpressionAttributeValues": {":a": {"S": account}},
    }
    found = []
    while True:
        response = client.query(**query)
        found.extend(it.entry_from_item(it.from_dynamo(raw)) for raw in response["Items"])
        if "LastEvaluatedKey" not in response:
            return found
        query["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def test_expiry_racing_debits_and_itself_never_spends_and_expires_the_same_credit(local_tables: Any) -> None:
    endpoint, table = local_tables.endpoint_url, local_tables.first
    # Given three accounts with five due grants of 10 and 20 never-expiring credits each
    setup = ledger_on(endpoint, table, T0)
    due: dict[str, str] = {}
    for account in ACCOUNTS:
        for n in range(DUE_PER_ACCOUNT):
            grant_id = f"g_{account}_{n}"
            expires = T0 + timedelta(days=1, minutes=n)
            setup.grant(
                account, GrantSpec(grant_id, D(10), Source("admin"), expires_at=expires), key=f"k:{grant_id}"
            )
            due[grant_id] = account
        setup.grant(account, GrantSpec(f"keep_{account}", D(20), Source("admin")), key=f"k:keep_{account}")

    start = threading.Barrier(THREADS + 2)
    errors: list[BaseException] = []
    summaries: list[ExpirySummary] = []

    def debits(thread: int) -> None:
        ledger = ledger_on(endpoint, table, DEBIT_AT)
        rng = random.Random(thread)
        start.wait()
        try:
            for i in range(DEBITS_PER_THREAD):
                account = ACCOUNTS[(thread + i) % len(ACCOUNTS)]
                amount = D(rng.choice(["0.5", "1", "1.25", "2", "3.333333"]))
                with contextlib.suppress(InsufficientCredits, ConcurrencyConflict):
                    ledger.debit(account, DebitRequest(key=f"t{thread}-{i}", amount=amount))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def expiry(copy: int) -> None:
        client = new_client(endpoint)
        accounts = AccountRepository(client, table)
        job = ExpiryJob(
            Ledger(accounts, clock=lambda: RUN_AT),
            ReminderRepository(client, table),
            DiscardingBus(),
            parse_pricing({}),
            reservations=Reservations.over(accounts, clock=lambda: RUN_AT),
            page_size=4,
        )
        start.wait()
        try:
            summaries.append(job.run(RUN_AT, f"run-{copy}", Deadline(None)))
        except BaseException as exc:
            errors.append(exc)

    # When four debit threads and two copies of the expiry job run at the same time
    threads = [threading.Thread(target=debits, args=(t,)) for t in range(THREADS)]
    threads += [threading.Thread(target=expiry, args=(c,)) for c in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    # (a grant a copy saw as due after the other expired it is a replay or "nothing left", never a failure)
    assert sum(s.failed for s in summaries) == 0
    # Then, per due grant: spent + expired == 10 exactly, at most one expire entry, and it left the live set
    client = new_client(endpoint)
    repository = AccountRepository(client, table)
    all_expired = D(0)
    for account in ACCOUNTS:
        entries = entries_of(client, table, account)
        spent: dict[str, Decimal] = defaultdict(Decimal)
        expired: dict[str, Decimal] = defaultdict(Decimal)
        expire_entries: dict[str, int] = defaultdict(int)
        for entry in entries:
            for allocation in entry.allocations:
                if entry.type is EntryType.DEBIT:
                    spent[allocation.grant_id] += allocation.amount
                elif entry.type is EntryType.EXPIRE:
                    expired[allocation.grant_id] += allocation.amount
                    expire_entries[allocation.grant_id] += 1
        state = repository.state(account, consistent=True, all_grants=True)
        for grant_id, owner in due.items():
            if owner != account:
                continue
            assert spent[grant_id] + expired[grant_id] == D(10), (
                grant_id,
                spent[grant_id],
                expired[grant_id],
            )
            assert expire_entries[grant_id] <= 1
            assert grant_id not in state.grants
            all_expired += expired[grant_id]
        # And the books balance: ledger sum == balance == live remaining, seq 1..n, version == n
        total = sum((e.amount for e in entries), D(0))
        assert total == state.ledger_balance == sum((g.remaining for g in state.grants.values()), D(0))
        assert (
            sorted(e.seq for e in entries)
            == list(range(1, len(entries) + 1))
            == list(range(1, state.version + 1))
        )
    # And the two copies together expired exactly what the ledger shows, each grant once at most
    assert all_expired > 0
    assert sum((s.expired_amount for s in summaries), D(0)) == all_expired
    assert sum(s.expired for s in summaries) <= len(due)
