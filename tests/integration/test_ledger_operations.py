"""Every Ledger operation on moto, through the real AccountRepository and the table of template.yaml.

Each test ends by re-reading the books: sum of ledger amounts == ledger balance == sum of live remaining.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_ledger.dal import items as it
from credits_ledger.domain.errors import (
    ConcurrencyConflict,
    GrantNotDue,
    GrantNotFound,
    IdempotencyMismatch,
    InsufficientCredits,
    InvalidCursor,
    InvalidGrant,
    InvalidTransition,
)
from credits_ledger.domain.models import AccountState, Allocation, Category, EntryType, GrantStatus
from credits_ledger.ledger import DebitRequest, Ledger
from tests.support.ledger import (
    FakeClock,
    SleepRecorder,
    all_entries,
    all_grants,
    assert_books_balance,
    make_ledger,
    spec,
)

D = Decimal
ACCT = "cus_1"
OTHER = "cus_2"
PROMO = Category.PROMOTIONAL


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def ledger(moto_tables: Any, clock: FakeClock, sleeps: SleepRecorder) -> Ledger:
    return make_ledger(moto_tables.client, moto_tables["CreditsTable"], clock, sleep=sleeps)


@pytest.fixture
def calls(moto_tables: Any) -> dict[str, int]:
    """How many times each DynamoDB operation was called on the ledger's client."""
    counts: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        counts[model.name] = counts.get(model.name, 0) + 1

    moto_tables.client.meta.events.register("before-call.dynamodb", count)
    return counts


def debit(key: str, amount: str, fingerprint: str = "", **kwargs: Any) -> DebitRequest:
    return DebitRequest(key=key, amount=D(amount), fingerprint=fingerprint or f"fp-{key}-{amount}", **kwargs)


def snapshot(ledger: Ledger, account: str = ACCT) -> tuple[AccountState, list[Any]]:
    return ledger.repository.state(account, consistent=True, all_grants=True), all_entries(ledger, account)


# ======================================================================================================== grant
def test_grant_records_grant_entry_and_balance(ledger: Ledger, clock: FakeClock) -> None:
    # Given an account that never had credits
    assert ledger.balance(ACCT).ledger_balance == 0
    # When 100 credits are granted
    outcome = ledger.grant(
        ACCT, spec("gr_1", "100", expires_at=clock.now + timedelta(days=30)), key="grant:1", reference="pi_1"
    )
    # Then one grant entry, an active grant record and the balance
    assert outcome.replayed is False
    entry = outcome.entry
    assert (entry.type, entry.amount, entry.balance_after, entry.seq) == (EntryType.GRANT, D(100), D(100), 1)
    assert entry.allocations == (Allocation("gr_1", D(100)),)
    assert entry.reference == "pi_1" and entry.created_at == clock.now
    assert ledger.repository.entry("grant:1") == entry
    record = ledger.grant_view("gr_1")
    assert (record.status, record.remaining, record.amount, record.account_id) == (
        GrantStatus.ACTIVE,
        D(100),
        D(100),
        ACCT,
    )
    assert record.expires_at == clock.now + timedelta(days=30)
    balance = ledger.balance(ACCT)
    assert (balance.available, balance.ledger_balance, balance.paid) == (D(100), D(100), D(100))
    assert balance.next_expiry_at == clock.now + timedelta(days=30) and balance.next_expiry_amount == D(100)
    assert assert_books_balance(ledger, ACCT) == D(100)


def test_grant_same_key_replays_the_first_entry_and_grants_once(ledger: Ledger) -> None:
    # Given a grant under key "grant:1"
    first = ledger.grant(ACCT, spec("gr_1", "100"), key="grant:1", fingerprint="pay-1")
    # When the same key is granted again (even with another grant id, as a redelivered event would)
    again = ledger.grant(ACCT, spec("gr_2", "100"), key="grant:1", fingerprint="pay-1")
    # Then the first entry comes back, marked replayed, and nothing else is written
    assert again.replayed is True
    assert again.entry == first.entry
    assert len(all_entries(ledger, ACCT)) == 1
    with pytest.raises(GrantNotFound):
        ledger.repository.grant("gr_2")
    assert assert_books_balance(ledger, ACCT) == D(100)


def test_grant_same_key_other_fingerprint_is_a_mismatch(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "100"), key="grant:1", fingerprint="a")
    with pytest.raises(IdempotencyMismatch):
        ledger.grant(ACCT, spec("gr_1", "200"), key="grant:1", fingerprint="b")
    assert assert_books_balance(ledger, ACCT) == D(100)


