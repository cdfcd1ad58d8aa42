"""What an account can spend now, and what it will lose next: derived from its live grants."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from credits_ledger.domain.models import AccountState, Balance, Category, Change, GrantStatus
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.reserved import pinned
from credits_ledger.domain.spend import MoreGrantsNeeded


def available(state: AccountState, now: datetime) -> Decimal:
    """What the account can spend at ``now``: ``balance(...).available`` without the next expiry, which a
    state loaded for a debit may not know of the grants stored apart from the account item."""
    return _parts(state, now)[0]


def with_available_after(change: Change, now: datetime) -> Change:
    """``change`` whose entries say what the customer can still spend after it (``available_after``): a
    debit's answer reports it, a replay says the same, and the automatic top-up reads it (domain/topup.py)."""
    after = str(available(change.state, now))
    entries = tuple(replace(e, metadata={**e.metadata, "available_after": after}) for e in change.entries)
    return replace(change, entries=entries)


def _parts(
    state: AccountState, now: datetime
) -> tuple[Decimal, dict[Category, Decimal], Decimal, Decimal, Decimal]:
    """(available, by category, held, pending, reserved) at ``now``."""
    if not state.unloaded.holds_at(now):
        raise MoreGrantsNeeded(state.account_id, ZERO)  # grants stored apart may have expired since read
    parts = {
        Category.PAID: state.unloaded.paid,  # grants stored apart are all active (GrantsNotLoaded)
        Category.PROMOTIONAL: state.unloaded.promotional,
    }
    held = pending = reserved = ZERO
    pins = pinned(state, now)
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
    return parts[Category.PAID] + parts[Category.PROMOTIONAL], parts, held, pending, reserved


def balance(state: AccountState, now: datetime) -> Balance:
    """``available`` = ledger balance minus reserved, held, pending and past-expiry credits; ``by_category``
    splits it.

    Credits an open reservation holds count as ``reserved`` whatever the grant's status (they stay capturable
    from a grant that expired or was disputed meanwhile); of the rest, a grant past its ``expires_at`` counts
    only as "awaiting expiry" even when held or pending, so the five parts never overlap and always add up to
    the ledger balance.
    """
    if state.unloaded.count and not state.unloaded.expiry_known:
        raise ValueError("the state was loaded without the next expiry of the grants stored apart")
    total, parts, held, pending, reserved = _parts(state, now)
    next_at: datetime | None = None
    next_amount = ZERO
    expiring = [(g.expires_at, g.remaining) for g in state.grants.values() if g.expires_at is not None]
    if state.unloaded.next_expiry is not None:
        expiring.append((state.unloaded.next_expiry.at, state.unloaded.next_expiry.amount))
    for at, amount in expiring:
        if at <= now:
            continue
        if next_at is None or at < next_at:
            next_at, next_amount = at, amount
        elif at == next_at:
            next_amount += amount
    return Balance(
        account_id=state.account_id,
        available=total,
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
