"""Reservations as pure transitions of an account: reserve, extend, capture, release and the sweep's end.

A reservation pins credits on grants (``reserve`` entry, amount 0, allocations = what it holds where). It ends
once, by a capture, a release or the sweep, and every end writes the ``unreserve`` entry under the key
``unreserve:<id>``, so a second end of any kind finds that key taken (the write's condition) and is a replay.

* capture: one ``debit`` entry (key ``capture:<id>``, reference = the reservation) for what was used, taken
  from the pinned credits in the order they were reserved, plus (``allow_overrun``) the excess from what is
  available; then ``unreserve`` for the rest; all in one change.
* release: ``unreserve`` for everything; past ``expires_at`` the reservation ends as ``expired``.
* credits given back to a grant that expired meanwhile expire at once (``expire`` entry, key
  ``unreserve:<id>:expire``): a grant past its expiry is never spendable again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from credits_ledger.domain import reserved, spend, transitions
from credits_ledger.domain.errors import CreditsError, InvalidField, NotFound
from credits_ledger.domain.idempotency import (
    capture_key,
    unreserve_expire_key,
    unreserve_key,
)
from credits_ledger.domain.models import (
    AccountState,
    Allocation,
    Change,
    ClosedGrant,
    EntryType,
    GrantStatus,
    LiveReservation,
)
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.transitions import EntryContext

MAX_OPEN_RESERVATIONS = 100  # per account: they live in the account item every debit writes
MAX_LIFETIME = timedelta(days=30)  # from creation, extensions included
# An open reservation is found by the sweep through a sort key ``<17-digit epoch µs>#<id>``, which DynamoDB
# limits to 1,024 bytes: an id takes at most the rest, counted in UTF-8 (255 characters may take 1,020).
MAX_ID_BYTES = 1024 - 18


class ReservationStatus(StrEnum):
    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class ReservationError(InvalidField):
    """A reservation request the state does not allow (HTTP 422 naming the field): a capture above what it
    holds, an end or extension of a reservation that ended or lapsed, too many open reservations."""

    def __init__(self, reservation_id: str, field: str, message: str) -> None:
        super().__init__(field, f"reservation {reservation_id} {message}")
        self.reservation_id = reservation_id


class ReservationNotFound(NotFound):
    what = "reservation"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"reservation {reservation_id} does not exist")
        self.reservation_id = reservation_id


class ReservationNotDue(CreditsError):
    """The sweep found the reservation extended past its "now": nothing to do."""


@dataclass(frozen=True)
class Ended:
    """A reservation's end: the change, how it ended, what was debited and what it gave back."""

    change: Change
    status: ReservationStatus
    captured: Decimal = ZERO
    released: Decimal = ZERO
    expired: Decimal = ZERO
    allocations: tuple[Allocation, ...] = field(default_factory=tuple)


def _merge(allocations: list[Allocation]) -> tuple[Allocation, ...]:
    merged: dict[str, Decimal] = {}
    for allocation in allocations:
        merged[allocation.grant_id] = merged.get(allocation.grant_id, ZERO) + allocation.amount
    return tuple(Allocation(g, a) for g, a in merged.items())


def reserve(
    state: AccountState, reservation_id: str, amount: Decimal, expires_at: datetime, ctx: EntryContext
) -> Change:
    """Pin ``amount`` of what is available at ``ctx.now`` (spend order); InsufficientCredits holds nothing."""
    if amount <= 0:
        raise ReservationError(reservation_id, "credits", "must be greater than 0")
    if expires_at <= ctx.now:
        raise ReservationError(reservation_id, "expires_in", "must be in the future")
    if reservation_id in state.reservations:
        raise ReservationError(reservation_id, "id", "is already an open reservation")
    if len(state.reservations) >= MAX_OPEN_RESERVATIONS:
        raise ReservationError(
            reservation_id, "id", f"would exceed {MAX_OPEN_RESERVATIONS} open reservations on this account"
        )
    allocations = spend.allocate_free(state, amount, ctx.now)
    live = LiveReservation(reservation_id, expires_at, tuple(allocations))
    entry = transitions._entry(state, ctx, EntryType.RESERVE, ZERO, allocations)
    return transitions._apply(
        state, entry, dict(state.grants), reservations={**state.reservations, reservation_id: live}
    )


def _open(state: AccountState, reservation_id: str) -> LiveReservation:
    live = state.reservations.get(reservation_id)
    if live is None:
        raise ReservationError(reservation_id, "id", "is not an open reservation")
    return live


def extend(
    state: AccountState, reservation_id: str, expires_at: datetime, created_at: datetime, ctx: EntryContext
) -> Change:
    """Move the end of a reservation that still holds (a ``reserve`` entry moving nothing, amount 0)."""
    live = _open(state, reservation_id)
    if not live.holds_at(ctx.now):
        raise ReservationError(reservation_id, "id", "has expired: it holds nothing to extend")
    if expires_at <= ctx.now:
        raise ReservationError(reservation_id, "expires_in", "must be in the future")
    if expires_at > created_at + MAX_LIFETIME:
        raise ReservationError(
            reservation_id, "expires_in", "would end more than 30 days after the reservation"
        )
    entry = transitions._entry(state, ctx, EntryType.RESERVE, ZERO, ())
    reservations = {**state.reservations, reservation_id: replace(live, expires_at=expires_at)}
    return transitions._apply(state, entry, dict(state.grants), reservations=reservations)


