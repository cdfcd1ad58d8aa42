"""What open reservations pin on an account's grants: pure helpers the transitions and the balance share.

A reservation pins credits on specific grants (its allocations). While it holds (``expires_at`` in the
future) those credits stay in the grant's ``remaining`` and in the ledger balance but no debit may spend
them. Past ``expires_at`` it pins nothing, before the sweep writes its ``unreserve`` entry.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from credits_ledger.domain.models import AccountState, Allocation, LiveGrant, LiveReservation
from credits_ledger.domain.money import ZERO


def pinned(state: AccountState, now: datetime, *, excluding: str | None = None) -> dict[str, Decimal]:
    """Credits held per live grant at ``now`` by the reservations that hold then (all but ``excluding``)."""
    held: dict[str, Decimal] = {}
    for reservation in state.reservations.values():
        if reservation.reservation_id == excluding or not reservation.holds_at(now):
            continue
        for allocation in reservation.allocations:
            if allocation.grant_id in state.grants:
                held[allocation.grant_id] = held.get(allocation.grant_id, ZERO) + allocation.amount
    return held


def free_of(state: AccountState, grant_id: str, now: datetime, *, excluding: str | None = None) -> Decimal:
    """What a grant holds beyond the credits reservations pin on it (never below 0)."""
    live = state.grants.get(grant_id)
    if live is None:
        return ZERO
    return max(live.remaining - pinned(state, now, excluding=excluding).get(grant_id, ZERO), ZERO)


def free_grants(state: AccountState, now: datetime) -> list[LiveGrant]:
    """The live grants as a debit sees them: what reservations hold at ``now`` taken out of ``remaining``."""
    held = pinned(state, now)
    if not held:
        return list(state.grants.values())
    return [
        replace(g, remaining=max(g.remaining - held[g.grant_id], ZERO)) if g.grant_id in held else g
        for g in state.grants.values()
    ]


def shrink(state: AccountState, grant_id: str, taken: Decimal, now: datetime) -> dict[str, LiveReservation]:
    """The reservations after ``taken`` credits left ``grant_id`` (a void, a refund, a lost dispute).

    What is free on the grant goes first; only the rest comes out of the reservations that hold on it,
    the one expiring last first (it has the most time left to be extended or re-reserved), then by id.
    """
    excess = taken - free_of(state, grant_id, now)
    if excess <= 0:
        return state.reservations
    holding = sorted(
        (r for r in state.reservations.values() if r.holds_at(now)),
        key=lambda r: (r.expires_at, r.reservation_id),
        reverse=True,
    )
    reservations = dict(state.reservations)
    for reservation in holding:
        if excess <= 0:
            break
        allocations: list[Allocation] = []
        for allocation in reservation.allocations:
            if allocation.grant_id == grant_id and excess > 0:
                cut = min(excess, allocation.amount)
                excess -= cut
                if allocation.amount - cut > 0:
                    allocations.append(Allocation(grant_id, allocation.amount - cut))
            else:
                allocations.append(allocation)
        reservations[reservation.reservation_id] = replace(reservation, allocations=tuple(allocations))
    return reservations


def prune(
    reservations: dict[str, LiveReservation], grants: dict[str, LiveGrant]
) -> dict[str, LiveReservation]:
    """Drop pins on grants that left the live set (voided, expired, spent): they hold nothing any more."""
    if all(a.grant_id in grants for r in reservations.values() for a in r.allocations):
        return reservations
    return {
        rid: replace(r, allocations=tuple(a for a in r.allocations if a.grant_id in grants))
        for rid, r in reservations.items()
    }
