"""The subscription view of an account (``GET /v1/customers/{customer}/subscriptions``, ``credits
subscriptions``, the dashboard): each subscription's latest state from its Stripe events, and the credits of
the month running now (the plan month, prorations of the same period) with what is left of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from credits_ledger.dal.subscriptions import SubscriptionRepository
from credits_ledger.domain.models import AccountState
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.subscriptions import SubscriptionRecord, epoch


@dataclass(frozen=True)
class SubscriptionView:
    subscription_id: str
    plan: str | None
    status: str
    quantity: int
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    credits_this_month: Decimal
    remaining_this_month: Decimal


def _current_pools(record: SubscriptionRecord, now: datetime) -> list[str]:
    """Periods that have not ended (the pool key ends with its period end), so old periods are never read."""
    return [pool for pool in record.pools if int(pool.rsplit("#", 1)[1]) > epoch(now)]


def subscription_views(
    subscriptions: SubscriptionRepository,
    account_state: Callable[[str, list[str]], AccountState],
    account_id: str,
    now: datetime,
) -> list[SubscriptionView]:
    """The account's subscriptions with this month's credits; ``account_state`` (e.g. ``Ledger.account_state``)
    is read only when the account has a subscription."""
    records = [r for r in subscriptions.for_account(account_id) if r.snapshot is not None]
    if not records:
        return []
    pools = subscriptions.pools([p for r in records for p in _current_pools(r, now)])
    granted = [g.grant_id for key in pools for g in pools[key].grants.values()]
    state = account_state(account_id, granted)
    views = []
    for record in sorted(records, key=lambda r: r.key):
        snapshot = record.snapshot
        assert snapshot is not None
        credits, remaining = ZERO, ZERO
        for key in _current_pools(record, now):
            pool = pools[key]
            for grant in pool.grants.values():
                if not grant.start <= now < grant.end or grant.grant_id in pool.voided:
                    continue
                # what this month's allowance is after plan changes: a downgrade's revocation takes its share
                credits += grant.credits - pool.revoked.get(grant.grant_id, ZERO)
                live = state.grants.get(grant.grant_id)
                if live is not None and live.is_spendable(now):
                    remaining += live.remaining
        views.append(
            SubscriptionView(
                subscription_id=record.key,
                plan=snapshot.plan,
                status="canceled"
                if record.ended_at is not None and record.ended_at <= now
                else snapshot.status,
                quantity=snapshot.quantity,
                period_start=snapshot.period_start,
                period_end=snapshot.period_end,
                cancel_at_period_end=snapshot.cancel_at_period_end,
                credits_this_month=credits,
                remaining_this_month=remaining,
            )
        )
    return views
