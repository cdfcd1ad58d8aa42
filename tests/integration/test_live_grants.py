"""An account with more live grants than its item holds (dal/live_grants.py), on moto through the real
AccountRepository: the first grants in spend order on the account item, the rest as items of their own.

Every operation is checked against the same operations on an account whose item holds every grant (the
layout before grants moved out of it), and every test ends with the books and the stored layout audited.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_ledger.dal import live_grants as lg
from credits_ledger.dal.reconcile import ReconcileRepository
from credits_ledger.domain import transitions as tr
from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import Category, GrantStatus
from credits_ledger.domain.overage import OveragePolicy, OverageSettings
from credits_ledger.domain.reconcile import Checkpoint
from credits_ledger.domain.transitions import EntryContext
from credits_ledger.jobs.reconcile import ReconcileJob, ReconcileSummary
from credits_ledger.ledger import DebitRequest
from credits_ledger.reservations import Reservations, ReserveRequest
from tests.support.bus import RecordingBus
from tests.support.faults import before_first_call
from tests.support.ledger import FakeClock, all_grants, assert_books_balance, make_ledger, spec
from tests.support.live_grants import layout_problems

D = Decimal
SMALL, WHOLE = "cus_small", "cus_whole"
PROMO = Category.PROMOTIONAL


class Pair:
    """Two ledgers on one table: ``small`` keeps 2 settled grants on its account item, ``whole`` all of them.
    Each call runs on both (ids and keys made per account) and returns both answers."""

    def __init__(self, tables: Any, clock: FakeClock) -> None:
        self.client, self.table, self.clock = tables.client, tables["CreditsTable"], clock
        self.small = make_ledger(self.client, self.table, clock, head_size=2)
        self.whole = make_ledger(self.client, self.table, clock, head_size=10_000)
        self.ledgers = {SMALL: self.small, WHOLE: self.whole}

    def grant(self, name: str, amount: str, **kwargs: Any) -> None:
        for account, ledger in self.ledgers.items():
            ledger.grant(account, spec(f"{account}-{name}", amount, **kwargs), key=f"{account}:grant:{name}")

    def debit(self, name: str, amount: str, **kwargs: Any) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        for account, ledger in self.ledgers.items():
            request = DebitRequest(key=f"{account}:{name}", amount=D(amount), fingerprint=name, **kwargs)
            try:
                answers[account] = ledger.debit(account, request).entry
            except InsufficientCredits as refused:
                answers[account] = refused
        return answers

    def same(self, answers: dict[str, Any]) -> Any:
        """The two answers agree (allocations named per account); returns the small account's."""
        small, whole = answers[SMALL], answers[WHOLE]
        if isinstance(small, InsufficientCredits) or isinstance(whole, InsufficientCredits):
            assert isinstance(small, InsufficientCredits) and isinstance(whole, InsufficientCredits)
            assert small.available == whole.available
            return small
        assert _plain(small) == _plain(whole), (small, whole)
        return small

    def check(self) -> None:
        for account, ledger in self.ledgers.items():
            assert assert_books_balance(ledger, account) >= 0
            assert layout_problems(self.client, self.table, account, self.clock.now) == []
        assert self.small.balance(SMALL) == _renamed(self.whole.balance(WHOLE))

    def tail_count(self) -> int:
        state = self.small.repository.state(SMALL, consistent=True, next_expiry=False)
        stored = state.storage
        assert isinstance(stored, lg.StoredGrants)
        return stored.tail.count if stored.tail else 0


def _plain(entry: Any) -> tuple[Any, ...]:
    allocations = tuple((a.grant_id.split("-", 1)[1], a.amount) for a in entry.allocations)
    return (entry.type, entry.amount, entry.balance_after, allocations, entry.metadata.get("available_after"))


def _renamed(balance: Any) -> Any:
    from dataclasses import replace

    return replace(balance, account_id=SMALL)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pair(moto_tables: Any, clock: FakeClock) -> Pair:
    return Pair(moto_tables, clock)


