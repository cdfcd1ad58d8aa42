"""Money recognition (domain/revenue.py): a hand-computed prepayment with bonus credits, the exact carry of
fractional minor units, and the deferred-revenue identity over random ledgers (hypothesis)."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credits_ledger.domain import transitions as tr
from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import AccountState, Category, CostBasis, Grant, LedgerEntry, Source
from credits_ledger.domain.payments import split_cost
from credits_ledger.domain.revenue import (
    Flow,
    GrantCost,
    Replay,
    Totals,
    add_movements,
    consumed_before_from_allocations,
    entry_movements,
    released,
    revenue_report,
)
from credits_ledger.domain.transitions import EntryContext, GrantSpec

D = Decimal
T0 = datetime(2030, 1, 1, 9, tzinfo=UTC)


@dataclass
class Book:
    """A pure account: transitions applied in order, entries and grant costs kept."""

    state: AccountState = field(default_factory=lambda: AccountState("cus_money"))
    records: dict[str, Grant] = field(default_factory=dict)
    entries: list[LedgerEntry] = field(default_factory=list)
    n: int = 0

    def _apply(self, change: tr.Change) -> LedgerEntry:
        self.state = change.state
        for grant in change.new_grants:
            self.records[grant.grant_id] = grant
        self.entries.extend(change.entries)
        return change.entries[-1]

    def _ctx(self, now: datetime) -> EntryContext:
        self.n += 1
        return EntryContext(entry_key=f"e{self.n}", now=now)

    def grant(
        self, grant_id: str, amount: str, cost: int, currency: str | None, now: datetime, **kw: object
    ) -> None:
        spec = GrantSpec(
            grant_id=grant_id,
            amount=D(amount),
            source=Source("test"),
            cost_basis=CostBasis(D(cost), currency),
            **kw,  # type: ignore[arg-type]
        )
        self._apply(tr.grant(self.state, spec, self._ctx(now)))

    def debit(self, amount: str | Decimal, now: datetime) -> LedgerEntry:
        return self._apply(tr.debit(self.state, D(amount), self._ctx(now)))

    def expire(self, grant_id: str, now: datetime) -> LedgerEntry:
        return self._apply(tr.expire(self.state, self.records[grant_id], self._ctx(now)))

    def void(self, grant_id: str, now: datetime) -> LedgerEntry:
        return self._apply(tr.void(self.state, self.records[grant_id], self._ctx(now)))

    def revoke(self, grant_id: str, amount: str | Decimal, now: datetime) -> LedgerEntry:
        return self._apply(tr.revoke(self.state, self.records[grant_id], D(amount), self._ctx(now)))

    def costs(self) -> dict[str, GrantCost]:
        return {
            g.grant_id: GrantCost(g.grant_id, g.amount, g.cost_basis.amount, g.cost_basis.currency)
            for g in self.records.values()
        }


def replay(book: Book, until: date | None = None) -> Replay:
    run = Replay(book.costs())
    for entry in book.entries:
        if until is None or entry.created_at.date() <= until:
            run.add(entry)
    return run


def stream_days(book: Book, entries: list[LedgerEntry]) -> dict[tuple[date, str], Totals]:
    """What the stream computes: each entry on its own (any order), placed by its allocations'
    ``remaining_after``."""
    costs = book.costs()
    days: dict[tuple[date, str], Totals] = {}
    for entry in entries:
        add_movements(days, entry_movements(entry, costs, consumed_before_from_allocations(entry, costs)))
    return days


def rows(days: dict[tuple[date, str], Totals]) -> list[tuple[date, str, Totals]]:
    return [(day, currency, totals) for (day, currency), totals in sorted(days.items())]


# ---- the hand-computed example -------------------------------------------------------------------------------
def test_a_100000_eur_prepayment_with_bonus_spent_refunded_and_expired_by_hand() -> None:
    # Given a 100,000 EUR payment (10,000,000 cents) for a pack of 100,000 paid credits + 20,000 bonus
    # credits; the bonus shares the payment's cost in proportion to credits (split_cost, remainder last):
    #   paid  100,000 / 120,000 x 10,000,000 = 8,333,333.33 -> 8,333,333 cents
    #   bonus the remainder                                  -> 1,666,667 cents
    shares = split_cost(10_000_000, [("paid", D(100_000)), ("bonus", D(20_000))])
    assert shares == {"paid": 8_333_333, "bonus": 1_666_667}
    book = Book()
    day1, day2, day3, day4 = (T0 + timedelta(days=n) for n in range(4))
    book.grant("paid", "100000", shares["paid"], "eur", day1, expires_at=T0 + timedelta(days=365))
    book.grant(
        "bonus",
        "20000",
        shares["bonus"],
        "eur",
        day1,
        category=Category.PROMOTIONAL,
        expires_at=T0 + timedelta(days=30),
    )
    # Day 2: 30,000 credits spent: the bonus (expires first) entirely, 10,000 of the paid grant:
    #   bonus 1,666,667 (all of it) + paid floor(8,333,333 x 10,000 / 100,000) = 833,333 -> 2,500,000
    book.debit("30000", day2)
    # Day 3: three debits of 1 credit (83.3333 cents each): the cumulative floors 833,416 / 833,499 /
    # 833,583 release 83, 83 and 84 cents: the third carries the fractions the first two left, 250 in all
    for _ in range(3):
        book.debit("1", day3)
    # Day 4: a refund revokes 25,000 paid credits: consumption 10,003 -> 35,003,
    #   floor(8,333,333 x 35,003 / 100,000) = floor(2,916,916.54999) = 2,916,916; minus 833,583 = 2,083,333
    book.revoke("paid", "25000", day4)
    # A year later the paid grant expires with 64,997 credits: the rest of its cost,
    #   8,333,333 - 2,916,916 = 5,416,417, is breakage
    year_end = T0 + timedelta(days=365)
    book.expire("paid", year_end)

    run = replay(book)
    per_day = {day: totals for (day, _), totals in run.days.items()}
    assert per_day[day1.date()] == Totals(sold=D(10_000_000))
    assert per_day[day2.date()] == Totals(recognized=D(2_500_000))
    assert per_day[day3.date()] == Totals(recognized=D(250))
    assert per_day[day4.date()] == Totals(refunded=D(2_083_333))
    assert per_day[year_end.date()] == Totals(breakage=D(5_416_417))
    day3_moves = [
        entry_movements(e, book.costs(), {"paid": D(10_000 + i)}) for i, e in enumerate(book.entries[3:6])
    ]
    assert [m[0].amount for m in day3_moves] == [D(83), D(83), D(84)]

    (line,) = revenue_report(rows(run.days), day2.date(), day4.date())
    assert (line.currency, line.opening_deferred, line.sold) == ("eur", D(10_000_000), D(0))
    assert (line.recognized, line.breakage, line.refunded) == (D(2_500_250), D(0), D(2_083_333))
    assert line.closing_deferred == D(10_000_000 - 2_500_250 - 2_083_333) == D(5_416_417)
    (whole,) = revenue_report(rows(run.days), day1.date(), year_end.date())
    assert (whole.sold, whole.recognized + whole.breakage + whole.refunded, whole.closing_deferred) == (
        D(10_000_000),
        D(10_000_000),
        D(0),
    )
    # the stream's per-entry computation (from remaining_after) gives the same days, in any order
    shuffled = list(book.entries)
    random.Random(7).shuffle(shuffled)
    assert stream_days(book, shuffled) == run.days


def test_free_credits_carry_no_money_and_amount_zero_moves_are_ignored() -> None:
    book = Book()
    book.grant("promo", "500", 0, None, T0, category=Category.PROMOTIONAL)
    book.grant("paid", "100", 1000, "usd", T0, priority=60)
    book.debit("550", T0 + timedelta(hours=1))  # 500 free + 50 paid
    book._apply(tr.hold(book.state, book.records["paid"], book._ctx(T0 + timedelta(hours=2))))
    run = replay(book)
    assert run.days == {(T0.date(), "usd"): Totals(sold=D(1000), recognized=D(500))}
    assert run.deferred() == {"usd": D(500)}


@pytest.mark.parametrize(
    ("cost", "amount", "consumed", "expected"),
    [
        (100, "3", "1", 33),  # 33.33 floored
        (100, "3", "2", 66),  # 66.66 floored
        (100, "3", "3", 100),  # all consumed: the whole cost, nothing lost
        (100, "3", "4", 100),  # never more than the cost
        (7, "0.000003", "0.000001", 2),
        (1, "1000000", "999999.999999", 0),
        (0, "10", "5", 0),
    ],
)
def test_released_is_the_floor_of_the_exact_share_and_the_whole_cost_at_the_end(
    cost: int, amount: str, consumed: str, expected: int
) -> None:
    assert released(GrantCost("g", D(amount), D(cost), "eur"), D(consumed)) == D(expected)


def test_a_report_range_starts_with_everything_before_it() -> None:
    days = [
        (date(2030, 1, 1), "eur", Totals(sold=D(1000))),
        (date(2030, 1, 2), "eur", Totals(recognized=D(100))),
        (date(2030, 1, 3), "eur", Totals(breakage=D(50), refunded=D(25))),
        (date(2030, 1, 3), "usd", Totals(sold=D(7))),
        (date(2030, 1, 9), "eur", Totals(sold=D(999))),
    ]
    eur, usd = revenue_report(days, date(2030, 1, 2), date(2030, 1, 3))
    assert eur.opening_deferred == D(1000) and eur.closing_deferred == D(825)
    assert (eur.sold, eur.recognized, eur.breakage, eur.refunded) == (D(0), D(100), D(50), D(25))
    assert (usd.opening_deferred, usd.sold, usd.closing_deferred) == (D(0), D(7), D(7))
    with pytest.raises(ValueError):
        revenue_report(days, date(2030, 1, 3), date(2030, 1, 2))


# ---- the identity over random ledgers ------------------------------------------------------------------------
amounts = st.decimals(min_value=D("0.000001"), max_value=D(5000), places=6)
operation = st.one_of(
    st.tuples(
        st.just("grant"),
        amounts,
        st.integers(min_value=0, max_value=10_000_000),
        st.sampled_from(["eur", "usd", None]),
        st.sampled_from([None, 1, 3, 40]),
    ),
    st.tuples(st.just("debit"), amounts),
    st.tuples(st.just("void"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("revoke"), st.integers(min_value=0, max_value=50), amounts),
    st.tuples(st.just("expire")),
    st.tuples(st.just("days"), st.integers(min_value=0, max_value=5)),
)


def run_operations(ops: list[tuple[object, ...]]) -> Book:
    book = Book()
    now = T0
    for op in ops:
        kind = op[0]
        if kind == "days":
            now += timedelta(days=int(op[1]), minutes=1)  # type: ignore[call-overload]
        elif kind == "grant":
            _, amount, cost, currency, valid = op
            expires = now + timedelta(days=valid) if valid else None  # type: ignore[arg-type]
            book.grant(
                f"g{len(book.records)}",
                str(amount),
                int(cost) if currency else 0,
                currency,  # type: ignore[call-overload]
                now,
                expires_at=expires,
            )
        elif kind == "debit":
            with contextlib.suppress(InsufficientCredits):
                book.debit(op[1], now)  # type: ignore[arg-type]
        elif kind in ("void", "revoke"):
            live = sorted(g for g, v in book.state.grants.items() if v.remaining > 0)
            if live:
                target = live[int(op[1]) % len(live)]  # type: ignore[call-overload]
                if kind == "void":
                    book.void(target, now)
                else:
                    book.revoke(target, op[2], now)  # type: ignore[arg-type]
        elif kind == "expire":
            for grant_id, live_grant in sorted(book.state.grants.items()):
                if live_grant.remaining > 0 and live_grant.is_expired(now):
                    book.expire(grant_id, now)
    return book


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(operation, max_size=40), cut=st.data())
def test_opening_plus_sold_minus_outflows_is_closing_deferred_exactly(
    ops: list[tuple[object, ...]], cut: st.DataObject
) -> None:
    book = run_operations(ops)
    run = replay(book)
    if not run.days:
        return
    first, last = min(d for d, _ in run.days), max(d for d, _ in run.days)
    span = (last - first).days
    start = first + timedelta(days=cut.draw(st.integers(0, span)))
    end = start + timedelta(days=cut.draw(st.integers(0, span + 1)))
    lines = {line.currency: line for line in revenue_report(rows(run.days), start, end)}
    # closing deferred from the flows == what the grants still defer, computed from their consumption alone
    before = replay(book, start - timedelta(days=1)).deferred()
    after = replay(book, end).deferred()
    for currency, line in lines.items():
        assert (
            line.opening_deferred + line.sold - line.recognized - line.breakage - line.refunded
            == line.closing_deferred
        )
        assert line.opening_deferred == before.get(currency, 0)
        assert line.closing_deferred == after.get(currency, 0)
        for value in (line.sold, line.recognized, line.breakage, line.refunded, line.closing_deferred):
            assert value >= 0 and value == value.to_integral_value()
    # a grant used up released exactly its cost: nothing lost to rounding, nothing minted
    for grant_id, grant in book.costs().items():
        if grant_id not in book.state.grants and grant.carries_money:
            assert run.consumed.get(grant_id, 0) == grant.amount
            assert released(grant, run.consumed[grant_id]) == grant.cost
    # the stream's per-entry computation agrees with the replay, whatever the delivery order
    shuffled = list(book.entries)
    random.Random(len(shuffled)).shuffle(shuffled)
    assert stream_days(book, shuffled) == run.days
    for totals in run.days.values():
        assert all(getattr(totals, f.value) >= 0 for f in Flow)


def test_reservations_move_no_money_and_their_capture_and_late_expiry_are_placed_exactly() -> None:
    from credits_ledger.domain import reservations

    book = Book()
    expires = T0 + timedelta(days=2)
    book.grant("g", "3", 100, "eur", T0, expires_at=expires)  # 33.33 cents a credit
    book._apply(reservations.reserve(book.state, "r1", D(2), T0 + timedelta(days=5), book._ctx(T0)))
    book.debit("1", T0 + timedelta(hours=1))  # the free credit: 33 cents
    # the grant expires while the reservation holds 2: nothing free, the job leaves it live
    after = T0 + timedelta(days=3)
    ended = reservations.capture(book.state, "r1", D(1), False, book._ctx(after))
    book._apply(ended.change)  # capture 1 (a debit), give 1 back, which expires at once (breakage)
    kinds = [e.type.value for e in book.entries]
    assert kinds == ["grant", "reserve", "debit", "debit", "unreserve", "expire"]
    run = replay(book)
    assert run.days == {
        (T0.date(), "eur"): Totals(sold=D(100), recognized=D(33)),
        (after.date(), "eur"): Totals(recognized=D(33), breakage=D(34)),
    }
    assert stream_days(book, list(reversed(book.entries))) == run.days
