"""Pure state transitions of an account: given its state, return the new state and the ledger entries.

Every function here is deterministic and does no I/O, so the same code decides a change in Lambda, in the
hypothesis model tests and in the benchmark. The data layer writes a ``Change`` atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from credits_ledger.domain import reserved, spend
from credits_ledger.domain.errors import (
    GrantNotDue,
    GrantNotLive,
    InsufficientCredits,
    InvalidGrant,
    InvalidTransition,
)
from credits_ledger.domain.models import (
    DEFAULT_PRIORITY,
    AccountState,
    Allocation,
    Category,
    Change,
    ClosedGrant,
    CostBasis,
    EntryType,
    Grant,
    GrantStatus,
    LedgerEntry,
    LiveGrant,
    LiveReservation,
    Source,
)
from credits_ledger.domain.money import ZERO, format_amount
from credits_ledger.domain.overage import (
    OVERAGE_METADATA_KEY,
    OverageSettings,
    month_of,
    overage_for,
    used_in,
)


@dataclass(frozen=True)
class EntryContext:
    """Who asks and why: the entry's idempotency key, the request fingerprint and the external reference."""

    entry_key: str
    now: datetime
    reference: str | None = None
    fingerprint: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GrantSpec:
    grant_id: str
    amount: Decimal
    source: Source
    category: Category = Category.PAID
    priority: int = DEFAULT_PRIORITY
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    cost_basis: CostBasis = CostBasis()
    funding_key: str | None = None
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def _entry(
    state: AccountState,
    ctx: EntryContext,
    entry_type: EntryType,
    amount: Decimal,
    allocations: Iterable[Allocation],
) -> LedgerEntry:
    return LedgerEntry(
        entry_key=ctx.entry_key,
        account_id=state.account_id,
        seq=state.version + 1,
        type=entry_type,
        amount=amount,
        balance_after=state.ledger_balance + amount,
        allocations=tuple(allocations),
        reference=ctx.reference,
        created_at=ctx.now,
        fingerprint=ctx.fingerprint,
        metadata=dict(ctx.metadata),
    )


# Grants closed in one change are updated in its transaction (at most 100 actions; a grant kept apart from
# the account item also deletes its item there: dal/live_grants.py): a debit spanning more spent grants
# leaves the rest live at 0 (status depleted) for the account's next changes to close.
MAX_CLOSED_PER_CHANGE = 30


def _sweep_spent(
    grants: dict[str, LiveGrant], closed: tuple[ClosedGrant, ...], now: datetime
) -> tuple[dict[str, LiveGrant], tuple[ClosedGrant, ...]]:
    room = MAX_CLOSED_PER_CHANGE - len(closed)
    spent = sorted(grant_id for grant_id, grant in grants.items() if grant.remaining == 0)[: max(room, 0)]
    if not spent:
        return grants, closed
    kept = {grant_id: grant for grant_id, grant in grants.items() if grant_id not in spent}
    return kept, closed + tuple(ClosedGrant(grant_id, GrantStatus.DEPLETED, now) for grant_id in spent)


def _with_remaining_after(entry: LedgerEntry, grants: dict[str, LiveGrant]) -> LedgerEntry:
    """An entry that takes credits out of grants records, per grant, what it had left after it (0 once it
    left the live set): money recognition places the entry on the grant's consumption from it (revenue.py).
    Set here, where every change is applied, so no transition can forget it."""
    if entry.amount >= 0 or not entry.allocations:
        return entry
    placed = tuple(
        replace(a, remaining_after=grants[a.grant_id].remaining if a.grant_id in grants else ZERO)
        for a in entry.allocations
    )
    return replace(entry, allocations=placed)


def _apply(
    state: AccountState,
    entry: LedgerEntry,
    grants: dict[str, LiveGrant],
    *,
    new_grants: tuple[Grant, ...] = (),
    closed: tuple[ClosedGrant, ...] = (),
    reservations: dict[str, LiveReservation] | None = None,
) -> Change:
    entry = _with_remaining_after(entry, grants)
    grants, closed = _sweep_spent(grants, closed, entry.created_at)
    pins = reserved.prune(state.reservations if reservations is None else reservations, grants)
    new_state = state.with_changes(entries=1, balance_delta=entry.amount, grants=grants, reservations=pins)
    return Change(state=new_state, entries=(entry,), new_grants=new_grants, closed_grants=closed)


def _live(state: AccountState, grant: Grant) -> LiveGrant:
    spend.require_loaded(state, grant.grant_id)
    live = state.grants.get(grant.grant_id)
    if live is None:
        raise GrantNotLive(grant.grant_id, grant.status.value)
    if live.remaining == 0:
        raise GrantNotLive(grant.grant_id, GrantStatus.DEPLETED.value)
    return live