def _grants(pair: Pair, count: int, amount: str = "10", **kwargs: Any) -> None:
    for index in range(count):
        pair.grant(f"g{index:02d}", amount, **kwargs)


# ---- where grants go ------------------------------------------------------------------------------------------
def test_grants_beyond_the_head_are_kept_apart_and_counted(pair: Pair) -> None:
    # Given 6 grants of 10, three of them expiring at different times
    _grants(pair, 3)
    for index, days in enumerate((30, 10, 20)):
        pair.grant(f"x{index}", "10", expires_at=pair.clock.now + timedelta(days=days))
    # Then the account item holds 2 settled grants, the other 4 are apart, and every read agrees
    assert pair.tail_count() == 4
    balance = pair.small.balance(SMALL)
    assert (balance.available, balance.next_expiry_at) == (60, pair.clock.now + timedelta(days=10))
    pair.check()


def test_a_grant_sorting_before_the_tail_goes_to_the_item_and_the_last_one_moves_out(pair: Pair) -> None:
    # Given 4 never-expiring grants (2 on the item, 2 apart)
    _grants(pair, 4)
    # When a grant that is spent first arrives (priority 10)
    pair.grant("first", "5", priority=10)
    # Then it is on the item, and a debit spends it first, as on the account that holds everything
    state = pair.small.repository.state(SMALL, consistent=True, next_expiry=False)
    assert f"{SMALL}-first" in state.grants
    assert pair.same(pair.debit("use:1", "7")).allocations[0].grant_id == f"{SMALL}-first"
    pair.check()


# ---- spending ---------------------------------------------------------------------------------------------
def test_debits_spend_into_the_tail_in_spend_order(pair: Pair) -> None:
    # Given 8 grants of 10 of mixed priority, expiry and category
    for index in range(8):
        pair.grant(
            f"g{index}",
            "10",
            priority=50 + (index % 3),
            category=PROMO if index % 2 else Category.PAID,
            expires_at=pair.clock.now + timedelta(days=5 + (index * 7) % 11),
        )
    # When debits of every size follow, one spanning most of the tail
    for index, amount in enumerate(("3", "15", "0.5", "41", "12")):
        pair.same(pair.debit(f"use:{index}", amount))
        pair.check()
    # Then a debit of more than is left is refused with what is available, on both
    refused = pair.same(pair.debit("use:too-much", "100"))
    assert isinstance(refused, InsufficientCredits) and refused.available == D("8.5")
    pair.check()


def test_an_overage_debit_takes_the_whole_tail(pair: Pair) -> None:
    _grants(pair, 6, "2")
    allow = OverageSettings(OveragePolicy.ALLOW)
    for ledger in pair.ledgers.values():
        ledger._overage_settings = lambda _account: allow
    entry = pair.same(pair.debit("use:over", "20", allow_overage=True))
    assert entry.amount == -12 and entry.metadata["overage"] == "8"
    assert pair.tail_count() == 0
    pair.check()


# ---- time and grant operations on grants kept apart ----------------------------------------------------------
def test_tail_grants_past_expiry_are_not_spendable_before_the_job_expires_them(pair: Pair) -> None:
    # Given 5 grants, the ones apart expiring tomorrow
    _grants(pair, 2, priority=10)
    _grants_expiring = [
        pair.grant(f"e{i}", "10", expires_at=pair.clock.now + timedelta(days=1)) for i in range(3)
    ]
    assert _grants_expiring and pair.tail_count() == 3
    # When two days pass / Then what is available excludes them, and a debit cannot reach them
    pair.clock.advance(timedelta(days=2))
    assert pair.small.balance(SMALL).available == 20
    refused = pair.same(pair.debit("use:1", "25"))
    assert isinstance(refused, InsufficientCredits) and refused.available == 20
    # When the job expires them (one transaction each, each as small as the first)
    for index in range(3):
        for account, ledger in pair.ledgers.items():
            outcome = ledger.expire(f"{account}-e{index}", pair.clock.now)
            assert outcome is not None and outcome.entry.amount == -10
    # Then they are gone from the tail, and the books hold
    assert pair.tail_count() == 0
    pair.check()