def test_grant_with_future_effective_at_is_pending_until_then(ledger: Ledger, clock: FakeClock) -> None:
    # Given a grant effective tomorrow
    ledger.grant(ACCT, spec("gr_1", "40", effective_at=clock.now + timedelta(days=1)), key="grant:1")
    # Then today it is pending: in the ledger balance, not available, not spendable
    balance = ledger.balance(ACCT)
    assert (balance.ledger_balance, balance.available, balance.pending) == (D(40), 0, D(40))
    assert ledger.grant_view("gr_1").status is GrantStatus.PENDING
    with pytest.raises(InsufficientCredits):
        ledger.debit(ACCT, debit("use:1", "1"))
    # When tomorrow comes
    clock.advance(days=1)
    # Then it is active and spendable
    assert ledger.grant_view("gr_1").status is GrantStatus.ACTIVE
    assert ledger.balance(ACCT).available == D(40)
    assert ledger.debit(ACCT, debit("use:2", "40")).entry.balance_after == 0
    assert assert_books_balance(ledger, ACCT) == 0


def test_grant_invalid_spec_writes_nothing(ledger: Ledger, clock: FakeClock) -> None:
    with pytest.raises(InvalidGrant):
        ledger.grant(ACCT, spec("gr_1", "0"), key="grant:1")
    with pytest.raises(InvalidGrant):
        ledger.grant(ACCT, spec("gr_2", "5", expires_at=clock.now), key="grant:2")
    assert ledger.repository.entry("grant:1") is None and ledger.repository.entry("grant:2") is None
    assert assert_books_balance(ledger, ACCT) == 0


def test_grant_reusing_a_grant_id_fails_fast_without_retry_storm(
    ledger: Ledger, sleeps: SleepRecorder
) -> None:
    # Given grant gr_1 created under key grant:1
    ledger.grant(ACCT, spec("gr_1", "10"), key="grant:1")
    # When another operation tries to create gr_1 again under another key
    with pytest.raises(Exception) as caught:
        ledger.grant(ACCT, spec("gr_1", "10"), key="grant:2")
    # Then it fails at once with a non-retryable error (not a "too many concurrent writers" one), after at
    # most one conflict backoff, and nothing is written
    assert not isinstance(caught.value, ConcurrencyConflict)
    assert len(sleeps.calls) <= 1
    assert assert_books_balance(ledger, ACCT) == D(10)


# ======================================================================================================== debit
def test_debit_follows_spend_order_across_grants(ledger: Ledger, clock: FakeClock) -> None:
    # Given grants that differ in priority, expiry and category
    ledger.grant(ACCT, spec("gr_a", "10"), key="g:a")  # paid, never expires
    ledger.grant(ACCT, spec("gr_b", "10", expires_at=clock.now + timedelta(days=5)), key="g:b")
    ledger.grant(
        ACCT, spec("gr_c", "10", category=PROMO, expires_at=clock.now + timedelta(days=5)), key="g:c"
    )
    ledger.grant(ACCT, spec("gr_d", "10", priority=60, expires_at=clock.now + timedelta(days=1)), key="g:d")
    ledger.grant(ACCT, spec("gr_e", "10", priority=10), key="g:e")
    # When 45 is debited
    outcome = ledger.debit(ACCT, debit("use:1", "45", reference="evt_1"))
    # Then priority 10 first, then earliest expiry with promotional before paid, then never-expiring,
    # and the priority-60 grant is touched last
    assert outcome.entry.allocations == (
        Allocation("gr_e", D(10)),
        Allocation("gr_c", D(10)),
        Allocation("gr_b", D(10)),
        Allocation("gr_a", D(10)),
        Allocation("gr_d", D(5)),
    )
    assert (outcome.entry.type, outcome.entry.amount, outcome.entry.balance_after) == (
        EntryType.DEBIT,
        D(-45),
        D(5),
    )
    assert outcome.entry.metadata["available_after"] == "5"
    state = ledger.repository.state(ACCT, consistent=True, all_grants=True)
    assert {g: live.remaining for g, live in state.grants.items()} == {"gr_d": D(5)}
    assert assert_books_balance(ledger, ACCT) == D(5)


