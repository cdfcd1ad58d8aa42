"""Rollover: when a grant expires, carry part of what remained into a new grant, in the same atomic change.

Pure: ``expire_with_rollover`` composes ``transitions.expire`` and ``transitions.grant`` on one state and
combines them into one ``Change`` with two entries (``expire`` then ``rollover``), so the data layer writes
both or neither. The policy comes from the grant's pack in the pricing file (``rollover_percent``,
``rollover_max``, ``rollover_valid_days``, ``rollover_repeat``); a rollover grant records its
``rollover_generation`` and rolls over again only when the pack says ``rollover_repeat = true``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from credits_ledger.domain import idempotency, transitions
from credits_ledger.domain.models import AccountState, Change, EntryType, Grant, LiveGrant, Source
from credits_ledger.domain.money import SCALE, ZERO, canonical
from credits_ledger.domain.transitions import EntryContext, GrantSpec

HUNDRED = Decimal(100)
SOURCE_TYPE = "rollover"
GENERATION = "rollover_generation"
ROLLOVER_OF = "rollover_of"
ROLLOVER_ROOT = "rollover_root"


@dataclass(frozen=True)
class RolloverPolicy:
    """Carry ``percent`` % of what expires, at most ``max_amount``, into a grant valid ``valid_days`` more
    days after the original expiry. ``repeat``: a rollover grant may itself roll over."""

    valid_days: int
    percent: Decimal = HUNDRED
    max_amount: Decimal | None = None
    repeat: bool = False

    def __post_init__(self) -> None:
        if self.valid_days <= 0:
            raise ValueError("valid_days must be a positive number of days")
        if not ZERO < self.percent <= HUNDRED:
            raise ValueError("percent must be greater than 0 and at most 100")
        if self.max_amount is not None and self.max_amount <= 0:
            raise ValueError("max_amount must be greater than 0")


def generation(record: Grant) -> int:
    """0 for a grant that is not a rollover, n for the n-th rollover of one."""
    if record.source.type != SOURCE_TYPE:
        return 0
    try:
        return max(1, int(record.metadata.get(GENERATION, "1")))
    except ValueError:
        return 1


def rollover_amount(remaining: Decimal, policy: RolloverPolicy) -> Decimal:
    """What carries over: ``percent`` of ``remaining`` rounded DOWN to 6 digits (rounding never creates
    credits), capped at ``max_amount``."""
    amount = (remaining * policy.percent / HUNDRED).quantize(SCALE, rounding=ROUND_DOWN)
    if policy.max_amount is not None:
        amount = min(amount, policy.max_amount)
    return canonical(max(amount, ZERO))


def rollover_grant_id(record: Grant, next_generation: int) -> str:
    """Deterministic, so a retried decision produces the same grant: ``<original grant>-ro<generation>``."""
    root = record.metadata.get(ROLLOVER_ROOT, record.grant_id)
    return f"{root}-ro{next_generation}"


def rollover_ids(record: Grant) -> Iterator[str]:
    """The ids of the grants ``record``'s credits may have rolled over into, in the order they are created:
    each generation's rollover is made when the one before it expires."""
    for next_generation in itertools.count(generation(record) + 1):
        yield rollover_grant_id(record, next_generation)


def plan_rollover(
    record: Grant, live: LiveGrant, policy: RolloverPolicy | None, now: datetime
) -> GrantSpec | None:
    """The grant a rollover creates when ``record`` expires at ``now`` with ``live.remaining`` left, or None.

    None when there is no policy, when the grant is itself a rollover and the policy does not repeat, when the
    grant is held (disputed credits do not get a new life), when nothing would carry over, or when the new
    validity (counted from the original ``expires_at``) has already passed at ``now`` (a very late job).
    """
    if policy is None or record.expires_at is None or live.held:
        return None
    current = generation(record)
    if current >= 1 and not policy.repeat:
        return None
    amount = rollover_amount(live.remaining, policy)
    if amount <= 0:
        return None
    expires_at = record.expires_at + timedelta(days=policy.valid_days)
    if expires_at <= now:
        return None
    metadata = {
        k: v
        for k, v in {
            "pack": record.metadata.get("pack"),
            GENERATION: str(current + 1),
            ROLLOVER_OF: record.grant_id,
            ROLLOVER_ROOT: record.metadata.get(ROLLOVER_ROOT, record.grant_id),
        }.items()
        if v
    }
    return GrantSpec(
        grant_id=rollover_grant_id(record, current + 1),
        amount=amount,
        source=Source(SOURCE_TYPE, record.grant_id),
        category=record.category,
        priority=record.priority,
        effective_at=record.expires_at,  # continuous: valid from the instant the original stopped
        expires_at=expires_at,
        reason=f"rollover of {record.grant_id}",
        metadata=metadata,
    )


def expire_with_rollover(
    state: AccountState, record: Grant, ctx: EntryContext, policy: RolloverPolicy | None
) -> Change:
    """``transitions.expire`` plus, when ``plan_rollover`` says so, a ``rollover`` grant: one Change.

    Entries: ``expire`` (key ``ctx.entry_key``, amount -remaining) then ``rollover`` (key
    ``rollover:<grant>``, amount +carried). Without a rollover this is exactly ``transitions.expire``.
    Raises GrantNotLive / GrantNotDue like ``transitions.expire``.
    """
    expired = transitions.expire(state, record, ctx)
    # what expires now: credits an open reservation keeps capturable are not part of it
    live = replace(state.grants[record.grant_id], remaining=-expired.entries[0].amount)
    spec = plan_rollover(record, live, policy, ctx.now)
    if spec is None:
        return expired
    rollover_ctx = EntryContext(
        entry_key=idempotency.rollover_key(record.grant_id),
        now=ctx.now,
        reference=ctx.reference,
        metadata={ROLLOVER_OF: record.grant_id},
    )
    granted = transitions.grant(expired.state, spec, rollover_ctx)
    rollover_entry = replace(granted.entries[0], type=EntryType.ROLLOVER)
    expire_entry = replace(
        expired.entries[0],
        metadata={
            **expired.entries[0].metadata,
            "rolled_over": str(spec.amount),
            "rollover_grant": spec.grant_id,
        },
    )
    return transitions.combine(
        state,
        [replace(expired, entries=(expire_entry,)), replace(granted, entries=(rollover_entry,))],
    )
