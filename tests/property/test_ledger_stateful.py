"""Stateful model test: random sequences of ledger operations on moto against an independent in-memory model.

The model below is written from the contract alone (its own spend order, its own bookkeeping); it never calls
credits_ledger.domain to compute an expected value. After every step the table must agree with it:
balance == sum of ledger amounts == model balance, never negative, each live grant's remaining and held flag
as in the model; every debit's allocations are the model's spend order; every replay is a no-op that returns
the first entry. A debit may lose its first race, or meet another committer's busy mark between its read
and its write, and then goes through the account's debit queue; another committer may mark the account busy
between any two steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from moto import mock_aws

from credits_dev.local.tables import delete_tables, table_requests
from credits_dev.local.template import DEFAULT_TEMPLATE, load_template
from credits_ledger.domain.balance import balance as balance_of
from credits_ledger.domain.errors import (
    GrantNotDue,
    IdempotencyMismatch,
    InsufficientCredits,
    InvalidTransition,
)
from credits_ledger.domain.models import Allocation, Category, EntryType, LedgerEntry
from credits_ledger.ledger import QUEUE_BUSY, DebitRequest, Outcome, utc_now
from tests.support.faults import first_race_loser
from tests.support.ledger import FakeClock, all_entries, make_ledger, spec
from tests.support.live_grants import layout_problems

D = Decimal
ACCT = "cus_model"
FAR = datetime.max.replace(tzinfo=UTC)

amounts = st.decimals(min_value="0.01", max_value="40", places=2) | st.decimals(
    min_value="0.000001", max_value="5", places=6
)
# (amount, category, priority, expires in hours or None, starts in hours): few distinct values, so ties happen
GrantShape = tuple[Decimal, str, int, int | None, int]
grant_shapes = st.tuples(
    amounts,
    st.sampled_from(["paid", "promotional"]),
    st.sampled_from([10, 50, 50]),
    st.sampled_from([None, None, 24, 48, 48]),
    st.sampled_from([0, 0, 0, 6]),
)


# ---- the independent model ---------------------------------------------------------------------------------
@dataclass
class ModelGrant:
    grant_id: str
    remaining: Decimal
    category: str  # "paid" | "promotional"
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    held: bool = False
    closed: str | None = None  # None while live, else "depleted" | "expired" | "voided"


@dataclass
class Replayable:
    """A committed operation: running it again must return ``first`` and change nothing."""

    name: str
    run: Callable[[], Outcome | None]
    first: LedgerEntry


class Model:
    def __init__(self) -> None:
        self.grants: dict[str, ModelGrant] = {}
        self.committed: dict[str, LedgerEntry] = {}  # idempotency key -> first entry
        self.balance = D(0)

    def live(self) -> dict[str, ModelGrant]:
        return {g.grant_id: g for g in self.grants.values() if g.closed is None}

    def spendable(self, now: datetime) -> list[ModelGrant]:
        usable = [
            g
            for g in self.live().values()
            if not g.held and g.effective_at <= now and (g.expires_at is None or now < g.expires_at)
        ]
        # Contract: lowest priority, earliest expiry (never-expiring last), promotional before paid,
        # oldest effective_at, grant id.
        return sorted(
            usable,
            key=lambda g: (
                g.priority,
                g.expires_at or FAR,
                g.category != "promotional",
                g.effective_at,
                g.grant_id,
            ),
        )

    def available(self, now: datetime) -> Decimal:
        return sum((g.remaining for g in self.spendable(now)), D(0))

    def plan_debit(self, amount: Decimal, now: datetime) -> list[tuple[str, Decimal]] | None:
        left, plan = amount, []
        for grant in self.spendable(now):
            if left == 0:
                break
            take = min(left, grant.remaining)
            plan.append((grant.grant_id, take))
            left -= take
        return plan if left == 0 else None

    def take(self, grant_id: str, amount: Decimal, closes_as: str) -> None:
        grant = self.grants[grant_id]
        grant.remaining -= amount
        self.balance -= amount
        if grant.remaining == 0:
            grant.closed = closes_as


# ---- the machine -------------------------------------------------------------------------------------------
CONTENTION = ("none", "lost race", "marked after read")


class LedgerMachine(RuleBasedStateMachine):
    replayables = Bundle("replayables")

    # Set by the test: one moto mock, client and parsed template.yaml for all examples (starting moto and
    # parsing the template cost more than an example); each example creates fresh tables from the template's
    # definitions (key schema and indexes as declared there) and deletes them when it ends.
    client: Any = None
    template: dict[str, Any] = {}
    examples = 0
    # Settled grants the account item holds (dal/live_grants.py): the default, or a small one that keeps most
    # grants in the tail, so every rule meets grants stored apart from the item too.
    head_size: int | None = None

    def __init__(self) -> None:
        super().__init__()
        LedgerMachine.examples += 1
        suffix = f"-{LedgerMachine.examples}"
        self.tables: dict[str, str] = {}
        for logical_id, request in table_requests(self.template, name_suffix=suffix).items():
            request.pop("_ttl", None)  # TTL plays no part here
            self.client.create_table(**request)
            self.tables[logical_id] = request["TableName"]
        self.clock = FakeClock()
        self.ledger = make_ledger(
            self.client, self.tables["CreditsTable"], self.clock, head_size=self.head_size
        )
        self.model = Model()
        self.counter = 0
        self.entries_seen = 0
        self.ledger_sum = D(0)

    def teardown(self) -> None:
        try:
            # the whole ledger, read once: same entries, same sum as seen step by step
            entries = all_entries(self.ledger, ACCT)
            assert len(entries) == len(self.model.committed)
            assert sum((e.amount for e in entries), D(0)) == self.model.balance
            assert {e.entry_key: e for e in entries} == self.model.committed
            # the account's debit queue is empty: every queued debit was committed or answered and removed
            queued = self.client.query(
                TableName=self.tables["CreditsTable"],
                KeyConditionExpression="pk = :pk AND begins_with(sk, :d)",
                ExpressionAttributeValues={":pk": {"S": f"ACCOUNT#{ACCT}"}, ":d": {"S": "DEBIT"}},
                ConsistentRead=True,
            )
            assert queued["Items"] == []
        finally:
            delete_tables(self.client, self.tables.values())

    # -- helpers --
    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter:03d}"

    def _version(self) -> int:
        return self.ledger.repository.state(ACCT, consistent=True).version

    def _committed(self, key: str, entry: LedgerEntry, run: Callable[[], Outcome | None], name: str) -> Any:
        assert entry.entry_key == key
        assert entry.balance_after == self.model.balance
        self.model.committed[key] = entry
        return Replayable(name, run, entry)

    def _expect_replay(self, key: str, outcome: Outcome | None) -> Any:
        assert outcome is not None and outcome.replayed, f"{key} should replay"
        assert outcome.entry == self.model.committed[key]
        return multiple()

    # -- rules --
    def _pick_grant(self, data: st.DataObject) -> tuple[str, ModelGrant]:
        """(grant id, its model) of a grant hypothesis picks."""
        grant_id = data.draw(st.sampled_from(sorted(self.model.grants)), label="grant")
        return grant_id, self.model.grants[grant_id]

    def _grant(self, shape: GrantShape) -> Replayable:
        amount, category, priority, expires_in_hours, starts_in_hours = shape
        grant_id, key = self._next("gr_"), self._next("g:")
        now = self.clock.now
        effective = now + timedelta(hours=starts_in_hours)
        expires = effective + timedelta(hours=expires_in_hours) if expires_in_hours is not None else None
        grant_spec = spec(
            grant_id,
            amount,
            category=Category(category),
            priority=priority,
            effective_at=effective if starts_in_hours else None,
            expires_at=expires,
        )
        run = lambda: self.ledger.grant(ACCT, grant_spec, key=key, fingerprint=key)  # noqa: E731
        outcome = run()
        self.model.grants[grant_id] = ModelGrant(grant_id, amount, category, priority, effective, expires)
        self.model.balance += amount
        assert not outcome.replayed
        assert (outcome.entry.type, outcome.entry.amount) == (EntryType.GRANT, amount)
        return self._committed(key, outcome.entry, run, "grant")

    @initialize(target=replayables, shapes=st.lists(grant_shapes, min_size=1, max_size=5))
    def start_with_grants(self, shapes: list[GrantShape]) -> Any:
        # Given an account with a few grants that often tie on priority/expiry (so every key of the
        # spend order matters)
        return multiple(*(self._grant(shape) for shape in shapes))

    @rule(target=replayables, shape=grant_shapes)
    def grant(self, shape: GrantShape) -> Any:
        return self._grant(shape)

    def _mark_busy(self) -> None:
        """Another instance's queue committer, having lost a race, marks the account busy (for 1 s)."""
        self.ledger.repository.mark_queue_busy(ACCT, utc_now() + QUEUE_BUSY)

    @contextmanager
    def _contention(self, contention: str) -> Iterator[None]:
        """``lost race``: the next commit loses its race (another writer moved the account's version);
        ``marked after read``: another committer marks the account busy just before it; either way a debit
        goes through the account's debit queue (combining.py)."""
        if contention == "none":
            yield
            return
        repository = self.ledger.repository
        if contention == "lost race":
            _, commit = first_race_loser(repository)
        else:
            real, marked = repository.commit, []

            def commit(change: Any, **kwargs: Any) -> None:
                if not marked:
                    marked.append(True)
                    self._mark_busy()
                real(change, **kwargs)

        setattr(repository, "commit", commit)  # noqa: B010
        try:
            yield
        finally:
            del repository.commit

    @rule()
    def another_committer_marks_the_account_busy(self) -> None:
        # every write within the next second meets the mark: debits join the queue, the rest carry it
        self._mark_busy()

    @rule(target=replayables, amount=amounts, contention=st.sampled_from(CONTENTION))
    def debit(self, amount: Decimal, contention: str) -> Any:
        key = self._next("use:")
        request = DebitRequest(key=key, amount=amount, fingerprint=f"body-{key}")

        def run() -> Outcome:
            with self._contention(contention):
                return self.ledger.debit(ACCT, request)

        plan = self.model.plan_debit(amount, self.clock.now)
        if plan is None:
            version = self._version()
            try:
                run()
            except InsufficientCredits as exc:
                assert exc.available == self.model.available(self.clock.now)
            else:
                raise AssertionError(
                    f"debit of {amount} should be refused: model has {self.model.available(self.clock.now)}"
                )
            assert self._version() == version
            return multiple()
        outcome = run()
        # debits follow spend order: the allocations are exactly the model's plan
        assert outcome.entry.allocations == tuple(Allocation(g, a) for g, a in plan)
        assert (outcome.entry.type, outcome.entry.amount) == (EntryType.DEBIT, -amount)
        for grant_id, take in plan:
            self.model.take(grant_id, take, "depleted")
        return self._committed(key, outcome.entry, run, "debit")

    @rule(hours=st.integers(1, 48))
    def advance_clock(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    @precondition(lambda self: self.model.grants)
    @rule(target=replayables, data=st.data())
    def expire(self, data: st.DataObject) -> Any:
        grant_id, grant = self._pick_grant(data)
        key = f"expire:{grant_id}"
        if grant.expires_at is not None and self.clock.now < grant.expires_at:
            self.clock.set(grant.expires_at + timedelta(minutes=1))  # the job runs after the expiry
        as_of = self.clock.now
        run = lambda: self.ledger.expire(grant_id, as_of)  # noqa: E731
        if key in self.model.committed:
            return self._expect_replay(key, run())
        if grant.closed is None and grant.expires_at is None:
            with pytest.raises(GrantNotDue):
                run()
            return multiple()
        outcome = run()
        if grant.closed is not None:
            assert outcome is None
            return multiple()
        assert outcome is not None
        assert outcome.entry.allocations == (Allocation(grant_id, grant.remaining),)
        assert (outcome.entry.type, outcome.entry.amount) == (EntryType.EXPIRE, -grant.remaining)
        self.model.take(grant_id, grant.remaining, "expired")
        return self._committed(key, outcome.entry, run, "expire")

    @precondition(lambda self: self.model.grants)
    @rule(target=replayables, data=st.data())
    def void(self, data: st.DataObject) -> Any:
        grant_id, grant = self._pick_grant(data)
        key = f"void:{grant_id}"
        run = lambda: self.ledger.void(grant_id)  # noqa: E731
        if key in self.model.committed:
            return self._expect_replay(key, run())
        outcome = run()
        if grant.closed is not None:
            assert outcome is None
            return multiple()
        assert outcome is not None
        assert (outcome.entry.type, outcome.entry.amount) == (EntryType.VOID, -grant.remaining)
        self.model.take(grant_id, grant.remaining, "voided")
        return self._committed(key, outcome.entry, run, "void")

    def _set_held(self, data: st.DataObject, held: bool) -> Any:
        """Hold (``held``) or release a picked grant: a no-op on a closed grant, refused on one already so."""
        grant_id, grant = self._pick_grant(data)
        entry_type = EntryType.HOLD if held else EntryType.RELEASE
        change = self.ledger.hold if held else self.ledger.release
        key = self._next(f"{entry_type.value}:")
        run = lambda: change(grant_id, key=key)  # noqa: E731
        if grant.closed is not None:
            assert run() is None
            return multiple()
        if grant.held == held:
            with pytest.raises(InvalidTransition):
                run()
            return multiple()
        outcome = run()
        assert outcome is not None
        assert (outcome.entry.type, outcome.entry.amount) == (entry_type, 0)
        if held:
            assert outcome.entry.allocations == (Allocation(grant_id, grant.remaining),)
        grant.held = held
        return self._committed(key, outcome.entry, run, entry_type.value)

    @precondition(lambda self: self.model.grants)
    @rule(target=replayables, data=st.data())
    def hold(self, data: st.DataObject) -> Any:
        return self._set_held(data, held=True)

    @precondition(lambda self: self.model.grants)
    @rule(target=replayables, data=st.data())
    def release(self, data: st.DataObject) -> Any:
        return self._set_held(data, held=False)

    @precondition(lambda self: self.model.grants)
    @rule(target=replayables, data=st.data(), amount=amounts)
    def revoke(self, data: st.DataObject, amount: Decimal) -> Any:
        grant_id, grant = self._pick_grant(data)
        key = self._next("refund:")
        run = lambda: self.ledger.revoke(grant_id, amount, key=key)  # noqa: E731
        taken = min(amount, grant.remaining) if grant.closed is None else D(0)
        outcome = run()
        assert (outcome.entry.type, outcome.entry.amount) == (EntryType.REVOKE, -taken)
        assert outcome.entry.allocations == ((Allocation(grant_id, taken),) if taken else ())
        assert D(outcome.entry.metadata["shortfall"]) == amount - taken
        if taken:
            self.model.take(grant_id, taken, "voided")
        return self._committed(key, outcome.entry, run, "revoke")

    @rule(previous=replayables)
    def replay(self, previous: Replayable) -> None:
        # Given an operation that committed earlier; When it is sent again
        version, balance = self._version(), self.model.balance
        outcome = previous.run()
        # Then it is a no-op returning the first entry
        assert outcome is not None and outcome.replayed, f"replay of {previous.name} was applied again"
        assert outcome.entry == previous.first
        assert self._version() == version and self.model.balance == balance

    @rule(previous=replayables)
    def replay_debit_with_other_body(self, previous: Replayable) -> None:
        if previous.name != "debit":
            return
        version = self._version()
        with pytest.raises(IdempotencyMismatch):
            self.ledger.debit(
                ACCT, DebitRequest(key=previous.first.entry_key, amount=D(1), fingerprint="other")
            )
        assert self._version() == version

    # -- invariants --
    @invariant()
    def books_agree_with_the_model(self) -> None:
        state = self.ledger.repository.state(ACCT, consistent=True, all_grants=True)
        assert state.ledger_balance == self.model.balance
        assert state.ledger_balance >= 0
        assert state.version == len(self.model.committed)
        # sum of ledger amounts == balance: entries are immutable, so read only the ones new since the last
        # step (newest first) and keep a running sum; teardown re-reads the whole ledger once
        new = state.version - self.entries_seen
        page = self.ledger.transactions(ACCT, max(new, 1))
        fresh = [e for e in page.items if e.seq > self.entries_seen]
        assert [e.seq for e in fresh] == list(range(state.version, self.entries_seen, -1))  # newest first
        for entry in reversed(fresh):
            self.ledger_sum += entry.amount
            assert entry.balance_after == self.ledger_sum
        self.entries_seen = state.version
        assert self.ledger_sum == state.ledger_balance
        live = self.model.live()
        # (a spent grant may stay in the live map at 0 until a later change closes it: not credits)
        assert {g: (x.remaining, x.held) for g, x in state.grants.items() if x.remaining} == {
            g: (x.remaining, x.held) for g, x in live.items()
        }
        # what Ledger.balance reports for this state (without another read)
        balance = balance_of(state, self.clock.now)
        assert balance.available == self.model.available(self.clock.now)
        assert balance.ledger_balance == self.model.balance
        # ...and what it reports reading only what a balance needs (the tail's next expiry, not its grants)
        assert self.ledger.balance(ACCT) == balance
        # the grants kept apart from the account item are where the item says, as it says
        assert layout_problems(self.client, self.tables["CreditsTable"], ACCT, self.clock.now) == []


@pytest.mark.parametrize("head_size", [None, 2], ids=["head default", "head of 2"])
def test_ledger_matches_independent_model(head_size: int | None) -> None:
    LedgerMachine.head_size = head_size
    with mock_aws():
        LedgerMachine.client = boto3.client("dynamodb", region_name="us-east-1")
        LedgerMachine.template = load_template(DEFAULT_TEMPLATE)
        try:
            run_state_machine_as_test(
                LedgerMachine,
                settings=settings(
                    max_examples=int(os.environ.get("LEDGER_MACHINE_EXAMPLES", "30")),
                    stateful_step_count=20,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                ),
            )
        finally:
            LedgerMachine.client = None
