"""Stripe payments as monotone facts, and the ledger actions that bring the ledger in line with them.

Stripe delivers events twice and in any order. Each event only adds a fact to its payment's record (a purchase,
a refund level, a dispute status, a link between an invoice and its PaymentIntent); merging is monotone (a
refund level only grows, a closed dispute stays closed), so the facts known do not depend on arrival order.
After every event the ledger converges to the facts: ``next_action`` names the one change still missing, which
is committed together with the record of it having been applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum
from fractions import Fraction

from credits_ledger.domain.models import Category
from credits_ledger.domain.money import ZERO, canonical


class DisputeStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


_DISPUTE_RANK = {DisputeStatus.OPEN: 0, DisputeStatus.WON: 1, DisputeStatus.LOST: 1}


class DisputeEffect(StrEnum):
    NONE = "none"
    HELD = "held"
    RELEASED = "released"
    VOIDED = "voided"


@dataclass(frozen=True)
class GrantLine:
    line_id: str
    credits: Decimal
    category: Category = Category.PAID
    priority: int | None = None
    valid_days: int | None = None
    cost_amount: int = 0  # minor currency units, before tax, as Stripe reports them
    currency: str | None = None
    pack: str | None = None
    # A subscription period grant (a plan month, or a month of a positive proration) states its own window,
    # its idempotency key (docs/subscriptions.md: one per subscription item, period start and month index)
    # and a deterministic grant id; other lines leave them unset.
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    entry_key: str | None = None
    grant_id: str | None = None
    plan: str | None = None
    subscription: str | None = None


@dataclass(frozen=True)
class Purchase:
    account_id: str
    lines: tuple[GrantLine, ...]
    paid_at: datetime
    source_type: str
    source_id: str
    charged: int = 0  # what the payment charged in total (tax included), the base of refund shares

    def effective_at(self, line: GrantLine) -> datetime:
        return line.effective_at or self.paid_at

    def expires_at(self, line: GrantLine) -> datetime | None:
        if line.expires_at is not None:
            return line.expires_at
        return self.paid_at + timedelta(days=line.valid_days) if line.valid_days else None


@dataclass(frozen=True)
class Refund:
    charge_id: str
    amount: int
    amount_refunded: int


@dataclass(frozen=True)
class Dispute:
    dispute_id: str
    status: DisputeStatus


@dataclass(frozen=True)
class Link:
    """``child`` (a PaymentIntent or charge) belongs to ``parent`` (the invoice or PaymentIntent it paid)."""

    parent: str
    child: str


Fact = Purchase | Refund | Dispute | Link


@dataclass(frozen=True)
class PaymentRecord:
    """Everything known about one payment (a PaymentIntent ``pi_`` or an invoice ``in_``) and what of it the
    ledger already reflects. ``version`` guards every write of the record."""

    key: str
    version: int = 0
    purchase: Purchase | None = None
    refunds: dict[str, tuple[int, int]] = field(default_factory=dict)
    disputes: dict[str, DisputeStatus] = field(default_factory=dict)
    parent: str | None = None
    children: tuple[str, ...] = ()
    granted: dict[str, str] = field(default_factory=dict)
    revoked: dict[str, Decimal] = field(default_factory=dict)
    dispute_effects: dict[str, DisputeEffect] = field(default_factory=dict)
    preferred: Purchase | None = None  # a more precise announcement seen after granting: corrects cost basis


# Several events may announce one PaymentIntent's purchase; a Checkout Session knows the amount before tax,
# a bare PaymentIntent only the total. Until credits are granted, the most precise announcement wins.
_SOURCE_PRECEDENCE = {"stripe_checkout_session": 0, "stripe_invoice": 1, "stripe_payment_intent": 2}


def _precedence(purchase: Purchase) -> tuple[int, str]:
    return (_SOURCE_PRECEDENCE.get(purchase.source_type, 9), purchase.source_id)


def merge(record: PaymentRecord, fact: Fact) -> PaymentRecord:
    """Add a fact; merging the same fact again, or facts in another order, gives the same record."""
    if isinstance(fact, Purchase):
        known = record.purchase
        if known is None or (not record.granted and _precedence(fact) < _precedence(known)):
            return replace(record, purchase=fact)
        if record.granted and _precedence(fact) < _precedence(record.preferred or known):
            return replace(record, preferred=fact)
        return record
    if isinstance(fact, Refund):
        amount, refunded = record.refunds.get(fact.charge_id, (fact.amount, 0))
        level = (max(amount, fact.amount), max(refunded, fact.amount_refunded))
        return replace(record, refunds={**record.refunds, fact.charge_id: level})
    if isinstance(fact, Dispute):
        status = record.disputes.get(fact.dispute_id)
        if status is not None and _DISPUTE_RANK[status] >= _DISPUTE_RANK[fact.status]:
            return record
        return replace(record, disputes={**record.disputes, fact.dispute_id: fact.status})
    if record.key == fact.parent:
        return replace(record, children=tuple(sorted({*record.children, fact.child})))
    return replace(record, parent=fact.parent)


@dataclass(frozen=True)
class GrantAction:
    owner: str
    line: GrantLine
    purchase: Purchase


@dataclass(frozen=True)
class RevokeAction:
    owner: str
    grant_id: str
    amount: Decimal
    target: Decimal


@dataclass(frozen=True)
class DisputeAction:
    owner: str
    grant_id: str
    effect: DisputeEffect


@dataclass(frozen=True)
class CostBasisAction:
    """Grants already made from a less precise announcement get the cost basis of the more precise one
    (same credits per line), so the cost basis does not depend on which event arrived first."""

    owner: str
    costs: tuple[tuple[str, int, str | None], ...]  # (grant id, cost in minor units, currency)
    corrected: Purchase


Action = GrantAction | RevokeAction | DisputeAction | CostBasisAction


def _cost_correction(owner: PaymentRecord) -> CostBasisAction | None:
    known, better = owner.purchase, owner.preferred
    if known is None or better is None or len(known.lines) != len(better.lines):
        return None
    if any(old.credits != new.credits for old, new in zip(known.lines, better.lines, strict=True)):
        return None  # a different purchase, not a better description of this one: grants stay as made
    lines = tuple(
        replace(old, cost_amount=new.cost_amount, currency=new.currency)
        for old, new in zip(known.lines, better.lines, strict=True)
    )
    corrected = replace(
        known, lines=lines, charged=better.charged, source_type=better.source_type, source_id=better.source_id
    )
    costs = tuple((owner.granted[line.line_id], line.cost_amount, line.currency) for line in lines)
    return CostBasisAction(owner.key, costs, corrected)


def owner_of(group: list[PaymentRecord]) -> PaymentRecord | None:
    """The record whose purchase funds the credits: the one already granted from, else the invoice's purchase,
    else a PaymentIntent's. One payment (PaymentIntent or invoice) therefore grants at most once."""
    for record in group:
        if record.granted:
            return record
    with_purchase = [r for r in group if r.purchase is not None]
    with_purchase.sort(key=lambda r: (not r.key.startswith("in_"), r.key))
    return with_purchase[0] if with_purchase else None