def grant(state: AccountState, spec: GrantSpec, ctx: EntryContext) -> Change:
    if spec.amount <= 0:
        raise InvalidGrant("amount", "must be greater than 0")
    if spec.priority < 0:
        raise InvalidGrant("priority", "must be 0 or greater")
    effective_at = spec.effective_at or ctx.now
    if spec.expires_at is not None and spec.expires_at <= effective_at:
        raise InvalidGrant("expires_at", "must be after effective_at")
    new = Grant(
        grant_id=spec.grant_id,
        account_id=state.account_id,
        amount=spec.amount,
        remaining=spec.amount,
        category=spec.category,
        priority=spec.priority,
        effective_at=effective_at,
        expires_at=spec.expires_at,
        source=spec.source,
        cost_basis=spec.cost_basis,
        created_at=ctx.now,
        funding_key=spec.funding_key,
        reason=spec.reason,
        metadata=dict(spec.metadata),
    )
    # A grant is written live (active or pending), even one whose expires_at has already passed (a late Stripe
    # event for a month that is over): the expiry job must still find it in ExpiringGrants and close it, and a
    # live grant stored as "expired" could never be closed (the close condition refuses terminal statuses).
    new = replace(new, status=GrantStatus.PENDING if effective_at > ctx.now else GrantStatus.ACTIVE)
    grants = {**state.grants, new.grant_id: new.live()}
    entry = _entry(state, ctx, EntryType.GRANT, spec.amount, [Allocation(new.grant_id, spec.amount)])
    return _apply(state, entry, grants, new_grants=(new,))


def debit(
    state: AccountState,
    amount: Decimal,
    ctx: EntryContext,
    entry_type: EntryType = EntryType.DEBIT,
    overage: OverageSettings | None = None,
) -> Change:
    """Spend ``amount`` across the grants active at ``ctx.now``, never what open reservations hold; raises
    InsufficientCredits, changing nothing.

    With an ``overage`` policy that allows it, a debit beyond what is available takes all of it and records
    the rest as overage (domain/overage.py): the entry's amount is what was taken, never more."""
    if amount <= 0:
        raise InvalidGrant("amount", "must be greater than 0")
    try:
        allocations = spend.allocate_free(state, amount, ctx.now)
    except InsufficientCredits as exc:
        if overage is None:
            raise
        return _debit_with_overage(state, amount, exc.available, ctx, entry_type, overage)
    grants = dict(state.grants)
    for allocation in allocations:  # spent grants are closed (depleted) by _apply
        grants[allocation.grant_id] = replace(
            grants[allocation.grant_id], remaining=grants[allocation.grant_id].remaining - allocation.amount
        )
    entry = _entry(state, ctx, entry_type, -amount, allocations)
    return _apply(state, entry, grants)


def _debit_with_overage(
    state: AccountState,
    amount: Decimal,
    available: Decimal,
    ctx: EntryContext,
    entry_type: EntryType,
    settings: OverageSettings,
) -> Change:
    extra = overage_for(state, amount, available, settings, ctx.now)
    taken = amount - extra
    allocations = spend.allocate_free(state, taken, ctx.now) if taken else []
    grants = dict(state.grants)
    for allocation in allocations:
        grants[allocation.grant_id] = replace(
            grants[allocation.grant_id], remaining=grants[allocation.grant_id].remaining - allocation.amount
        )
    month = month_of(ctx.now)
    counted = replace(state, overage_month=month, overage_used=used_in(state, month) + extra)
    ctx = replace(ctx, metadata={**ctx.metadata, OVERAGE_METADATA_KEY: format_amount(extra)})
    return _apply(counted, _entry(counted, ctx, entry_type, -taken, allocations), grants)


def _close(
    state: AccountState, grant_id: str, status: GrantStatus, ctx: EntryContext, entry_type: EntryType
) -> Change:
    live = state.grants[grant_id]
    grants = {k: v for k, v in state.grants.items() if k != grant_id}
    entry = _entry(state, ctx, entry_type, -live.remaining, [Allocation(grant_id, live.remaining)])
    return _apply(state, entry, grants, closed=(ClosedGrant(grant_id, status, ctx.now),))