def test_depletion_closes_the_grant_item(ledger: Ledger, clock: FakeClock) -> None:
    ledger.grant(ACCT, spec("gr_1", "10", expires_at=clock.now + timedelta(days=3)), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "10"), key="g:2")
    clock.advance(hours=1)
    ledger.debit(ACCT, debit("use:1", "12.5"))
    # The depleted grant's item says depleted, remaining 0, closed now, and it left the expiry index
    record = ledger.repository.grant("gr_1")
    assert (record.status, record.remaining, record.closed_at) == (GrantStatus.DEPLETED, 0, clock.now)
    assert list(ledger.repository.iter_expiring(clock.now + timedelta(days=10))) == []
    assert ledger.grant_view("gr_2").remaining == D("7.5")
    assert [g.grant_id for g in ledger.grants(ACCT, 10, status=GrantStatus.DEPLETED).items] == ["gr_1"]
    assert [g.grant_id for g in ledger.grants(ACCT, 10, status=GrantStatus.ACTIVE).items] == ["gr_2"]
    assert assert_books_balance(ledger, ACCT) == D("7.5")


def test_insufficient_credits_changes_nothing(ledger: Ledger) -> None:
    # Given 10 credits
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    before = snapshot(ledger)
    # When 10.000001 is debited
    with pytest.raises(InsufficientCredits) as caught:
        ledger.debit(ACCT, debit("use:1", "10.000001"))
    # Then the error says what was asked and available, and nothing was written
    assert (caught.value.requested, caught.value.available) == (D("10.000001"), D(10))
    assert snapshot(ledger) == before
    assert ledger.repository.entry("use:1") is None
    # ...and the same key may be used later, once credits are there
    ledger.grant(ACCT, spec("gr_2", "1"), key="g:2")
    assert ledger.debit(ACCT, debit("use:1", "10.000001")).replayed is False
    assert assert_books_balance(ledger, ACCT) == D("0.999999")


def test_usage_on_an_account_that_never_had_credits_is_insufficient(ledger: Ledger) -> None:
    with pytest.raises(InsufficientCredits) as caught:
        ledger.debit(OTHER, debit("use:1", "1"))
    assert caught.value.available == 0
    balance = ledger.balance(OTHER)
    assert (balance.available, balance.ledger_balance, balance.next_expiry_at) == (0, 0, None)
    assert ledger.transactions(OTHER, 10).items == []
    assert assert_books_balance(ledger, OTHER) == 0


