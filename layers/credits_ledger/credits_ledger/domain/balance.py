"""What an account can spend now, and what it will lose next: derived from its live grants."""

from __future__ import annotations

from datetime import datetime

from credits_ledger.domain.models import AccountState, Balance, Category, GrantStatus
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.reserved import pinned


def balance(state: AccountState, now: datetime) -> Balance:
    """``available`` = ledger balance minus reserved, held, pending and past-expiry credits; ``by_category``
    splits it.

    Credits an open reservation holds count as ``reserved`` whatever the grant's status (they stay capturable
    from a grant that expired or was disputed meanwhile); of the rest, a grant past its ``expires_at`` counts
    only as "awaiting expiry" even when held or pending, so the five parts never overlap and always add up to
    the ledger balance.
    """
    parts = {Category.PAID: ZERO, Category.PROMOTIONAL: ZERO}
    held = pending = ZERO
    reserved = ZERO
    pins = pinned(state, now)
    next_at: datetime | None = None
    next_amount = ZERO
    for grant in state.grants.values():
        status = grant.status(now)
        pin = min(pins.get(grant.grant_id, ZERO), max(grant.remaining, ZERO))
        reserved += pin
        free = grant.remaining - pin
        if status is GrantStatus.HELD:
            held += free
        elif status is GrantStatus.PENDING:
            pending += free
        elif status is GrantStatus.ACTIVE:
            parts[grant.category] += free
        if grant.expires_at is not None and grant.expires_at > now:
            if next_at is None or grant.expires_at < next_at:
                next_at, next_amount = grant.expires_at, grant.remaining
            elif grant.expires_at == next_at:
                next_amount += grant.remaining
    return Balance(
        account_id=state.account_id,
        available=parts[Category.PAID] + parts[Category.PROMOTIONAL],
        ledger_balance=state.ledger_balance,
        paid=parts[Category.PAID],
        promotional=parts[Category.PROMOTIONAL],
        held=held,
        pending=pending,
        next_expiry_at=next_at,
        next_expiry_amount=next_amount,
        as_of=now,
        reserved=reserved,
    )
