"""Money from the ledger: credits sold, recognized, broken and refunded, and what stays deferred (docs/money.md).

Pure. Every grant carries its cost basis (minor units of one currency, before tax). A credit taken out of a
grant releases money at that grant's cost per credit: spent (``debit``, negative ``adjustment``) is
**recognized**, ``expire``/``void`` is **breakage**, ``revoke`` (a refund) is **refunded**. Granting a grant
with a cost is **sold**. Free grants (cost 0: admin grants, trials, rollovers) carry no money.

Fractional minor units are never rounded away: the money a grant has released after ``c`` of its ``A``
credits are consumed is ``floor(cost x c / A)`` (exactly ``cost`` once ``c = A``), and an entry that moves a
grant's consumption from ``c0`` to ``c1`` releases ``released(c1) - released(c0)``. The fraction a single
entry would carry is carried by the grant's cumulative consumption, so the entries of a grant always sum
to what was released so far and, once the grant is used up, to its cost exactly. What a grant still defers
is ``cost - released(consumed)``, an integer, so per currency and for any range of days
``opening_deferred + sold - recognized - breakage - refunded = closing_deferred`` holds exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.domain.money import ZERO


class Flow(StrEnum):
    SOLD = "sold"
    RECOGNIZED = "recognized"
    BREAKAGE = "breakage"
    REFUNDED = "refunded"


# Entry types that take credits out of a grant, and what the money they release is. Types not listed here
# (hold, release, reserve, unreserve: amount 0) move no money. Values, not the enum, so types added later
# are ignored until they are given a meaning here.
OUTFLOWS: Mapping[str, Flow] = {
    "debit": Flow.RECOGNIZED,
    "adjustment": Flow.RECOGNIZED,  # a negative adjustment spends like a debit
    "expire": Flow.BREAKAGE,
    "void": Flow.BREAKAGE,
    "revoke": Flow.REFUNDED,
}
INFLOWS = frozenset({"grant", "rollover", "adjustment"})


class UnknownGrantCost(CreditsError):
    """An entry names a grant whose record (amount and cost basis) was not found."""

    def __init__(self, grant_id: str) -> None:
        super().__init__(f"no grant record for {grant_id}")
        self.grant_id = grant_id


@dataclass(frozen=True)
class GrantCost:
    """What money recognition needs of a grant: its credits and its cost basis."""

    grant_id: str
    amount: Decimal
    cost: Decimal = ZERO
    currency: str | None = None

    @property
    def carries_money(self) -> bool:
        return self.cost != 0 and self.currency is not None and self.amount > 0


def released(grant: GrantCost, consumed: Decimal) -> Decimal:
    """Money (minor units) released by the first ``consumed`` credits of ``grant``: the floor of the exact
    fraction, and exactly the cost once everything is consumed."""
    if consumed >= grant.amount:
        return grant.cost
    if consumed <= 0:
        return ZERO
    return Decimal(math.floor(Fraction(grant.cost) * Fraction(consumed) / Fraction(grant.amount)))


def outflow_money(grant: GrantCost, moved: Decimal, consumed_before: Decimal) -> Decimal:
    """Money released by taking ``moved`` credits out of ``grant`` when ``consumed_before`` were gone."""
    return released(grant, consumed_before + moved) - released(grant, consumed_before)


@dataclass(frozen=True)
class Totals:
    """Money flows of one currency over some period, in minor units."""

    sold: Decimal = ZERO
    recognized: Decimal = ZERO
    breakage: Decimal = ZERO
    refunded: Decimal = ZERO

    def plus(self, other: Totals) -> Totals:
        return Totals(
            self.sold + other.sold,
            self.recognized + other.recognized,
            self.breakage + other.breakage,
            self.refunded + other.refunded,
        )

    def with_flow(self, flow: Flow, amount: Decimal) -> Totals:
        return self.plus(Totals(**{flow.value: amount}))

    @property
    def deferred_change(self) -> Decimal:
        return self.sold - self.recognized - self.breakage - self.refunded

    @property
    def is_zero(self) -> bool:
        return not (self.sold or self.recognized or self.breakage or self.refunded)


@dataclass(frozen=True)
class Movement:
    """One money flow of one entry: on ``day``, ``amount`` minor units of ``currency`` are ``flow``."""

    day: date
    currency: str
    flow: Flow
    amount: Decimal


def entry_movements(
    entry: LedgerEntry, costs: Mapping[str, GrantCost], consumed_before: Mapping[str, Decimal]
) -> list[Movement]:
    """The money an entry moves, given each touched grant's cost and its consumption before the entry.

    ``consumed_before`` is only read for outflows; the stream derives it from the allocation's
    ``remaining_after``, a replay from the grant's earlier entries (``Replay``)."""
    kind = entry.type.value
    day = entry.created_at.date()
    moves: list[Movement] = []
    for allocation in entry.allocations:
        if allocation.amount == 0:
            continue
        if kind in INFLOWS and entry.amount > 0:
            grant = _cost(costs, allocation.grant_id)
            if grant.carries_money:
                assert grant.currency is not None
                moves.append(Movement(day, grant.currency, Flow.SOLD, grant.cost))
        elif kind in OUTFLOWS and entry.amount < 0:
            grant = _cost(costs, allocation.grant_id)
            if not grant.carries_money:
                continue
            assert grant.currency is not None
            money = outflow_money(grant, allocation.amount, consumed_before.get(allocation.grant_id, ZERO))
            if money:
                moves.append(Movement(day, grant.currency, OUTFLOWS[kind], money))
    return moves


