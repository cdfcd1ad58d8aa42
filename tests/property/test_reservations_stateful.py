"""Hypothesis state machine: reservations (reserve, capture, release, extend, lapse and sweep) interleaved with
debits, grant expiry, voids and refunds, on the pure transitions. After every step the books hold:

- the entries continue the balance (``balance_after``), never below 0, and sum to the ledger balance, which
  the live grants hold exactly;
- what holding reservations pin on a grant is never more than it holds; nothing pins a closed grant;
- ``available + reserved + held + pending + awaiting expiry == ledger balance``, and ``reserved`` is what the
  holding reservations pin;
- a debit, a reservation or an overrun never takes what another holding reservation pins (checked against
  the pins computed here from the state before the step, not by the code under test);
- each reservation ends once: after its end its id is gone from the account and a second end is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from credits_ledger.domain import reservations as rv
from credits_ledger.domain import transitions as tr
from credits_ledger.domain.balance import balance
from credits_ledger.domain.errors import GrantNotLive, InsufficientCredits
from credits_ledger.domain.models import AccountState, Change, EntryType, Grant, Source
from credits_ledger.domain.reservations import ReservationError, ReservationNotDue
from credits_ledger.domain.transitions import EntryContext, GrantSpec

T0 = datetime(2030, 1, 1, tzinfo=UTC)
D = Decimal
amounts = st.integers(min_value=1, max_value=4000).map(lambda n: D(n) / 100)


def pins_at(state: AccountState, now: datetime) -> dict[str, Decimal]:
    """Credits pinned per grant by the reservations holding at ``now``: computed here, independently."""
    pins: dict[str, Decimal] = {}
    for reservation in state.reservations.values():
        if reservation.expires_at > now:
            for allocation in reservation.allocations:
                pins[allocation.grant_id] = pins.get(allocation.grant_id, D(0)) + allocation.amount
    return pins


def free_at(state: AccountState, now: datetime) -> dict[str, Decimal]:
    """What a debit may take from each grant at ``now``: spendable grants minus holding pins."""
    pins = pins_at(state, now)
    return {
        g.grant_id: g.remaining - pins.get(g.grant_id, D(0))
        for g in state.grants.values()
        if g.is_spendable(now)
    }


class Reservations(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = AccountState("cus_prop")
        self.now = T0
        self.running = D(0)
        self.records: dict[str, Grant] = {}
        self.counter = 0
        self.ended: set[str] = set()

    # ---- helpers -------------------------------------------------------------------------------------------
    def _key(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}:{self.counter}"

    def _ctx(self, key: str) -> EntryContext:
        return EntryContext(entry_key=key, now=self.now)

    def _commit(self, change: Change) -> None:
        for entry in change.entries:
            self.running += entry.amount
            assert entry.balance_after == self.running >= 0
            assert entry.seq == self.state.version + change.entries.index(entry) + 1
        self.state = change.state

    def _takes_only_free(self, change: Change, exclude: str | None = None) -> None:
        """Debit allocations of ``change`` never exceed what was free (outside ``exclude``'s pins)."""
        free = free_at(self.state, self.now)
        if exclude is not None and exclude in self.state.reservations:
            for allocation in self.state.reservations[exclude].allocations:
                if allocation.grant_id in free or allocation.grant_id in self.state.grants:
                    free[allocation.grant_id] = free.get(allocation.grant_id, D(0)) + allocation.amount
        for entry in change.entries:
            if entry.type in (EntryType.DEBIT, EntryType.RESERVE):
                for allocation in entry.allocations:
                    assert allocation.amount <= free.get(allocation.grant_id, D(0)), (entry, free)

    def _open(self, data: st.DataObject) -> str | None:
        if not self.state.reservations:
            return None
        return data.draw(st.sampled_from(sorted(self.state.reservations)))

    # ---- rules ---------------------------------------------------------------------------------------------
    @rule(amount=amounts, expires_hours=st.one_of(st.none(), st.integers(1, 48)), priority=st.integers(0, 3))
    def grant(self, amount: Decimal, expires_hours: int | None, priority: int) -> None:
        grant_id = f"g{self.counter:04d}"
        expires_at = self.now + timedelta(hours=expires_hours) if expires_hours else None
        spec = GrantSpec(grant_id, amount, Source("admin"), priority=priority, expires_at=expires_at)
        change = tr.grant(self.state, spec, self._ctx(self._key("grant")))
        self.records[grant_id] = change.new_grants[0]
        self._commit(change)

    @rule(amount=amounts)
    def debit(self, amount: Decimal) -> None:
        available = sum(free_at(self.state, self.now).values(), D(0))
        try:
            change = tr.debit(self.state, amount, self._ctx(self._key("usage")))
        except InsufficientCredits:
            assert amount > available
            return
        assert amount <= available
        self._takes_only_free(change)
        self._commit(change)

    @rule(amount=amounts, hours=st.integers(1, 72))
    def reserve(self, amount: Decimal, hours: int) -> None:
        rid = self._key("r")
        available = sum(free_at(self.state, self.now).values(), D(0))
        try:
            change = rv.reserve(
                self.state, rid, amount, self.now + timedelta(hours=hours), self._ctx(f"reserve:{rid}")
            )
        except InsufficientCredits:
            assert amount > available
            return
        except ReservationError:
            assert len(self.state.reservations) >= rv.MAX_OPEN_RESERVATIONS
            return
        self._takes_only_free(change)
        self._commit(change)
        assert self.state.reservations[rid].credits == amount

    @rule(data=st.data(), credits=st.one_of(st.none(), amounts), overrun=st.booleans())
    def capture(self, data: st.DataObject, credits: Decimal | None, overrun: bool) -> None:
        rid = self._open(data)
        if rid is None:
            return
        live = self.state.reservations[rid]
        before = self.state.ledger_balance
        try:
            ended = rv.capture(self.state, rid, credits, overrun, self._ctx(f"unreserve:{rid}"))
        except ReservationError:
            assert live.expires_at <= self.now or (
                credits is not None and credits > live.credits and not overrun
            )
            return
        except InsufficientCredits:
            assert overrun and credits is not None and credits > live.credits
            return
        captured = live.credits if credits is None else credits
        assert ended.captured == captured
        assert ended.released == max(live.credits - captured, D(0))
        self._takes_only_free(ended.change, exclude=rid)
        self._commit(ended.change)
        assert self.state.ledger_balance == before - captured - ended.expired
        self._ended(rid)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = self._open(data)
        if rid is None:
            return
        live = self.state.reservations[rid]
        ended = rv.release(self.state, rid, self._ctx(f"unreserve:{rid}"))
        assert ended.released == live.credits
        assert (ended.status is rv.ReservationStatus.EXPIRED) == (live.expires_at <= self.now)
        self._commit(ended.change)
        self._ended(rid)

    @rule(data=st.data())
    def sweep(self, data: st.DataObject) -> None:
        rid = self._open(data)
        if rid is None:
            return
        try:
            ended = rv.release(self.state, rid, self._ctx(f"unreserve:{rid}"), sweep=True)
        except ReservationNotDue:
            assert self.state.reservations[rid].expires_at > self.now
            return
        self._commit(ended.change)
        self._ended(rid)

    @rule(data=st.data(), hours=st.integers(1, 100))
    def extend(self, data: st.DataObject, hours: int) -> None:
        rid = self._open(data)
        if rid is None:
            return
        created = T0  # every reservation here was made at or after T0: the cap can only be tighter
        try:
            change = rv.extend(
                self.state, rid, self.now + timedelta(hours=hours), created, self._ctx(self._key("ext"))
            )
        except ReservationError:
            assert (
                self.state.reservations[rid].expires_at <= self.now
                or self.now + timedelta(hours=hours) > created + rv.MAX_LIFETIME
            )
            return
        self._commit(change)

    @rule(hours=st.integers(1, 30))
    def advance(self, hours: int) -> None:
        self.now += timedelta(hours=hours)

    @precondition(lambda self: bool(self.state.grants))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        grant_id = data.draw(st.sampled_from(sorted(self.state.grants)))
        live = self.state.grants[grant_id]
        if not live.is_expired(self.now):
            return
        pinned = pins_at(self.state, self.now).get(grant_id, D(0))
        try:
            change = tr.expire(self.state, self.records[grant_id], self._ctx(self._key("expire")))
        except GrantNotLive:
            assert live.remaining == 0 or live.remaining <= pinned
            return
        assert change.entries[0].amount == -(live.remaining - pinned if pinned else live.remaining)
        self._commit(change)

    @precondition(lambda self: bool(self.state.grants))
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        grant_id = data.draw(st.sampled_from(sorted(self.state.grants)))
        try:
            change = tr.void(self.state, self.records[grant_id], self._ctx(self._key("void")))
        except GrantNotLive:
            return
        self._commit(change)
        assert all(a.grant_id != grant_id for r in self.state.reservations.values() for a in r.allocations)

    @precondition(lambda self: bool(self.state.grants))
    @rule(data=st.data(), amount=amounts)
    def refund(self, data: st.DataObject, amount: Decimal) -> None:
        grant_id = data.draw(st.sampled_from(sorted(self.state.grants)))
        live = self.state.grants[grant_id]
        free = live.remaining - pins_at(self.state, self.now).get(grant_id, D(0))
        pins_before = {
            rid: r.credits for rid, r in self.state.reservations.items() if r.expires_at > self.now
        }
        change = tr.revoke(self.state, self.records[grant_id], amount, self._ctx(self._key("revoke")))
        self._commit(change)
        shrunk = sum(pins_before.values(), D(0)) - sum(
            (r.credits for rid, r in self.state.reservations.items() if rid in pins_before), D(0)
        )
        taken = min(amount, live.remaining)
        assert shrunk == max(taken - max(free, D(0)), D(0))  # free credits go first

    def _ended(self, rid: str) -> None:
        assert rid not in self.state.reservations
        self.ended.add(rid)
        try:
            rv.release(self.state, rid, self._ctx(f"unreserve:{rid}"))
        except ReservationError:
            return
        raise AssertionError(f"{rid} ended twice")

    # ---- invariants ----------------------------------------------------------------------------------------
    @invariant()
    def books_hold(self) -> None:
        state = self.state
        assert state.ledger_balance == self.running >= 0
        assert sum((g.remaining for g in state.grants.values()), D(0)) == state.ledger_balance
        assert all(g.remaining >= 0 for g in state.grants.values())
        pins = pins_at(state, self.now)
        for grant_id, pinned in pins.items():
            assert pinned <= state.grants[grant_id].remaining
        assert all(a.grant_id in state.grants for r in state.reservations.values() for a in r.allocations)
        b = balance(state, self.now)
        assert b.reserved == sum(pins.values(), D(0))
        awaiting = sum(
            (
                g.remaining - pins.get(g.grant_id, D(0))
                for g in state.grants.values()
                if g.is_expired(self.now)
            ),
            D(0),
        )
        assert b.available + b.reserved + b.held + b.pending + awaiting == b.ledger_balance
        assert b.available == sum(free_at(state, self.now).values(), D(0))


Reservations.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_reservations_keep_the_books = Reservations.TestCase
