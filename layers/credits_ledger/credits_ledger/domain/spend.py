"""Which grants a debit spends, in the contract's spend order."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import Allocation, Category, LiveGrant
from credits_ledger.domain.money import ZERO


def spend_key(grant: LiveGrant) -> tuple[object, ...]:
    """Lowest priority first, then earliest expiry (never-expiring last), promotional before paid,
    oldest effective_at, then grant id so the order is total and every run agrees."""
    expiry = (0, grant.expires_at) if grant.expires_at is not None else (1,)
    return (
        grant.priority,
        expiry,
        0 if grant.category is Category.PROMOTIONAL else 1,
        grant.effective_at,
        grant.grant_id,
    )


def spend_order(grants: Iterable[LiveGrant], now: datetime) -> list[LiveGrant]:
    """The grants a debit may spend at ``now``, in the order it spends them."""
    return sorted((g for g in grants if g.is_spendable(now) and g.remaining > 0), key=spend_key)


def available_at(grants: Iterable[LiveGrant], now: datetime) -> Decimal:
    return sum((g.remaining for g in grants if g.is_spendable(now)), ZERO)


def allocate(
    account_id: str, grants: Iterable[LiveGrant], amount: Decimal, now: datetime
) -> list[Allocation]:
    """Split ``amount`` over spendable grants in spend order; all or nothing."""
    ordered = spend_order(grants, now)
    available = sum((g.remaining for g in ordered), ZERO)
    if amount > available:
        raise InsufficientCredits(account_id, requested=amount, available=available)
    allocations: list[Allocation] = []
    left = amount
    for grant in ordered:
        if left == 0:
            break
        take = min(left, grant.remaining)
        allocations.append(Allocation(grant.grant_id, take))
        left -= take
    return allocations