def test_debit_replay_returns_first_entry_and_debits_nothing(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    first = ledger.debit(ACCT, debit("use:1", "3", fingerprint="body-1"))
    ledger.debit(ACCT, debit("use:2", "1"))
    # When the first usage is sent again
    again = ledger.debit(ACCT, debit("use:1", "3", fingerprint="body-1"))
    # Then the very first entry (with its balance and available_after at the time) comes back
    assert again.replayed is True
    assert again.entry == first.entry
    assert again.entry.metadata["available_after"] == "7"
    assert ledger.balance(ACCT).available == D(6)
    assert len(all_entries(ledger, ACCT)) == 3
    assert assert_books_balance(ledger, ACCT) == D(6)


def test_debit_same_key_other_fingerprint_is_a_mismatch(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    ledger.debit(ACCT, debit("use:1", "3", fingerprint="body-1"))
    before = snapshot(ledger)
    with pytest.raises(IdempotencyMismatch):
        ledger.debit(ACCT, debit("use:1", "4", fingerprint="body-2"))
    assert snapshot(ledger) == before
    assert assert_books_balance(ledger, ACCT) == D(7)


def test_past_expiry_grant_is_never_spent_before_the_job(ledger: Ledger, clock: FakeClock) -> None:
    # Given 100 credits expiring tomorrow (promotional, top priority: they would be spent first) and 5 paid
    ledger.grant(
        ACCT,
        spec("gr_x", "100", category=PROMO, priority=0, expires_at=clock.now + timedelta(days=1)),
        key="g:x",
    )
    ledger.grant(ACCT, spec("gr_p", "5"), key="g:p")
    # When the expiry time passes but the job has not run
    clock.advance(days=1)
    # Then they are not available, and a debit uses only the paid grant
    balance = ledger.balance(ACCT)
    assert (balance.ledger_balance, balance.available, balance.next_expiry_at) == (D(105), D(5), None)
    with pytest.raises(InsufficientCredits):
        ledger.debit(ACCT, debit("use:1", "6"))
    assert ledger.debit(ACCT, debit("use:2", "5")).entry.allocations == (Allocation("gr_p", D(5)),)
    assert ledger.grant_view("gr_x").status is GrantStatus.EXPIRED
    assert ledger.grant_view("gr_x").remaining == D(100)
    assert assert_books_balance(ledger, ACCT) == D(100)


def test_debit_with_six_fractional_digits_is_exact(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "1"), key="g:1")
    for index in range(3):
        ledger.debit(ACCT, debit(f"use:{index}", "0.333333"))
    assert ledger.balance(ACCT).available == D("0.000001")
    assert assert_books_balance(ledger, ACCT) == D("0.000001")


def seed_unit_grants(moto_tables: Any, clock: FakeClock, count: int = 100) -> None:
    """``count`` live grants of 1 credit (e.g. daily promotional credits), written directly with the
    repository's own item mappers (that many Ledger.grant calls are too slow on moto)."""
    from credits_ledger.domain import transitions as tr

    state = AccountState(account_id=ACCT)
    writes = []
    for index in range(count):
        change = tr.grant(
            state, spec(f"gr_{index:03d}", "1"), tr.EntryContext(entry_key=f"g:{index}", now=clock.now)
        )
        state = change.state
        writes.append(it.grant_to_item(change.new_grants[0]))
        writes.append(it.entry_to_item(change.entries[0]))
    writes.append(it.state_to_item(state))
    client, table = moto_tables.client, moto_tables["CreditsTable"]
    for start in range(0, len(writes), 25):
        client.batch_write_item(
            RequestItems={
                table: [{"PutRequest": {"Item": it.to_dynamo(item)}} for item in writes[start : start + 25]]
            }
        )


def test_debit_spanning_more_than_98_grants_succeeds(
    ledger: Ledger, moto_tables: Any, clock: FakeClock
) -> None:
    # Given an account with 100 live grants of 1 credit
    seed_unit_grants(moto_tables, clock)
    assert ledger.balance(ACCT).available == D(100)
    # When 100 is debited / Then it succeeds and empties the account
    outcome = ledger.debit(ACCT, debit("use:1", "100"))
    assert outcome.entry.balance_after == 0
    assert assert_books_balance(ledger, ACCT) == 0
    # And every grant reads as depleted, though only some were closed in the debit's own transaction
    assert {g.status for g in all_grants(ledger, ACCT)} == {GrantStatus.DEPLETED}
    left_live = len(ledger.repository.state(ACCT, consistent=True).grants)
    assert 0 < left_live < 100
    # When the account changes again (three grants) / Then the leftovers are closed along the way (30 a change)
    for name in ("new1", "new2", "new3"):
        ledger.grant(ACCT, spec(f"gr_{name}", "5"), key=f"grant:{name}")
    live = ledger.repository.state(ACCT, consistent=True, all_grants=True).grants
    assert set(live) == {"gr_new1", "gr_new2", "gr_new3"}
    assert assert_books_balance(ledger, ACCT) == 15


def test_debit_many_that_fills_a_transaction_answers_every_request(
    ledger: Ledger, moto_tables: Any, clock: FakeClock
) -> None:
    # Given 100 grants of 1 credit
    seed_unit_grants(moto_tables, clock)
    # When one batch spends 50, 30 and 20: the grants they close exceed one transaction's 100 actions
    results = ledger.debit_many(ACCT, [debit("b:1", "50"), debit("b:2", "30"), debit("b:3", "20")])
    # Then every request is answered and debited once, in order, and the books balance
    assert [r.request.key for r in results] == ["b:1", "b:2", "b:3"]
    assert [r.error for r in results] == [None, None, None]
    assert [r.outcome.entry.balance_after for r in results if r.outcome] == [50, 20, 0]
    assert assert_books_balance(ledger, ACCT) == 0


# =================================================================================================== debit_many
def test_debit_many_judges_each_alone_and_writes_once(ledger: Ledger, calls: dict[str, int]) -> None:
    # Given 50 credits
    ledger.grant(ACCT, spec("gr_1", "50"), key="g:1")
    calls.clear()
    # When a batch has a debit that fits, one that does not, an invalid one, and another that fits
    results = ledger.debit_many(
        ACCT, [debit("u:1", "30"), debit("u:2", "1000"), debit("u:3", "0"), debit("u:4", "20")]
    )
    # Then each is judged on its own: 1 and 4 debited, 2 refused for credits, 3 refused as invalid
    assert [type(r.error).__name__ if r.error else "ok" for r in results] == [
        "ok",
        "InsufficientCredits",
        "InvalidGrant",
        "ok",
    ]
    assert [r.outcome.entry.balance_after for r in results if r.outcome] == [D(20), D(0)]
    assert [r.outcome.entry.seq for r in results if r.outcome] == [2, 3]
    assert results[1].error.available == D(20)  # type: ignore[union-attr]
    # ...in one combined transaction
    assert calls.get("TransactWriteItems") == 1
    assert ledger.repository.entry("u:2") is None and ledger.repository.entry("u:3") is None
    assert ledger.grant_view("gr_1").status is GrantStatus.DEPLETED
    assert assert_books_balance(ledger, ACCT) == 0


def test_debit_many_duplicates_in_one_batch(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "50"), key="g:1")
    results = ledger.debit_many(
        ACCT,
        [
            debit("u:1", "5", fingerprint="a"),
            debit("u:1", "5", fingerprint="a"),
            debit("u:1", "6", fingerprint="b"),
        ],
    )
    # The first debits, the identical second replays the first, the third (other body) is a mismatch
    assert results[0].outcome is not None and results[0].outcome.replayed is False
    assert results[1].outcome is not None and results[1].outcome.replayed is True
    assert results[1].outcome.entry == results[0].outcome.entry
    assert isinstance(results[2].error, IdempotencyMismatch)
    assert len(all_entries(ledger, ACCT)) == 2
    assert assert_books_balance(ledger, ACCT) == D(45)


