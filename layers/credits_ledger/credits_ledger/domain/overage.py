"""Pay-as-you-go overage: what an account may spend beyond what it has. Pure.

With policy ``allow``, a usage debit larger than what is available takes all that is available and records
the rest as overage on its ledger entry (``metadata.overage``); the balance never goes below zero. At most
``limit`` credits of overage per UTC calendar month (the limit itself allowed); the month's running total
lives on the account item, so the same optimistic-version write that decides the debit guards the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import AccountState
from credits_ledger.domain.money import ZERO

OVERAGE_METADATA_KEY = "overage"


class OveragePolicy(StrEnum):
    REJECT = "reject"
    ALLOW = "allow"


@dataclass(frozen=True)
class OverageSettings:
    policy: OveragePolicy = OveragePolicy.REJECT
    limit: Decimal | None = None  # credits of overage per UTC calendar month; None: no cap

    @property
    def allows(self) -> bool:
        return self.policy is OveragePolicy.ALLOW


class OverageLimitReached(InsufficientCredits):
    """The debit would take the month's overage past the account's limit: 402, nothing debited."""

    def __init__(
        self, account_id: str, requested: Decimal, available: Decimal, limit: Decimal, used: Decimal
    ):
        super().__init__(account_id, requested, available)
        self.limit = limit
        self.used = used


def month_of(moment: datetime) -> str:
    """The UTC calendar month a debit counts in, e.g. ``2026-11``."""
    return f"{moment.year:04d}-{moment.month:02d}"


def meter_time(usage_time: datetime, recorded_at: datetime) -> datetime:
    """The time an overage debit's meter event gives its usage: the usage time, moved into the UTC month the
    overage was counted in (the month the debit was recorded, ``recorded_at``) when it lies outside it.
    Stripe sums a meter's events by their time, so a month's ``limit`` then bounds what Stripe bills for that
    month too (a late usage of last month, counted in this one, would otherwise be billed in last month on
    top of its full limit); and the time stays within the 35 days Stripe accepts, although a usage may be
    sent up to 35 days late."""
    month_start = recorded_at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month_start = (month_start + timedelta(days=32)).replace(day=1)
    return min(max(usage_time, month_start), next_month_start - timedelta(seconds=1))


def used_in(state: AccountState, month: str) -> Decimal:
    """Overage recorded on the account in ``month`` (the running total resets when a new month starts)."""
    return state.overage_used if state.overage_month == month else ZERO


def overage_for(
    state: AccountState, requested: Decimal, available: Decimal, settings: OverageSettings, now: datetime
) -> Decimal:
    """How much of ``requested`` becomes overage, or InsufficientCredits when the policy refuses it."""
    shortfall = requested - available
    if not settings.allows or shortfall <= 0:
        raise InsufficientCredits(state.account_id, requested=requested, available=available)
    used = used_in(state, month_of(now))
    if settings.limit is not None and used + shortfall > settings.limit:
        raise OverageLimitReached(state.account_id, requested, available, settings.limit, used)
    return shortfall