def test_void_hold_release_and_refund_of_tail_grants(pair: Pair) -> None:
    _grants(pair, 6)
    for account, ledger in pair.ledgers.items():
        assert ledger.hold(f"{account}-g04", key=f"{account}:hold") is not None
        assert ledger.void(f"{account}-g05") is not None
        ledger.revoke(f"{account}-g03", D(4), key=f"{account}:refund")
    pair.check()
    assert pair.small.balance(SMALL).held == 10
    # a debit now spends the partly refunded grant where it sorts, never the held one
    pair.same(pair.debit("use:1", "35"))
    for account, ledger in pair.ledgers.items():
        assert ledger.release(f"{account}-g04", key=f"{account}:release") is not None
    pair.same(pair.debit("use:2", "11"))
    pair.check()


def test_reservations_pin_tail_grants_on_the_item(pair: Pair) -> None:
    _grants(pair, 5)
    for account, ledger in pair.ledgers.items():
        service = Reservations.over(ledger.repository, pair.clock)
        request = ReserveRequest(
            reservation_id=f"{account}-job", account_id=account, credits=D(35), expires_in=3600
        )
        answer = service.reserve(request)
        assert [a.amount for a in answer.record.allocations] == [D(10), D(10), D(10), D(5)]
    # the grants it holds are on the item; a debit spends around them
    state = pair.small.repository.state(SMALL, consistent=True, next_expiry=False)
    held = {a.grant_id for r in state.reservations.values() for a in r.allocations}
    assert held <= set(state.grants)
    pair.same(pair.debit("use:1", "12"))
    for account, ledger in pair.ledgers.items():
        service = Reservations.over(ledger.repository, pair.clock)
        service.capture(service.record(f"{account}-job"), D(20), allow_overrun=False)
    pair.check()


# ---- readers ----------------------------------------------------------------------------------------------
def test_listings_and_reconcile_see_the_grants_kept_apart(pair: Pair, moto_tables: Any) -> None:
    _grants(pair, 5)
    pair.same(pair.debit("use:1", "23"))
    views = {g.grant_id: (g.remaining, g.status) for g in all_grants(pair.small, SMALL)}
    assert views == {
        f"{SMALL}-g00": (0, GrantStatus.DEPLETED),
        f"{SMALL}-g01": (0, GrantStatus.DEPLETED),
        f"{SMALL}-g02": (7, GrantStatus.ACTIVE),
        f"{SMALL}-g03": (10, GrantStatus.ACTIVE),
        f"{SMALL}-g04": (10, GrantStatus.ACTIVE),
    }
    assert pair.small.grant_view(f"{SMALL}-g04").remaining == 10
    job = ReconcileJob(pair.small.repository, ReconcileRepository(moto_tables.client, pair.table), _NoBus())
    result = job.check(Checkpoint(SMALL, 0, D(0)), ReconcileSummary(pair.clock.now, "run"))
    assert result.ok, result.detail()
    assert (result.grants_sum, result.balance) == (D(27), D(27))


class _NoBus:
    def publish(self, events: Any) -> None:
        raise AssertionError(f"reconcile published {events}")


def test_a_read_that_meets_a_newer_version_reads_again(pair: Pair, moto_tables: Any) -> None:
    # Given an account with a tail, and another writer committing between its item and its tail reads
    _grants(pair, 5)
    client = moto_tables.client
    raced = before_first_call(
        client, "Query", lambda: pair.small.grant(SMALL, spec(f"{SMALL}-between", "1", priority=1), key="k")
    )
    # When a debit reaches into the tail / Then it decided on one version's view: the books hold
    pair.small.debit(SMALL, DebitRequest(key=f"{SMALL}:use", amount=D(33), fingerprint="x"))
    assert len(raced) == 1
    assert assert_books_balance(pair.small, SMALL) == D(18)
    assert layout_problems(client, pair.table, SMALL, pair.clock.now) == []