def test_debit_many_replays_keys_committed_earlier(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "50"), key="g:1")
    earlier = ledger.debit(ACCT, debit("u:1", "5"))
    results = ledger.debit_many(ACCT, [debit("u:1", "5"), debit("u:2", "7")])
    assert (
        results[0].outcome is not None
        and results[0].outcome.replayed
        and results[0].outcome.entry == earlier.entry
    )
    assert results[1].outcome is not None and results[1].outcome.entry.balance_after == D(38)
    assert assert_books_balance(ledger, ACCT) == D(38)


def test_debit_many_only_refusals_writes_nothing(ledger: Ledger, calls: dict[str, int]) -> None:
    ledger.grant(ACCT, spec("gr_1", "5"), key="g:1")
    calls.clear()
    results = ledger.debit_many(ACCT, [debit("u:1", "6"), debit("u:2", "7")])
    assert all(isinstance(r.error, InsufficientCredits) for r in results)
    assert "TransactWriteItems" not in calls
    assert assert_books_balance(ledger, ACCT) == D(5)


def test_debit_many_larger_than_one_transaction(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "100"), key="g:1")
    results = ledger.debit_many(ACCT, [debit(f"u:{i}", "1") for i in range(45)])
    assert all(r.outcome is not None and not r.outcome.replayed for r in results)
    assert [r.outcome.entry.seq for r in results if r.outcome] == list(range(2, 47))
    assert assert_books_balance(ledger, ACCT) == D(55)


# ======================================================================================================= expire
def test_expire_only_when_due(ledger: Ledger, clock: FakeClock) -> None:
    ledger.grant(ACCT, spec("gr_1", "10", expires_at=clock.now + timedelta(days=1)), key="g:1")
    before = snapshot(ledger)
    with pytest.raises(GrantNotDue):
        ledger.expire("gr_1", clock.now + timedelta(days=1) - timedelta(microseconds=1))
    assert snapshot(ledger) == before
    assert assert_books_balance(ledger, ACCT) == D(10)


def test_expire_takes_what_remains_and_twice_is_one_entry(ledger: Ledger, clock: FakeClock) -> None:
    # Given 10 credits expiring in a day, 4 spent, and a never-expiring grant
    expires = clock.now + timedelta(days=1)
    ledger.grant(ACCT, spec("gr_1", "10", expires_at=expires), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "3"), key="g:2")
    ledger.debit(ACCT, debit("use:1", "4"))
    assert list(ledger.repository.iter_expiring(expires)) == [(ACCT, "gr_1")]
    # When the job expires it (its "now" is the scheduled time)
    job_time = expires + timedelta(minutes=5)
    outcome = ledger.expire("gr_1", job_time)
    # Then one expire entry for the 6 that remained, the grant is closed and out of the expiry index
    assert outcome is not None and outcome.replayed is False
    entry = outcome.entry
    assert (entry.type, entry.amount, entry.balance_after, entry.created_at) == (
        EntryType.EXPIRE,
        D(-6),
        D(3),
        job_time,
    )
    assert entry.allocations == (Allocation("gr_1", D(6)),)
    assert ledger.repository.grant("gr_1").status is GrantStatus.EXPIRED
    assert list(ledger.repository.iter_expiring(job_time)) == []
    # When it runs again / Then the same entry, nothing expired twice
    again = ledger.expire("gr_1", job_time + timedelta(days=1))
    assert again is not None and again.replayed is True and again.entry == entry
    assert [e.type for e in all_entries(ledger, ACCT)].count(EntryType.EXPIRE) == 1
    assert assert_books_balance(ledger, ACCT) == D(3)