def capture(
    state: AccountState,
    reservation_id: str,
    credits: Decimal | None,
    allow_overrun: bool,
    ctx: EntryContext,
) -> Ended:
    """Debit ``credits`` (default: all it holds) from the reservation, release the rest, in one change.

    More than it holds: ReservationError, unless ``allow_overrun``, then the excess comes from what is
    available (InsufficientCredits when it is not there: nothing changes)."""
    live = _open(state, reservation_id)
    if not live.holds_at(ctx.now):
        raise ReservationError(reservation_id, "id", "has expired: it holds nothing to capture")
    held = live.credits
    amount = held if credits is None else credits
    if amount < 0:
        raise ReservationError(reservation_id, "credits", "must be 0 or greater")
    if amount > held and not allow_overrun:
        raise ReservationError(
            reservation_id, "credits", f"is more than the {held} credits reserved (allow_overrun is false)"
        )
    left = min(amount, held)
    taken: list[Allocation] = []
    given_back: list[Allocation] = []
    grants = dict(state.grants)
    for allocation in live.allocations:
        take = min(left, allocation.amount)
        left -= take
        if take:
            taken.append(Allocation(allocation.grant_id, take))
            grant = grants[allocation.grant_id]
            grants[allocation.grant_id] = replace(grant, remaining=grant.remaining - take)
        if allocation.amount - take:
            given_back.append(Allocation(allocation.grant_id, allocation.amount - take))
    without = {k: v for k, v in state.reservations.items() if k != reservation_id}
    excess = amount - held
    if excess > 0:
        after_reserved = replace(state, grants=grants, reservations=without)
        extra = spend.allocate_free(after_reserved, excess, ctx.now)
        for allocation in extra:
            grant = grants[allocation.grant_id]
            grants[allocation.grant_id] = replace(grant, remaining=grant.remaining - allocation.amount)
        taken.extend(extra)
    changes: list[Change] = []
    current = state
    if amount > 0:
        debit_ctx = replace(
            ctx,
            entry_key=capture_key(reservation_id),
            metadata={**ctx.metadata, "reservation": reservation_id, "overrun": str(max(excess, ZERO))},
        )
        entry = transitions._entry(current, debit_ctx, EntryType.DEBIT, -amount, _merge(taken))
        changes.append(transitions._apply(current, entry, grants, reservations=without))
        current = changes[-1].state
    ended = _end(
        current, reservation_id, tuple(given_back), ReservationStatus.CAPTURED, ctx, without, changes
    )
    return replace(ended, captured=amount, allocations=_merge(taken))


def release(state: AccountState, reservation_id: str, ctx: EntryContext, *, sweep: bool = False) -> Ended:
    """Give back all it holds: ``released`` while it held, ``expired`` past its ``expires_at``.
    ``sweep``: only a reservation past its ``expires_at`` (else ReservationNotDue)."""
    live = _open(state, reservation_id)
    holding = live.holds_at(ctx.now)
    if sweep and holding:
        raise ReservationNotDue(reservation_id)
    status = ReservationStatus.RELEASED if holding else ReservationStatus.EXPIRED
    without = {k: v for k, v in state.reservations.items() if k != reservation_id}
    return _end(state, reservation_id, live.allocations, status, ctx, without, [])


def _end(
    state: AccountState,
    reservation_id: str,
    given_back: tuple[Allocation, ...],
    status: ReservationStatus,
    ctx: EntryContext,
    without: dict[str, LiveReservation],
    changes: list[Change],
) -> Ended:
    """The ``unreserve`` entry (always: its key makes the end happen once) and the at-once expiry of what went
    back to grants past their ``expires_at``."""
    released = sum((a.amount for a in given_back), ZERO)
    end_ctx = replace(
        ctx,
        entry_key=unreserve_key(reservation_id),
        metadata={**ctx.metadata, "reservation": reservation_id, "ended": status.value},
    )
    entry = transitions._entry(state, end_ctx, EntryType.UNRESERVE, ZERO, given_back)
    changes.append(transitions._apply(state, entry, dict(state.grants), reservations=without))
    current = changes[-1].state
    expiring: list[Allocation] = []
    grants = dict(current.grants)
    closed: list[ClosedGrant] = []
    for allocation in _merge(list(given_back)):
        grant = grants.get(allocation.grant_id)
        if grant is None or not grant.is_expired(ctx.now):
            continue
        # only what this reservation gave back: the rest of the grant is the expiry job's (and its rollover's)
        amount = min(allocation.amount, reserved.free_of(current, allocation.grant_id, ctx.now))
        if amount <= 0:
            continue
        expiring.append(Allocation(allocation.grant_id, amount))
        if grant.remaining == amount:
            del grants[allocation.grant_id]
            closed.append(ClosedGrant(allocation.grant_id, GrantStatus.EXPIRED, ctx.now))
        else:
            grants[allocation.grant_id] = replace(grant, remaining=grant.remaining - amount)
    expired = sum((a.amount for a in expiring), ZERO)
    if expiring:
        expire_ctx = replace(
            ctx, entry_key=unreserve_expire_key(reservation_id), metadata={"reservation": reservation_id}
        )
        entry = transitions._entry(current, expire_ctx, EntryType.EXPIRE, -expired, expiring)
        changes.append(transitions._apply(current, entry, grants, closed=tuple(closed)))
    return Ended(
        change=transitions.combine(state, changes) if len(changes) > 1 else changes[0],
        status=status,
        released=released,
        expired=expired,
    )
