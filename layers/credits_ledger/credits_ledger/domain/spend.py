"""Which grants a debit spends, in the contract's spend order."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from credits_ledger.domain import reserved
from credits_ledger.domain.errors import CreditsError, InsufficientCredits
from credits_ledger.domain.models import AccountState, Allocation, Category, GrantsNotLoaded, LiveGrant
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.times import epoch_us

# Priorities are 0..1,000,000 wherever a grant is made (API, Stripe metadata, pricing file); the order key
# spells them in ten digits.
MAX_PRIORITY = 9_999_999_999
# Instants as microseconds since 0001-01-01 (18 digits for every datetime): never negative, so they sort as text.
_MIN_US = -62_135_596_800_000_000
NONE_UNLOADED = GrantsNotLoaded()


class GrantStoredApart(CreditsError):
    """A transition acts on a grant this state does not hold, though the account holds grants apart from its
    item (``AccountState.unloaded``): it may be one of them. Not an answer to anyone: the ledger reads that
    grant (its record gives where) and decides again."""

    def __init__(self, account_id: str, grant_id: str) -> None:
        super().__init__(f"account {account_id}: grant {grant_id} may be stored apart from its item")
        self.account_id = account_id
        self.grant_id = grant_id


def require_loaded(state: AccountState, grant_id: str) -> None:
    """GrantStoredApart when ``grant_id`` may be live without this state holding it."""
    if grant_id not in state.grants and state.unloaded.count and grant_id not in state.unloaded.looked_up:
        raise GrantStoredApart(state.account_id, grant_id)


class MoreGrantsNeeded(CreditsError):
    """The grants this state holds do not decide the spend: grants stored apart (``AccountState.unloaded``)
    may come first in spend order. Not an answer to anyone: the ledger loads more of them and decides again."""

    def __init__(self, account_id: str, missing: Decimal) -> None:
        super().__init__(f"account {account_id}: {missing} more credits are stored apart from its item")
        self.account_id = account_id
        self.missing = missing


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


def _instant(moment: datetime) -> str:
    return f"{epoch_us(moment) - _MIN_US:018d}"


def order_key(grant: LiveGrant) -> str:
    """``spend_key`` as text that sorts the same way (DynamoDB sorts sort keys as UTF-8 bytes, which is code
    point order): the sort key of a grant stored apart from its account's item, so a Query reads grants in
    the order a debit spends them."""
    if not 0 <= grant.priority <= MAX_PRIORITY:
        raise ValueError(f"priority {grant.priority} is outside 0..{MAX_PRIORITY}")
    expiry = f"0{_instant(grant.expires_at)}" if grant.expires_at is not None else "1"
    category = "0" if grant.category is Category.PROMOTIONAL else "1"
    return f"{grant.priority:010d}#{expiry}#{category}#{_instant(grant.effective_at)}#{grant.grant_id}"


def spend_order(grants: Iterable[LiveGrant], now: datetime) -> list[LiveGrant]:
    """The grants a debit may spend at ``now``, in the order it spends them."""
    return sorted((g for g in grants if g.is_spendable(now) and g.remaining > 0), key=spend_key)


def available_at(grants: Iterable[LiveGrant], now: datetime) -> Decimal:
    return sum((g.remaining for g in grants if g.is_spendable(now)), ZERO)


def allocate(
    account_id: str,
    grants: Iterable[LiveGrant],
    amount: Decimal,
    now: datetime,
    unloaded: GrantsNotLoaded = NONE_UNLOADED,
) -> list[Allocation]:
    """Split ``amount`` over spendable grants in spend order; all or nothing.

    ``unloaded`` are the account's grants this state does not hold, all spendable, none before
    ``unloaded.spend_from``: they count toward what is available, and a spend that would reach them, or a
    held grant sorting after them, raises MoreGrantsNeeded instead of deciding on a partial view."""
    if not unloaded.holds_at(now):
        raise MoreGrantsNeeded(account_id, ZERO)  # some of them may have expired since they were counted
    ordered = spend_order(grants, now)
    available = sum((g.remaining for g in ordered), ZERO) + unloaded.credits
    if amount > available:
        raise InsufficientCredits(account_id, requested=amount, available=available)
    allocations: list[Allocation] = []
    left = amount
    for grant in ordered:
        if left == 0:
            break
        if unloaded.count and unloaded.spend_from is not None and order_key(grant) >= unloaded.spend_from:
            break
        take = min(left, grant.remaining)
        allocations.append(Allocation(grant.grant_id, take))
        left -= take
    if left > 0:
        raise MoreGrantsNeeded(account_id, left)
    return allocations


def allocate_free(state: AccountState, amount: Decimal, now: datetime) -> list[Allocation]:
    """``allocate`` over what the account may spend at ``now``: its grants less what open reservations hold,
    and its grants stored apart."""
    return allocate(state.account_id, reserved.free_grants(state, now), amount, now, state.unloaded)