def test_expire_returns_none_when_nothing_remains(ledger: Ledger, clock: FakeClock) -> None:
    ledger.grant(ACCT, spec("gr_1", "10", expires_at=clock.now + timedelta(days=1)), key="g:1")
    ledger.debit(ACCT, debit("use:1", "10"))
    before = snapshot(ledger)
    assert ledger.expire("gr_1", clock.now + timedelta(days=2)) is None
    assert snapshot(ledger) == before
    assert assert_books_balance(ledger, ACCT) == 0


def test_expiry_index_lists_only_due_live_grants(ledger: Ledger, clock: FakeClock) -> None:
    ledger.grant(ACCT, spec("gr_1", "1", expires_at=clock.now + timedelta(days=1)), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "1", expires_at=clock.now + timedelta(days=2)), key="g:2")
    ledger.grant(OTHER, spec("gr_3", "1", expires_at=clock.now + timedelta(days=1)), key="g:3")
    ledger.grant(ACCT, spec("gr_4", "1"), key="g:4")
    due = sorted(ledger.repository.iter_expiring(clock.now + timedelta(days=1)))
    assert due == [(ACCT, "gr_1"), (OTHER, "gr_3")]
    assert assert_books_balance(ledger, ACCT) == D(3) and assert_books_balance(ledger, OTHER) == D(1)


# ========================================================================================================= void
def test_void_takes_what_remains_once(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "10", priority=60), key="g:2")
    ledger.debit(ACCT, debit("use:1", "4"))
    outcome = ledger.void("gr_1", reference="admin")
    assert outcome is not None
    assert (outcome.entry.type, outcome.entry.amount, outcome.entry.balance_after) == (
        EntryType.VOID,
        D(-6),
        D(10),
    )
    assert outcome.entry.allocations == (Allocation("gr_1", D(6)),)
    assert ledger.grant_view("gr_1").status is GrantStatus.VOIDED
    again = ledger.void("gr_1")
    assert again is not None and again.replayed and again.entry == outcome.entry
    assert assert_books_balance(ledger, ACCT) == D(10)


def test_void_of_a_depleted_or_unknown_grant(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    ledger.debit(ACCT, debit("use:1", "10"))
    assert ledger.void("gr_1") is None
    with pytest.raises(GrantNotFound):
        ledger.void("gr_nope")
    assert ledger.grant_view("gr_1").status is GrantStatus.DEPLETED
    assert assert_books_balance(ledger, ACCT) == 0


# ================================================================================================= hold/release
def test_held_credits_are_neither_spendable_nor_available(ledger: Ledger) -> None:
    # Given 10 paid (disputed below) and 3 promotional
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "3", category=PROMO), key="g:2")
    ledger.debit(ACCT, debit("use:1", "4"))  # 3 promo + 1 paid
    # When the paid grant is held
    outcome = ledger.hold("gr_1", key="dispute:dp_1:hold", reference="dp_1")
    # Then a zero entry says how much it moved; held counts apart; nothing can be spent
    assert outcome is not None
    assert (outcome.entry.type, outcome.entry.amount, outcome.entry.balance_after) == (
        EntryType.HOLD,
        0,
        D(9),
    )
    assert outcome.entry.allocations == (Allocation("gr_1", D(9)),)
    balance = ledger.balance(ACCT)
    assert (balance.available, balance.held, balance.ledger_balance) == (0, D(9), D(9))
    assert ledger.grant_view("gr_1").status is GrantStatus.HELD
    with pytest.raises(InsufficientCredits):
        ledger.debit(ACCT, debit("use:2", "1"))
    # ...holding again with the same key is the same entry; with another key it is refused
    assert ledger.hold("gr_1", key="dispute:dp_1:hold").entry == outcome.entry  # type: ignore[union-attr]
    with pytest.raises(InvalidTransition):
        ledger.hold("gr_1", key="dispute:dp_2:hold")
    assert assert_books_balance(ledger, ACCT) == D(9)