def refunded_share(group: list[PaymentRecord], charged: int) -> Fraction:
    """Cumulative refunded share of the payment: refunds reported on its charges over what it charged in
    total (``charged``; the reporting charges' amounts when unknown). Exact: a third is a third."""
    levels = {charge: level for record in group for charge, level in record.refunds.items()}
    refunded = sum(refunded for _, refunded in levels.values())
    total = charged if charged > 0 else sum(amount for amount, _ in levels.values())
    if total <= 0:
        return Fraction(0)
    return min(Fraction(1), Fraction(refunded, total))


def dispute_effect(group: list[PaymentRecord]) -> DisputeEffect:
    statuses = {status for record in group for status in record.disputes.values()}
    if DisputeStatus.LOST in statuses:
        return DisputeEffect.VOIDED
    if DisputeStatus.OPEN in statuses:
        return DisputeEffect.HELD
    return DisputeEffect.RELEASED if statuses else DisputeEffect.NONE


def revoke_target(share: Fraction, granted: Decimal) -> Decimal:
    """Credits to take back for a refunded share, floored to 6 decimals so a refund never takes more than
    its share; computed on exact fractions (no intermediate rounding)."""
    micro = math.floor(Fraction(granted) * share * 1_000_000)
    return canonical(Decimal(micro).scaleb(-6))