def expire(state: AccountState, record: Grant, ctx: EntryContext) -> Change:
    """Expire what remains of a grant whose ``expires_at`` is at or before ``ctx.now`` (the job's "now").

    Credits an open reservation holds on the grant stay capturable until the reservation ends: only the free
    part expires now (the grant stays live with the rest), and the reservation's end expires what it gives
    back (domain/reservations.py). Nothing free: GrantNotLive, the grant stays due for a later run."""
    live = _live(state, record)
    if not live.is_expired(ctx.now):
        raise GrantNotDue(record.grant_id)
    held = reserved.pinned(state, ctx.now).get(record.grant_id, ZERO)
    if held == 0:
        return _close(state, record.grant_id, GrantStatus.EXPIRED, ctx, EntryType.EXPIRE)
    free = max(live.remaining - held, ZERO)
    if free == 0:
        raise GrantNotLive(record.grant_id, "reserved")
    grants = {**state.grants, record.grant_id: replace(live, remaining=live.remaining - free)}
    ctx = replace(ctx, metadata={**ctx.metadata, "kept_reserved": str(live.remaining - free)})
    return _apply(
        state, _entry(state, ctx, EntryType.EXPIRE, -free, [Allocation(record.grant_id, free)]), grants
    )


def void(state: AccountState, record: Grant, ctx: EntryContext) -> Change:
    _live(state, record)
    return _close(state, record.grant_id, GrantStatus.VOIDED, ctx, EntryType.VOID)


def hold(state: AccountState, record: Grant, ctx: EntryContext) -> Change:
    live = _live(state, record)
    if live.held:
        raise InvalidTransition(record.grant_id, "is already held")
    grants = {**state.grants, record.grant_id: replace(live, held=True)}
    return _apply(
        state, _entry(state, ctx, EntryType.HOLD, ZERO, [Allocation(record.grant_id, live.remaining)]), grants
    )


def release(state: AccountState, record: Grant, ctx: EntryContext) -> Change:
    live = _live(state, record)
    if not live.held:
        raise InvalidTransition(record.grant_id, "is not held")
    grants = {**state.grants, record.grant_id: replace(live, held=False)}
    entry = _entry(state, ctx, EntryType.RELEASE, ZERO, [Allocation(record.grant_id, live.remaining)])
    return _apply(state, entry, grants)


def revoke(
    state: AccountState,
    record: Grant,
    amount: Decimal,
    ctx: EntryContext,
    rolled_over: Sequence[Grant] = (),
) -> Change:
    """Take back up to ``amount`` of what remains (a refund); never below zero. What remains of the grant goes
    first, then what remains of the grants its credits rolled over into (``rolled_over``, oldest first): they
    came from the same payment, and a refund must not leave them to the customer. The shortfall (credits
    already spent, expired without a rollover, or voided) is recorded on the entry so finance can see what
    could not be clawed back."""
    if amount <= 0:
        raise InvalidGrant("amount", "must be greater than 0")
    grants = dict(state.grants)
    closed: list[ClosedGrant] = []
    allocations: list[Allocation] = []
    pins = state.reservations
    left = amount
    for member in (record, *rolled_over):
        if left == 0:
            break
        spend.require_loaded(state, member.grant_id)
        live = state.grants.get(member.grant_id)
        taken = min(left, live.remaining) if live is not None else ZERO
        if live is None or taken == 0:
            continue
        if taken == live.remaining:
            del grants[member.grant_id]
            closed.append(ClosedGrant(member.grant_id, GrantStatus.VOIDED, ctx.now))
        else:
            grants[member.grant_id] = replace(live, remaining=live.remaining - taken)
        allocations.append(Allocation(member.grant_id, taken))
        # free credits go first; what is still missing shrinks the reservations holding on the grant
        pins = reserved.shrink(replace(state, reservations=pins), member.grant_id, taken, ctx.now)
        left -= taken
    ctx = replace(ctx, metadata={**ctx.metadata, "requested": str(amount), "shortfall": str(left)})
    entry = _entry(state, ctx, EntryType.REVOKE, -(amount - left), allocations)
    return _apply(state, entry, grants, closed=tuple(closed), reservations=pins)


def adjust(state: AccountState, amount: Decimal, ctx: EntryContext, grant_id: str) -> Change:
    """A manual correction: positive adds a promotional grant, negative spends like a debit."""
    if amount == 0:
        raise InvalidGrant("amount", "must not be 0")
    if amount < 0:
        return debit(state, -amount, ctx, entry_type=EntryType.ADJUSTMENT)
    spec = GrantSpec(
        grant_id=grant_id, amount=amount, source=Source("adjustment"), category=Category.PROMOTIONAL
    )
    change = grant(state, spec, ctx)
    entry = replace(change.entries[0], type=EntryType.ADJUSTMENT)
    return replace(change, entries=(entry,))


def combine(state: AccountState, changes: Iterable[Change]) -> Change:
    """Several consecutive changes of one account as one atomic write (a usage batch)."""
    collected = list(changes)
    if not collected:
        return Change(state=state, entries=())
    return Change(
        state=collected[-1].state,
        entries=tuple(e for c in collected for e in c.entries),
        new_grants=tuple(g for c in collected for g in c.new_grants),
        closed_grants=tuple(g for c in collected for g in c.closed_grants),
    )