def test_a_balance_read_while_a_tail_grant_is_expired_reads_one_version(pair: Pair, moto_tables: Any) -> None:
    # Given 2 grants on the item and one apart that expired yesterday, not yet written off
    _grants(pair, 2, priority=10)
    pair.small.grant(
        SMALL, spec(f"{SMALL}-late", "10", expires_at=pair.clock.now + timedelta(days=1)), key="k"
    )
    pair.clock.advance(timedelta(days=2))
    # the expiry job writes it off between the balance's item read and its tail read
    raced = before_first_call(
        moto_tables.client, "Query", lambda: pair.small.expire(f"{SMALL}-late", pair.clock.now)
    )
    # When the balance is read / Then it is one version's: the expired grant never counts
    balance = pair.small.balance(SMALL)
    assert len(raced) == 1 and raced[0] is not None
    assert balance.available == 20


def test_a_tail_of_grants_that_never_expire_reads_without_expiry_queries_going_wrong(pair: Pair) -> None:
    # Given the item's grants expire, and the ones kept apart never do (they sort after every expiring one)
    pair.grant("soon", "10", expires_at=pair.clock.now + timedelta(days=3))
    pair.grant("later", "10", expires_at=pair.clock.now + timedelta(days=4))
    _grants(pair, 3)
    assert pair.tail_count() == 3
    # Then the balance, a debit reaching into them and their expiry-free reads all agree
    assert pair.small.balance(SMALL).next_expiry_at == pair.clock.now + timedelta(days=3)
    pair.same(pair.debit("use:1", "25"))
    pair.check()


def test_a_balance_reads_the_first_grants_of_each_expiring_run_not_a_page(
    pair: Pair, moto_tables: Any
) -> None:
    # Given 30 expiring grants of two priorities, 28 kept apart; those spent last expire first
    for index in range(30):
        pair.grant(
            f"e{index:02d}",
            "1",
            priority=40 + 20 * (index % 2),
            expires_at=pair.clock.now + timedelta(days=10 - 8 * (index % 2), hours=index),
        )
    assert pair.tail_count() == 28
    read: list[int] = []

    def counted(parsed: dict[str, Any], **_: Any) -> None:
        read.append(len(parsed.get("Items", [])))

    events = moto_tables.client.meta.events
    events.register("after-call.dynamodb.Query", counted)
    # When the balance is read / Then its next expiry came from at most two grants per priority's run
    balance = pair.small.balance(SMALL)
    events.unregister("after-call.dynamodb.Query", counted)
    assert balance.next_expiry_at == pair.clock.now + timedelta(days=2, hours=1)  # kept apart
    assert len(read) == 2 and sum(read) <= 4, read
    pair.check()


def test_a_tail_of_more_priorities_than_the_item_counts_is_read_by_scanning(pair: Pair) -> None:
    # Given 24 grants of as many priorities, expiring in an order that is not their priority order
    for index in range(24):
        pair.grant(
            f"p{index:02d}",
            "10",
            priority=100 - index,
            expires_at=pair.clock.now + timedelta(days=1 + (index * 5) % 24),
        )
    stored = pair.small.repository.state(SMALL, consistent=True, next_expiry=False).storage
    assert isinstance(stored, lg.StoredGrants) and stored.tail is not None and stored.tail.groups is None
    # Then the next expiry, grants past their expiry, spending and expiring all agree with the whole item
    pair.check()
    pair.clock.advance(timedelta(days=3, hours=1))
    pair.check()
    pair.same(pair.debit("use:1", "95"))
    due = [index for index in range(24) if 1 + (index * 5) % 24 <= 3]  # expired by now
    for index in due:
        for account, ledger in pair.ledgers.items():
            ledger.expire(f"{account}-p{index:02d}", pair.clock.now)
    pair.check()


