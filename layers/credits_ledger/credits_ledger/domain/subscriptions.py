"""Subscription plans: billing periods -> monthly grants, prorations -> credits, cancellation, plan rollover.

Pure functions over plain values (no I/O). The plan rules (docs/subscriptions.md):
- a paid period of a plan price is released as one grant per month (the first effective at once, later ones
  pending until their month starts); a period shorter than a month is one grant;
- a proration line moves credits in the proportion of money: ``|amount| / (unit amount x quantity)`` of the
  plan's credits for a whole billing interval; a credit line (downgrade) revokes at least the share of the
  period it gives back, because under a coupon its amount is net of the discount while the period's credits
  were granted in full; granted credits round down, revoked credits round up, so rounding never leaves a
  customer with a credit that was not paid for;
- cancellation voids the months not yet started (and, of a plan with ``on_cancel = "immediately"``, what
  remains of the current one).
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction

from credits_ledger.domain import idempotency
from credits_ledger.domain.money import SCALE, ZERO, canonical

AVERAGE_MONTH_DAYS = Decimal("30.436875")  # 365.2425 / 12


@dataclass(frozen=True)
class MonthSlot:
    """One month of a billing period: ``index`` counts from 0 at the period start."""

    index: int
    start: datetime
    end: datetime


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus calendar months, the day clamped to the month's length (Jan 31 + 1 = Feb 28/29), as
    Stripe anchors monthly billing periods."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def whole_months(start: datetime, end: datetime) -> int:
    """How many months a period spans, to the nearest month (0 for a day or a week)."""
    days = Decimal((end - start).total_seconds()) / Decimal(86_400)
    return int((days / AVERAGE_MONTH_DAYS).to_integral_value())


def months_of(start: datetime, end: datetime) -> list[MonthSlot]:
    """The monthly grants of a paid period: one slot for a month or less, else one per calendar month counted
    from ``start`` (the last one ends exactly at ``end``)."""
    if end <= start:
        return []
    count = whole_months(start, end)
    if count <= 1:
        return [MonthSlot(0, start, end)]
    slots = []
    for index in range(count):
        slot_start = add_months(start, index)
        slot_end = end if index == count - 1 else add_months(start, index + 1)
        if slot_end > slot_start:
            slots.append(MonthSlot(index, slot_start, slot_end))
    return slots


def interval_months(interval: str | None, interval_count: int | None) -> int | None:
    """Months in one billing interval of a price (``recurring.interval`` / ``interval_count``); 0 for days and
    weeks (a plan grants its credits once per such period); None when unknown."""
    count = interval_count or 1
    if interval == "month":
        return count
    if interval == "year":
        return 12 * count
    if interval in ("day", "week"):
        return 0
    return None


def floor6(value: Fraction) -> Decimal:
    """Round a computed grant down to 6 decimals: rounding never creates credits."""
    micro = value.numerator * 1_000_000 // value.denominator
    return canonical(Decimal(micro).scaleb(-6))


def ceil6(value: Fraction) -> Decimal:
    """Round a computed revocation up to 6 decimals: rounding never leaves a credit that was not paid for."""
    micro = -((-value.numerator * 1_000_000) // value.denominator)
    return canonical(Decimal(micro).scaleb(-6))


def money_fraction(amount: int, unit_amount: Decimal, quantity: int) -> Fraction:
    """The share of a whole interval that a proration line bills: ``|amount| / (unit amount x quantity)``,
    never more than 1 (a line cannot buy more than the whole interval), 0 when the price is free."""
    if unit_amount <= 0 or quantity <= 0:
        return Fraction(0)
    share = Fraction(abs(amount)) / (Fraction(unit_amount) * quantity)
    return min(Fraction(1), share)


def period_starts(end: datetime, interval: str, interval_count: int | None) -> list[datetime]:
    """Every start the billing period ending at ``end`` can have, earliest first. A monthly period ending on
    a month's last day is ambiguous: its anchor day may be that day or any later one (anchored on the 30th,
    the period ending 30 Apr starts on 30 Mar; on the 31st, on 31 Mar). Every other period has one start."""
    count = interval_count or 1
    months = interval_months(interval, count)
    if months is None:
        raise ValueError(f"unknown billing interval {interval!r}")
    if months == 0:
        return [end - timedelta(days=count * (7 if interval == "week" else 1))]
    earliest = add_months(end, -months)
    if end.day < calendar.monthrange(end.year, end.month)[1]:
        return [earliest]
    last_day = calendar.monthrange(earliest.year, earliest.month)[1]
    return [earliest.replace(day=day) for day in range(earliest.day, last_day + 1)]


def time_share(start: datetime, end: datetime, period_start: datetime) -> Fraction:
    """The share of the billing period ``period_start`` - ``end`` that ``start`` - ``end`` covers (0 to 1)."""
    whole = int((end - period_start).total_seconds())
    part = int((end - start).total_seconds())
    if whole <= 0 or part <= 0:
        return Fraction(0)
    return min(Fraction(1), Fraction(part, whole))


def time_shares(start: datetime, end: datetime, interval: str, interval_count: int | None) -> list[Fraction]:
    """The share of its billing period a proration line's period ``start`` - ``end`` is, for each start the
    billing period can have (a proration line ends where its billing period ends), least first."""
    return [
        time_share(start, end, period_start) for period_start in period_starts(end, interval, interval_count)
    ]


def revoked_share(money: Fraction, time_shares: Sequence[Fraction], tolerance: Fraction) -> Fraction:
    """The share of a whole interval a credit (negative) proration line revokes. Its money share when that is
    the share of the period it gives back for one of the starts the period can have, to within ``tolerance``
    (one minor unit of the interval's price: Stripe rounds the line to it). Otherwise the line is net of a
    discount (Stripe's default ``proration_discounts=included``) while the period's credits were granted in
    full: the period's share is revoked, with the latest start the period can have, so it is never less than
    Stripe's own. A line that credits more than its time keeps its money share."""
    if not time_shares or any(abs(money - share) <= tolerance for share in time_shares):
        return money
    return max(money, max(time_shares))


def interval_credits(plan_credits: Decimal, quantity: int, months: int) -> Fraction:
    """A plan's credits for one whole billing interval: monthly credits x quantity x months (x 1 for a
    period shorter than a month)."""
    return Fraction(plan_credits) * quantity * max(months, 1)


def proration_credits(
    amount: int,
    unit_amount: Decimal,
    quantity: int,
    plan_credits: Decimal,
    months: int,
    time_shares: Sequence[Fraction] = (),
) -> Decimal:
    """Credits a proration line moves: granted (positive line, its money share) rounded down, revoked
    (negative line, ``revoked_share`` given the line's ``time_shares``) rounded up."""
    money = money_fraction(amount, unit_amount, quantity)
    whole = interval_credits(plan_credits, quantity, months)
    if amount > 0:
        return floor6(money * whole)
    one_minor_unit = (
        1 / (Fraction(unit_amount) * quantity) if unit_amount > 0 and quantity > 0 else Fraction(0)
    )
    return ceil6(revoked_share(money, time_shares, one_minor_unit) * whole)


def split_evenly(total: Decimal, parts: int) -> list[Decimal]:
    """``total`` over ``parts`` monthly grants, each rounded down, the remainder on the last: sums exactly."""
    if parts <= 1:
        return [total]
    share = (total / parts).quantize(SCALE, rounding=ROUND_FLOOR)
    return [canonical(share)] * (parts - 1) + [canonical(total - share * (parts - 1))]


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def month_key(subscription_item: str, period_start: datetime, index: int) -> str:
    """Idempotency key of a subscription item's month: whichever invoice, event or retry announces it."""
    return idempotency.subscription_month_key(subscription_item, epoch(period_start), index)


def proration_key(line_id: str, index: int) -> str:
    """Idempotency key of (the ``index``-th monthly grant of) a positive proration line."""
    return idempotency.proration_grant_key(line_id, index)


def pool_key(subscription_item: str, period_end: datetime) -> str:
    """The credits of one subscription item's billing period: the cycle's months and the prorations that end
    with it (a proration line's period ends where the item's current period ends)."""
    return f"{subscription_item}#{epoch(period_end)}"


def grant_id_for(entry_key: str, effective_at: datetime) -> str:
    """A deterministic grant id for a period grant (a retry decides the same grant; a revocation or a
    cancellation can name it before reading it), ordered by when the grant becomes effective, like ``new_id``."""
    millis = int(effective_at.timestamp() * 1000)
    return f"gr_{millis:012x}{hashlib.sha256(entry_key.encode()).hexdigest()[:14]}"


@dataclass(frozen=True)
class PoolGrant:
    """A grant of a subscription item's period (a month of the cycle, or a month of a positive proration)."""

    grant_id: str
    credits: Decimal
    start: datetime
    end: datetime
    plan: str = ""


def allocate_revocation(
    outstanding: Decimal, grants: list[PoolGrant], revoked: dict[str, Decimal], plan_name: str = ""
) -> list[tuple[str, Decimal]]:
    """Spread credits still to revoke over a period's grants of the revoked plan (a downgrade takes back the
    old plan's credits, never the new plan's: what is not granted yet waits for its grant, whatever the
    order of the invoices), latest month first (pending months before the current one), each at most what
    was granted minus what was revoked from it before."""
    plan: list[tuple[str, Decimal]] = []
    left = outstanding
    ordered = sorted(
        (g for g in grants if g.plan == plan_name), key=lambda g: (g.start, g.grant_id), reverse=True
    )
    for grant in ordered:
        if left <= 0:
            break
        room = grant.credits - revoked.get(grant.grant_id, ZERO)
        take = min(room, left)
        if take > 0:
            plan.append((grant.grant_id, canonical(take)))
            left -= take
    return plan


def voided_on_cancel(
    grants: list[PoolGrant],
    ended_at: datetime,
    on_cancel: str,
    on_cancel_by_plan: Mapping[str, str] | None = None,
) -> list[str]:
    """Grants a cancellation voids: months not started at ``ended_at``; the current month too when the
    grant's own plan cancels ``immediately`` (a subscription's items can be of plans with different rules).
    ``on_cancel_by_plan``: each plan's rule; ``on_cancel`` for a grant whose plan it does not name (a period
    recorded before its grants named their plan, or a plan no longer in the pricing file)."""
    rules = on_cancel_by_plan or {}
    voided = []
    for grant in grants:
        not_started = grant.start >= ended_at
        current = grant.start < ended_at < grant.end
        if not_started or (rules.get(grant.plan, on_cancel) == "immediately" and current):
            voided.append(grant.grant_id)
    return voided


def rollover_days(month_end: datetime, rollover_months: int) -> int:
    """Days a month's carried-over credits stay valid: ``rollover_months`` calendar months from its end."""
    later = add_months(month_end, rollover_months)
    return max(1, (later - month_end).days)


# ---- records: monotone facts about a subscription and the credits of its items' periods -------------------
@dataclass(frozen=True)
class PoolGrantFact:
    """An invoice line announced this grant of the period (granted by the invoice's payment)."""

    pool: str
    account_id: str
    subscription: str | None
    grant: PoolGrant


@dataclass(frozen=True)
class PoolRevocation:
    """A negative proration line: ``credits`` of the old plan to revoke from the period's grants."""

    pool: str
    account_id: str
    subscription: str | None
    line_id: str
    credits: Decimal
    plan: str = ""


@dataclass(frozen=True)
class Trial:
    start: datetime
    end: datetime
    credits: Decimal  # trial_credits x quantity


@dataclass(frozen=True)
class SubscriptionSnapshot:
    """What a ``customer.subscription.*`` event says; the latest (by event time) is the view."""

    subscription: str
    account_id: str
    as_of: datetime
    status: str
    plan: str | None
    subscription_item: str | None
    quantity: int
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    ended_at: datetime | None = None
    # the rule of ``plan`` (the first plan item's); a cancellation applies each grant's own plan's rule and
    # this one only to grants that name no plan
    on_cancel: str = "period_end"
    trial: Trial | None = None


@dataclass(frozen=True)
class PoolLink:
    """The period ``pool`` belongs to ``subscription`` (so a cancellation finds its grants)."""

    subscription: str
    account_id: str
    pool: str


SubscriptionFact = PoolGrantFact | PoolRevocation | SubscriptionSnapshot | PoolLink


@dataclass(frozen=True)
class PoolRecord:
    """The credits of one subscription item's billing period and what the ledger already reflects of them."""

    key: str
    version: int = 0
    account_id: str | None = None
    subscription: str | None = None
    grants: dict[str, PoolGrant] = field(default_factory=dict)
    revocations: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # line id -> (plan, credits)
    revoked: dict[str, Decimal] = field(default_factory=dict)  # grant id -> credits revoked from it
    revoked_for: dict[str, Decimal] = field(default_factory=dict)  # plan -> credits revoked for its lines
    voided: tuple[str, ...] = ()

    def outstanding(self) -> dict[str, Decimal]:
        """Credits still to revoke, per plan whose negative prorations asked for them."""
        wanted: dict[str, Decimal] = {}
        for plan, credits in self.revocations.values():
            wanted[plan] = wanted.get(plan, ZERO) + credits
        return {p: c - self.revoked_for.get(p, ZERO) for p, c in sorted(wanted.items())}


@dataclass(frozen=True)
class SubscriptionRecord:
    key: str  # the subscription id
    account_id: str
    version: int = 0
    snapshot: SubscriptionSnapshot | None = None
    ended_at: datetime | None = None  # once ended, ended for good (a late .updated does not revive it)
    trial: Trial | None = None
    trial_granted: bool = False
    pools: tuple[str, ...] = ()


def merge_pool(record: PoolRecord, fact: PoolGrantFact | PoolRevocation) -> PoolRecord:
    record = replace(
        record,
        account_id=record.account_id or fact.account_id,
        subscription=record.subscription or fact.subscription,
    )
    if isinstance(fact, PoolGrantFact):
        if fact.grant.grant_id in record.grants:
            return record
        return replace(record, grants={**record.grants, fact.grant.grant_id: fact.grant})
    if fact.line_id in record.revocations:
        return record
    return replace(record, revocations={**record.revocations, fact.line_id: (fact.plan, fact.credits)})


def merge_subscription(
    record: SubscriptionRecord, fact: SubscriptionSnapshot | PoolLink
) -> SubscriptionRecord:
    if isinstance(fact, PoolLink):
        if fact.pool in record.pools:
            return record
        return replace(record, pools=tuple(sorted({*record.pools, fact.pool})))
    known = record.snapshot
    later = known is None or (fact.as_of, fact.status) > (known.as_of, known.status)
    ended = record.ended_at
    if fact.ended_at is not None:
        ended = min(ended, fact.ended_at) if ended is not None else fact.ended_at
    return replace(
        record,
        snapshot=fact if later else known,
        ended_at=ended,
        trial=record.trial or fact.trial,
    )


@dataclass(frozen=True)
class RevokeFromPool:
    pool: str
    grant_id: str
    amount: Decimal
    target: Decimal  # what will have been revoked from the grant by prorations once this is applied
    plan: str = ""  # whose negative prorations this revocation serves


@dataclass(frozen=True)
class VoidInPool:
    pool: str
    grant_id: str


PoolAction = RevokeFromPool | VoidInPool


def next_pool_action(
    pool: PoolRecord,
    granted: set[str],
    ended_at: datetime | None,
    on_cancel: str,
    on_cancel_by_plan: Mapping[str, str] | None = None,
) -> PoolAction | None:
    """The one ledger change still missing for a period: a revocation of a negative proration, or a void of
    a month a cancellation ended (``voided_on_cancel``: ``on_cancel_by_plan`` gives each grant's plan rule,
    ``on_cancel`` the rule of a grant whose plan it does not name). ``granted``: the pool's grants that exist
    in the ledger."""
    live = [g for g in pool.grants.values() if g.grant_id in granted]
    for plan, outstanding in pool.outstanding().items():
        if outstanding <= 0:
            continue
        for grant_id, amount in allocate_revocation(outstanding, live, pool.revoked, plan):
            target = pool.revoked.get(grant_id, ZERO) + amount
            return RevokeFromPool(pool.key, grant_id, amount, target, plan)
    if ended_at is not None:
        for grant_id in voided_on_cancel(live, ended_at, on_cancel, on_cancel_by_plan):
            if grant_id not in pool.voided:
                return VoidInPool(pool.key, grant_id)
    return None


def pool_applied(pool: PoolRecord, action: PoolAction) -> PoolRecord:
    if isinstance(action, RevokeFromPool):
        served = pool.revoked_for.get(action.plan, ZERO) + action.amount
        return replace(
            pool,
            revoked={**pool.revoked, action.grant_id: action.target},
            revoked_for={**pool.revoked_for, action.plan: served},
        )
    return replace(pool, voided=tuple(sorted({*pool.voided, action.grant_id})))
