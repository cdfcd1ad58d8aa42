"""Pricing simulator (docs/money.md §7): replay recorded usage under today's pricing and a proposal, per
cohort of accounts. Pure.

Usage is what the ledger recorded (each usage debit keeps its meter and quantity), summed per account,
month and meter. Accounts fall in cohorts by the credits they used over the range under today's pricing:
**light** up to the ``light`` percentile, **heavy** above the ``heavy`` percentile, **average** between.
Per cohort and pricing: the mean credits an account consumes per month, the cheapest way to buy them with
one kind of pack (packs priced in that currency: ``[packs.X] prices = {eur = 1900}``, minor units), and
the revenue per month of the whole cohort in each currency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from credits_ledger.domain.money import ZERO


@dataclass(frozen=True)
class UsageRecord:
    account_id: str
    month: str  # YYYY-MM
    meter: str
    quantity: Decimal


@dataclass(frozen=True)
class PackOffer:
    name: str
    credits: Decimal  # paid + bonus credits a purchase gives
    prices: Mapping[str, Decimal]  # currency -> minor units


@dataclass(frozen=True)
class PriceBook:
    """What a pricing file says for the simulation: credits per unit of each meter, and priced packs."""

    rates: Mapping[str, Decimal]
    packs: tuple[PackOffer, ...]


@dataclass(frozen=True)
class Purchase:
    pack: str | None
    count: int
    cost: Decimal  # minor units per account and month


@dataclass(frozen=True)
class CohortResult:
    cohort: str
    accounts: int
    credits_per_month: Decimal  # mean per account
    purchase: dict[str, Purchase]  # currency -> cheapest purchase covering a month
    revenue_per_month: dict[str, Decimal]  # currency -> whole cohort


def credits_of(records: Iterable[UsageRecord], book: PriceBook) -> dict[str, dict[str, Decimal]]:
    """Credits per account and month under ``book`` (meters it does not price cost nothing, and are named
    by ``unpriced_meters``)."""
    out: dict[str, dict[str, Decimal]] = {}
    for r in records:
        rate = book.rates.get(r.meter)
        if rate is None:
            continue
        months = out.setdefault(r.account_id, {})
        months[r.month] = months.get(r.month, ZERO) + r.quantity * rate
    return out


def unpriced_meters(records: Iterable[UsageRecord], book: PriceBook) -> list[str]:
    return sorted({r.meter for r in records if r.meter not in book.rates})


def percentile(values: list[Decimal], pct: Decimal) -> Decimal:
    """Nearest-rank percentile of ``values`` (sorted or not); 0 for none."""
    if not values:
        return ZERO
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def cohorts(totals: Mapping[str, Decimal], light: Decimal, heavy: Decimal) -> dict[str, list[str]]:
    """Accounts by cohort: light <= the ``light`` percentile < average <= the ``heavy`` percentile < heavy."""
    if not Decimal(0) < light < heavy < Decimal(100):
        raise ValueError("percentiles must satisfy 0 < light < heavy < 100")
    values = list(totals.values())
    low, high = percentile(values, light), percentile(values, heavy)
    groups: dict[str, list[str]] = {"light": [], "average": [], "heavy": []}
    for account, total in sorted(totals.items()):
        groups["light" if total <= low else "heavy" if total > high else "average"].append(account)
    return groups


def cheapest(credits: Decimal, packs: Iterable[PackOffer], currency: str) -> Purchase:
    """The cheapest number of one kind of pack priced in ``currency`` that covers ``credits``."""
    best = Purchase(None, 0, ZERO)
    if credits <= 0:
        return best
    for pack in packs:
        price = pack.prices.get(currency)
        if price is None or pack.credits <= 0:
            continue
        count = int((credits / pack.credits).to_integral_value(rounding=ROUND_CEILING))
        cost = price * count
        if best.pack is None or cost < best.cost or (cost == best.cost and count < best.count):
            best = Purchase(pack.name, count, cost)
    return best


def simulate(
    records: list[UsageRecord],
    months: int,
    today: PriceBook,
    proposal: PriceBook,
    light: Decimal = Decimal(50),
    heavy: Decimal = Decimal(90),
) -> dict[str, list[CohortResult]]:
    """``{"today": [...], "proposal": [...]}``: the same cohorts (decided under today's pricing) under both."""
    if months <= 0:
        raise ValueError("the range must cover at least one month")
    used_today = credits_of(records, today)
    accounts = {r.account_id for r in records}
    totals = {a: sum(used_today.get(a, {}).values(), ZERO) for a in accounts}
    groups = cohorts(totals, light, heavy)
    currencies = sorted({c for book in (today, proposal) for p in book.packs for c in p.prices})
    result: dict[str, list[CohortResult]] = {}
    for label, book in (("today", today), ("proposal", proposal)):
        used = credits_of(records, book)
        rows = []
        for cohort, members in groups.items():
            total = sum((sum(used.get(a, {}).values(), ZERO) for a in members), ZERO)
            per_month = total / months / len(members) if members else ZERO
            purchases = {c: cheapest(per_month, book.packs, c) for c in currencies}
            rows.append(
                CohortResult(
                    cohort=cohort,
                    accounts=len(members),
                    credits_per_month=per_month.quantize(Decimal("0.01")),
                    purchase=purchases,
                    revenue_per_month={c: p.cost * len(members) for c, p in purchases.items()},
                )
            )
        result[label] = rows
    return result