def test_release_makes_held_credits_spendable_again(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    with pytest.raises(InvalidTransition):
        ledger.release("gr_1", key="dispute:dp_1:release")
    ledger.hold("gr_1", key="dispute:dp_1:hold")
    outcome = ledger.release("gr_1", key="dispute:dp_1:release")
    assert outcome is not None
    assert (outcome.entry.type, outcome.entry.amount, outcome.entry.allocations) == (
        EntryType.RELEASE,
        0,
        (Allocation("gr_1", D(10)),),
    )
    assert ledger.release("gr_1", key="dispute:dp_1:release").replayed  # type: ignore[union-attr]
    balance = ledger.balance(ACCT)
    assert (balance.available, balance.held) == (D(10), 0)
    assert ledger.debit(ACCT, debit("use:1", "10")).entry.balance_after == 0
    assert [e.type for e in all_entries(ledger, ACCT)] == [
        EntryType.DEBIT,
        EntryType.RELEASE,
        EntryType.HOLD,
        EntryType.GRANT,
    ]
    assert assert_books_balance(ledger, ACCT) == 0


def test_voiding_a_held_grant_after_a_lost_dispute(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    ledger.hold("gr_1", key="dispute:dp_1:hold")
    outcome = ledger.void("gr_1", reference="dp_1")
    assert outcome is not None and outcome.entry.amount == D(-10)
    balance = ledger.balance(ACCT)
    assert (balance.held, balance.ledger_balance) == (0, 0)
    assert assert_books_balance(ledger, ACCT) == 0


# ======================================================================================================= revoke
def test_revoke_partial(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "100"), key="g:1")
    outcome = ledger.revoke("gr_1", D("25"), key="refund:ch_1:25", reference="ch_1")
    entry = outcome.entry
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.REVOKE, D(-25), D(75))
    assert entry.allocations == (Allocation("gr_1", D(25)),)
    assert D(entry.metadata["shortfall"]) == 0
    assert ledger.grant_view("gr_1").remaining == D(75)
    assert ledger.grant_view("gr_1").status is GrantStatus.ACTIVE
    assert assert_books_balance(ledger, ACCT) == D(75)


def test_revoke_never_below_zero_records_shortfall(ledger: Ledger) -> None:
    # Given 100 credits of which 80 were spent
    ledger.grant(ACCT, spec("gr_1", "100"), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "5", priority=90), key="g:2")
    ledger.debit(ACCT, debit("use:1", "80"))
    # When the whole payment is refunded
    outcome = ledger.revoke("gr_1", D("100"), key="refund:ch_1")
    # Then only the 20 left are taken, the 80 shortfall is recorded, other grants are untouched
    entry = outcome.entry
    assert (entry.amount, entry.balance_after) == (D(-20), D(5))
    assert (D(entry.metadata["requested"]), D(entry.metadata["shortfall"])) == (D(100), D(80))
    assert ledger.repository.grant("gr_1").status is GrantStatus.VOIDED
    assert ledger.grant_view("gr_2").remaining == D(5)
    # When a later, larger refund of the same grant comes / Then nothing more is taken, all shortfall
    later = ledger.revoke("gr_1", D("10"), key="refund:ch_1:second")
    assert later.entry.amount == 0 and D(later.entry.metadata["shortfall"]) == D(10)
    assert ledger.balance(ACCT).ledger_balance == D(5)
    assert assert_books_balance(ledger, ACCT) == D(5)


def test_revoke_replay_and_mismatch(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "100"), key="g:1")
    first = ledger.revoke("gr_1", D("30"), key="refund:ch_1")
    again = ledger.revoke("gr_1", D("30"), key="refund:ch_1")
    assert again.replayed and again.entry == first.entry
    with pytest.raises(IdempotencyMismatch):
        ledger.revoke("gr_1", D("40"), key="refund:ch_1")
    assert assert_books_balance(ledger, ACCT) == D(70)