def test_reconcile_reports_a_tail_summary_that_disagrees_with_its_items(pair: Pair, moto_tables: Any) -> None:
    # Given a tail item changed behind the ledger's back (its remaining no longer what the item counts)
    _grants(pair, 4)
    client = moto_tables.client
    pk = {"S": f"ACCOUNT#{SMALL}"}
    tail = client.query(
        TableName=pair.table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :l)",
        ExpressionAttributeValues={":pk": pk, ":l": {"S": lg.LIVE_PREFIX}},
    )["Items"]
    client.update_item(
        TableName=pair.table,
        Key={"pk": pk, "sk": tail[0]["sk"]},
        UpdateExpression="SET r = :r",
        ExpressionAttributeValues={":r": {"N": "9"}},
    )
    # When reconcile checks the account / Then it is a mismatch naming the grants apart
    registry = ReconcileRepository(client, pair.table)
    registry.register(SMALL, pair.clock.now)
    bus = RecordingBus()
    job = ReconcileJob(pair.small.repository, registry, bus)
    result = job.check(Checkpoint(SMALL, 0, D(0)), ReconcileSummary(pair.clock.now, "run"))
    assert not result.ok
    assert "grants_apart" in {p.code for p in result.problems}
    assert len(bus.events) == 1


def test_a_refusal_decided_while_a_tail_grant_is_expired_is_decided_again(
    pair: Pair, moto_tables: Any
) -> None:
    # Given 20 on the item and 10 apart that expired yesterday, not yet written off
    _grants(pair, 2, priority=10)
    pair.small.grant(
        SMALL, spec(f"{SMALL}-late", "10", expires_at=pair.clock.now + timedelta(days=1)), key="k"
    )
    pair.clock.advance(timedelta(days=2))
    client = moto_tables.client
    queries: list[int] = []

    def expire_between(**_: Any) -> None:
        # written off between the item read and the tail read of the strongly consistent read that a
        # refusal on an eventually consistent one asks for
        queries.append(1)
        if len(queries) == 2:
            assert pair.small.expire(f"{SMALL}-late", pair.clock.now) is not None

    client.meta.events.register("before-call.dynamodb.Query", expire_between)
    # When a debit of 35 is refused / Then it says what one version had available: 20, not 30
    with pytest.raises(InsufficientCredits) as refused:
        pair.small.debit(SMALL, DebitRequest(key=f"{SMALL}:use", amount=D(35), fingerprint="x"))
    client.meta.events.unregister("before-call.dynamodb.Query", expire_between)
    assert len(queries) >= 2
    assert refused.value.available == 20


def test_a_transition_on_a_tail_grant_its_caller_did_not_name_reads_it(pair: Pair) -> None:
    # Given 6 grants (4 kept apart), and callers that decide on a grant without naming it to the read, as
    # the Stripe webhook's refunds, disputes and subscription periods once did
    _grants(pair, 6)
    for account, ledger in pair.ledgers.items():
        refunded, voided = ledger.grant_record(f"{account}-g05"), ledger.grant_record(f"{account}-g04")
        refund = EntryContext(f"{account}:refund", pair.clock.now, "re_1")
        void = EntryContext(f"{account}:void", pair.clock.now, "dp_1")
        # When one refunds a grant kept apart and another voids one / Then both take effect
        refund_entry = ledger.execute(
            account, refund.entry_key, "", lambda s, r=refunded, c=refund: tr.revoke(s, r, D(10), c)
        )
        void_entry = ledger.execute(account, void.entry_key, "", lambda s, r=voided, c=void: tr.void(s, r, c))
        assert (refund_entry.entry.amount, void_entry.entry.amount) == (-10, -10)
    assert pair.small.balance(SMALL).available == 40
    pair.check()


def test_a_debit_spanning_a_long_tail_writes_within_one_transaction(pair: Pair) -> None:
    # Given 72 grants of 1 (70 kept apart): a debit of all of them closes 30, leaves 42 spent on the item
    _grants(pair, 72, "1")
    pair.same(pair.debit("use:all", "72"))
    pair.check()
    # When new grants come and go, the tail empties and fills again past the spent grants' copies
    _grants(pair, 5, "3", priority=10)
    pair.same(pair.debit("use:more", "4"))
    _grants(pair, 5, "2", priority=90)
    pair.same(pair.debit("use:last", "20"))
    pair.check()