def consumed_before_from_allocations(
    entry: LedgerEntry, costs: Mapping[str, GrantCost]
) -> dict[str, Decimal]:
    """Each outflow allocation's grant consumption before the entry, from ``remaining_after`` (stream side).

    Allocations without it (entries written before it was recorded) are left out: see ``missing_positions``."""
    placed: dict[str, Decimal] = {}
    for allocation in entry.allocations:
        if allocation.remaining_after is None or allocation.grant_id not in costs:
            continue
        grant = costs[allocation.grant_id]
        placed[allocation.grant_id] = grant.amount - allocation.remaining_after - allocation.amount
    return placed


def missing_positions(entry: LedgerEntry) -> list[str]:
    """Grants an outflow entry touched without saying what they had left (recognized without carry)."""
    if entry.type.value not in OUTFLOWS or entry.amount >= 0:
        return []
    return [a.grant_id for a in entry.allocations if a.amount and a.remaining_after is None]


def _cost(costs: Mapping[str, GrantCost], grant_id: str) -> GrantCost:
    grant = costs.get(grant_id)
    if grant is None:
        raise UnknownGrantCost(grant_id)
    return grant


def add_movements(
    days: dict[tuple[date, str], Totals], movements: Iterable[Movement]
) -> dict[tuple[date, str], Totals]:
    for move in movements:
        key = (move.day, move.currency)
        days[key] = days.get(key, Totals()).with_flow(move.flow, move.amount)
    return days


class Replay:
    """Money of a whole ledger, entry by entry in each account's order (the rebuild and the tests):
    consumption per grant is counted here, so entries need no ``remaining_after``."""

    def __init__(self, costs: Mapping[str, GrantCost]) -> None:
        self.costs = costs
        self.consumed: dict[str, Decimal] = {}
        self.granted: set[str] = set()
        self.days: dict[tuple[date, str], Totals] = {}

    def add(self, entry: LedgerEntry) -> list[Movement]:
        moves = entry_movements(entry, self.costs, self.consumed)
        if entry.type.value in INFLOWS and entry.amount > 0:
            self.granted.update(a.grant_id for a in entry.allocations)
        if entry.type.value in OUTFLOWS and entry.amount < 0:
            for allocation in entry.allocations:
                self.consumed[allocation.grant_id] = (
                    self.consumed.get(allocation.grant_id, ZERO) + allocation.amount
                )
        add_movements(self.days, moves)
        return moves

    def deferred(self) -> dict[str, Decimal]:
        """What the grants granted so far still defer, per currency, from their consumption alone (not from
        the flows)."""
        out: dict[str, Decimal] = {}
        for grant_id in sorted(self.granted):
            grant = self.costs[grant_id]
            if grant.carries_money and grant.currency is not None:
                left = grant.cost - released(grant, self.consumed.get(grant.grant_id, ZERO))
                out[grant.currency] = out.get(grant.currency, ZERO) + left
        return out


@dataclass(frozen=True)
class RevenueLine:
    currency: str
    opening_deferred: Decimal
    sold: Decimal
    recognized: Decimal
    breakage: Decimal
    refunded: Decimal
    closing_deferred: Decimal


def revenue_report(days: Iterable[tuple[date, str, Totals]], start: date, end: date) -> list[RevenueLine]:
    """Per currency over the UTC days ``start..end`` (inclusive), from daily totals that go back to the
    first day (the opening balance is everything before ``start``). Currencies sorted."""
    if end < start:
        raise ValueError("the range ends before it starts")
    opening: dict[str, Decimal] = {}
    flows: dict[str, Totals] = {}
    for day, currency, totals in days:
        if day < start:
            opening[currency] = opening.get(currency, ZERO) + totals.deferred_change
            flows.setdefault(currency, Totals())
        elif day <= end:
            flows[currency] = flows.get(currency, Totals()).plus(totals)
    lines = []
    for currency in sorted(flows):
        total = flows[currency]
        start_deferred = opening.get(currency, ZERO)
        lines.append(
            RevenueLine(
                currency=currency,
                opening_deferred=start_deferred,
                sold=total.sold,
                recognized=total.recognized,
                breakage=total.breakage,
                refunded=total.refunded,
                closing_deferred=start_deferred + total.deferred_change,
            )
        )
    return lines