# ======================================================================================================= adjust
def test_adjust_positive_and_negative(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    plus = ledger.adjust(ACCT, D("5"), key="adj:1", reason="goodwill")
    assert (plus.entry.type, plus.entry.amount, plus.entry.balance_after) == (
        EntryType.ADJUSTMENT,
        D(5),
        D(15),
    )
    assert plus.entry.metadata.get("reason") == "goodwill"
    (allocation,) = plus.entry.allocations
    added = ledger.grant_view(allocation.grant_id)
    assert (added.category, added.remaining, added.account_id) == (PROMO, D(5), ACCT)
    # A negative adjustment spends like a debit: the promotional credits go first
    minus = ledger.adjust(ACCT, D("-7"), key="adj:2")
    assert (minus.entry.type, minus.entry.amount, minus.entry.balance_after) == (
        EntryType.ADJUSTMENT,
        D(-7),
        D(8),
    )
    assert minus.entry.allocations == (Allocation(allocation.grant_id, D(5)), Allocation("gr_1", D(2)))
    with pytest.raises(InsufficientCredits):
        ledger.adjust(ACCT, D("-8.5"), key="adj:3")
    assert ledger.adjust(ACCT, D("-7"), key="adj:2").entry == minus.entry
    with pytest.raises(IdempotencyMismatch):
        ledger.adjust(ACCT, D("7"), key="adj:2")
    assert assert_books_balance(ledger, ACCT) == D(8)


# ======================================================================================================== reads
def test_transactions_newest_first_with_pagination(ledger: Ledger) -> None:
    ledger.grant(ACCT, spec("gr_1", "10"), key="g:1")
    for index in range(4):
        ledger.debit(ACCT, debit(f"use:{index}", "1"))
    ledger.grant(OTHER, spec("gr_2", "1"), key="g:2")
    pages, cursor = [], None
    while True:
        page = ledger.transactions(ACCT, 2, cursor)
        pages.append([e.seq for e in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [seq for page in pages for seq in page] == [5, 4, 3, 2, 1]
    assert all(len(page) <= 2 for page in pages) and pages[0] == [5, 4]
    assert all(e.account_id == ACCT for e in all_entries(ledger, ACCT))
    assert assert_books_balance(ledger, ACCT) == D(6)


def test_cursor_from_another_account_or_garbage_is_rejected(ledger: Ledger) -> None:
    for index in range(3):
        ledger.grant(ACCT, spec(f"gr_a{index}", "1"), key=f"g:a{index}")
        ledger.grant(OTHER, spec(f"gr_b{index}", "1"), key=f"g:b{index}")
    foreign = ledger.transactions(OTHER, 1).next_cursor
    assert foreign is not None
    with pytest.raises(InvalidCursor):
        ledger.transactions(ACCT, 1, foreign)
    foreign_grants = ledger.grants(OTHER, 1).next_cursor
    assert foreign_grants is not None
    with pytest.raises(InvalidCursor):
        ledger.grants(ACCT, 1, foreign_grants)
    for garbage in ["not-a-cursor!", "e30=", "WzFd"]:  # invalid base64, "{}"-ish, "[1]"
        with pytest.raises(InvalidCursor):
            ledger.transactions(ACCT, 1, garbage)
    assert assert_books_balance(ledger, ACCT) == D(3)


def test_grants_listing_paginates_and_filters(ledger: Ledger, clock: FakeClock) -> None:
    ledger.grant(ACCT, spec("gr_1", "5"), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "5", effective_at=clock.now + timedelta(days=1)), key="g:2")
    ledger.grant(ACCT, spec("gr_3", "5", priority=1), key="g:3")
    ledger.debit(ACCT, debit("use:1", "5"))  # depletes gr_3
    seen, cursor = [], None
    while True:
        page = ledger.grants(ACCT, 2, cursor)
        seen.extend((g.grant_id, g.status) for g in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [
        ("gr_1", GrantStatus.ACTIVE),
        ("gr_2", GrantStatus.PENDING),
        ("gr_3", GrantStatus.DEPLETED),
    ]
    assert [g.grant_id for g in ledger.grants(ACCT, 10, status=GrantStatus.PENDING).items] == ["gr_2"]
    assert assert_books_balance(ledger, ACCT) == D(10)


def test_a_filtered_grants_listing_reads_a_bounded_number_of_pages(ledger: Ledger, clock: FakeClock) -> None:
    # Given 14 voided grants, then one active grant last
    from credits_ledger import ledger as ledger_module

    for n in range(14):
        ledger.grant(ACCT, spec(f"gr_{n:02d}", "1"), key=f"g:{n}")
        ledger.void(f"gr_{n:02d}")
    ledger.grant(ACCT, spec("gr_99", "1"), key="g:99")
    queries: list[str | None] = []
    read_page = ledger.repository.grants_page

    def counted(account_id: str, limit: int, cursor: str | None = None) -> Any:
        queries.append(cursor)
        return read_page(account_id, limit, cursor)

    ledger.repository.grants_page = counted  # type: ignore[method-assign]
    # When active grants are listed one at a time, following the cursors
    pages, cursor = [], None
    while True:
        queries.clear()
        page = ledger.grants(ACCT, 1, cursor, status=GrantStatus.ACTIVE)
        # Then no request reads more than the bound, however rare the status
        assert len(queries) <= ledger_module.MAX_GRANT_QUERIES_PER_LISTING
        pages.append([g.grant_id for g in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
    # And the first answer is an empty page with a cursor, and the cursors lead to the active grant once
    assert pages[0] == [] and len(pages) > 1
    assert [g for p in pages for g in p] == ["gr_99"]