def test_the_actions_a_chunk_counts_are_the_actions_it_writes(pair: Pair, monkeypatch: Any) -> None:
    # Given every write of the small account checks action_count (what a chunk of debits weighs itself by)
    repository = pair.small.repository
    built = repository.write_actions
    counted: list[int] = []

    def checked(change: Any, expected_version: int, *conditions: Any) -> list[dict[str, Any]]:
        actions = built(change, expected_version, *conditions)
        assert repository.action_count(change) == len(actions)
        counted.append(len(actions))
        return actions

    monkeypatch.setattr(repository, "write_actions", checked)
    # When writes add grants, move grants out and in, close spent ones and delete copies
    _grants(pair, 30, "1")
    pair.same(pair.debit("use:most", "25"))
    _grants(pair, 4, "2", priority=10)
    pair.same(pair.debit("use:rest", "9"))
    # Then the counts agreed, on transactions of more than a few actions too
    assert max(counted) > 20
    pair.check()


def test_grants_read_past_their_expiry_go_back_apart_without_growing_the_item(pair: Pair) -> None:
    # Given 40 grants that expired yesterday, spent first, not yet written off, kept apart, and 5 that last
    for index in range(40):
        pair.grant(
            f"x{index:02d}", "1", priority=10, category=PROMO, expires_at=pair.clock.now + timedelta(hours=1)
        )
    _grants(pair, 5)
    pair.clock.advance(timedelta(days=1))
    # When a debit reads them all (they sort first) / Then the item keeps at most its head's worth
    pair.same(pair.debit("use:1", "25"))
    state = pair.small.repository.state(SMALL, consistent=True, next_expiry=False)
    stored = state.storage
    assert isinstance(stored, lg.StoredGrants)
    assert len(state.grants) - len(stored.read_from_tail) <= 2 + 1  # the item's grants (one spent)
    pair.check()


def test_expiring_many_grants_kept_apart_reads_each_once(pair: Pair, moto_tables: Any) -> None:
    # Given 30 grants kept apart, all past their expiry
    _grants(pair, 2, priority=10)
    for index in range(30):
        pair.grant(f"x{index:02d}", "1", expires_at=pair.clock.now + timedelta(hours=1, minutes=index))
    pair.clock.advance(timedelta(days=1))
    queries: list[int] = []
    moto_tables.client.meta.events.register("before-call.dynamodb.Query", lambda **_: queries.append(1))
    # When the job expires them one by one / Then no expiry reads the others
    for index in range(30):
        assert pair.small.expire(f"{SMALL}-x{index:02d}", pair.clock.now) is not None
    assert queries == []
    assert pair.small.balance(SMALL).available == 20


def test_a_listing_answers_one_version_of_the_account(pair: Pair, moto_tables: Any) -> None:
    # Given 8 grants of 10 listed 4 to a page, 2 of the first page voided, and a debit of 25 committed
    # between the listing's two pages (it spends g00, g03 and half of g04)
    _grants(pair, 8)
    for name in ("g01", "g02"):
        assert pair.small.void(f"{SMALL}-{name}") is not None
    reads: list[int] = []

    def debit_between(**kwargs: Any) -> None:
        if kwargs["params"].get("IndexName") == "GrantsByAccount":
            reads.append(1)
            if len(reads) == 2:
                pair.small.debit(SMALL, DebitRequest(key="use:between", amount=D(25), fingerprint="25"))

    moto_tables.client.meta.events.register("provide-client-params.dynamodb.Query", debit_between)
    # When the active grants are listed (the filter reads both pages)
    listing = pair.small.grants(SMALL, 4, status=GrantStatus.ACTIVE)
    # Then it is the listing of one version: before the debit, or after it, never half of each
    shown = [(g.grant_id.removeprefix(f"{SMALL}-"), g.remaining) for g in listing.items]
    before = [("g00", 10), ("g03", 10), ("g04", 10), ("g05", 10)]
    after = [("g04", 5), ("g05", 10), ("g06", 10), ("g07", 10)]
    assert shown in (before, after), shown
