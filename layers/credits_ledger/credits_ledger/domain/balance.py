"""What an account can spend now, and what it will lose next: derived from its live grants."""

from __future__ import annotations

from datetime import datetime

from credits_ledger.domain.models import AccountState, Balance, Category, GrantStatus
from credits_ledger.domain.money import ZERO


def balance(state: AccountState, now: datetime) -> Balance:
    """``available`` = ledger balance minus held, pending and past-expiry credits; ``by_category`` splits it.

    A grant past its ``expires_at`` counts only as "awaiting expiry" even when held or pending, so the
    four parts never overlap and always add up to the ledger balance.
    """
    parts = {Category.PAID: ZERO, Category.PROMOTIONAL: ZERO}
    held = pending = ZERO
    next_at: datetime | None = None
    next_amount = ZERO
    for grant in state.grants.values():
        status = grant.status(now)
        if status is GrantStatus.HELD:
            held += grant.remaining
        elif status is GrantStatus.PENDING:
            pending += grant.remaining
        elif status is GrantStatus.ACTIVE:
            parts[grant.category] += grant.remaining
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
    )