def line_targets(purchase: Purchase, share: Fraction) -> dict[str, Decimal]:
    """Credits each line's grant must have lost to refunds at this refunded share. Pack lines lose their
    share each; subscription months are taken as one block, latest month first (a yearly plan's pending
    months before the current one). Both only grow with the share."""
    months = [line for line in purchase.lines if line.effective_at is not None]
    targets = {
        line.line_id: revoke_target(share, line.credits)
        for line in purchase.lines
        if line.effective_at is None
    }
    if months:
        left = revoke_target(share, sum((line.credits for line in months), ZERO))
        for line in sorted(months, key=lambda m: (m.effective_at, m.line_id), reverse=True):
            take = min(left, line.credits)
            targets[line.line_id] = canonical(take)
            left -= take
    return targets


def next_action(group: list[PaymentRecord]) -> Action | None:
    """The one ledger change still missing for this payment, or None when the ledger reflects every fact."""
    owner = owner_of(group)
    if owner is None or owner.purchase is None:
        return None
    for line in owner.purchase.lines:
        if line.line_id not in owner.granted:
            return GrantAction(owner.key, line, owner.purchase)
    if owner.preferred is not None:
        correction = _cost_correction(owner)
        if correction is not None:
            return correction
    share = refunded_share(group, owner.purchase.charged)
    effect = dispute_effect(group)
    targets = line_targets(owner.purchase, share)
    for line in owner.purchase.lines:
        grant_id = owner.granted[line.line_id]
        target = targets[line.line_id]
        already = owner.revoked.get(grant_id, ZERO)
        if target > already:
            return RevokeAction(owner.key, grant_id, target - already, target)
        applied_effect = owner.dispute_effects.get(grant_id, DisputeEffect.NONE)
        if applied_effect is DisputeEffect.VOIDED or applied_effect is effect:
            continue
        if effect in (DisputeEffect.VOIDED, DisputeEffect.HELD) or applied_effect is DisputeEffect.HELD:
            return DisputeAction(owner.key, grant_id, effect)
    return None


def applied(record: PaymentRecord, action: Action, grant_id: str | None = None) -> PaymentRecord:
    """The owner record once ``action`` is reflected in the ledger."""
    if isinstance(action, GrantAction):
        assert grant_id is not None
        return replace(record, granted={**record.granted, action.line.line_id: grant_id})
    if isinstance(action, RevokeAction):
        return replace(record, revoked={**record.revoked, action.grant_id: action.target})
    if isinstance(action, CostBasisAction):
        return replace(record, purchase=action.corrected, preferred=None)
    return replace(record, dispute_effects={**record.dispute_effects, action.grant_id: action.effect})


def split_cost(total_minor: int, lines: list[tuple[str, Decimal]]) -> dict[str, int]:
    """Cost basis pro rata to credits (bonus credits carry their share), in minor units, summing exactly."""
    credits_total = sum((credits for _, credits in lines), ZERO)
    result: dict[str, int] = {}
    assigned = 0
    for index, (line_id, credits) in enumerate(lines):
        if index == len(lines) - 1 or credits_total == 0:
            share = total_minor - assigned
        else:
            share = int(
                (Decimal(total_minor) * credits / credits_total).to_integral_value(rounding=ROUND_FLOOR)
            )
        result[line_id] = share
        assigned += share
    return result
