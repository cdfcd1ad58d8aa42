"""Domain models: plain frozen dataclasses, independent of the API and of DynamoDB item layouts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from credits_ledger.domain.money import ZERO
from credits_ledger.domain.times import parse_iso

DEFAULT_PRIORITY = 50


class Category(StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


class GrantStatus(StrEnum):
    ACTIVE = "active"
    PENDING = "pending"
    HELD = "held"
    DEPLETED = "depleted"
    EXPIRED = "expired"
    VOIDED = "voided"


TERMINAL_STATUSES = frozenset({GrantStatus.DEPLETED, GrantStatus.EXPIRED, GrantStatus.VOIDED})


class EntryType(StrEnum):
    GRANT = "grant"
    DEBIT = "debit"
    EXPIRE = "expire"
    VOID = "void"
    REVOKE = "revoke"
    HOLD = "hold"
    RELEASE = "release"
    ROLLOVER = "rollover"
    ADJUSTMENT = "adjustment"
    RESERVE = "reserve"
    UNRESERVE = "unreserve"


def utc(moment: datetime) -> datetime:
    """Every time in the domain is timezone-aware UTC; naive datetimes are a programming error."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: times must carry a timezone")
    return moment.astimezone(UTC)


MAX_IDENTIFIER_LENGTH = 255
IDENTIFIER_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters (the API's schema)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def is_identifier(value: str) -> bool:
    """An id the API takes (an account, a usage event, a meter): 1 to 255 characters, no control characters.
    Held to it wherever an id comes from: an account named only by Stripe metadata (up to 500 characters of
    anything) would otherwise exist without the API being able to address it, and its keys could outgrow
    DynamoDB's (a sort key holds at most 1,024 bytes: 255 characters of 4 bytes fit)."""
    return 0 < len(value) <= MAX_IDENTIFIER_LENGTH and _CONTROL_CHARACTER.search(value) is None


# One path segment as API Gateway hands it to a route, decoded, that a route's ``{param}`` matches (word
# characters and RFC 3986's other characters, as Powertools' router spells it): an id with any other
# character (an emoji, ``/``, ``#``, ``?``, a quote) could be created but never addressed by its path.
_PATH_SEGMENT = re.compile(r"[-._~()'!*:@,;=+&$%<> \[\]{}|^\w]+")
PATH_SEGMENT_CHARACTERS = "letters, digits, spaces and -._~()'!*:@,;=+&$%<>[]{}|^"


def is_addressable(value: str) -> bool:
    """``value`` can be a path segment of the API (an account id, a reservation id)."""
    return _PATH_SEGMENT.fullmatch(value) is not None


def is_account_id(value: str) -> bool:
    """An account id the API can take and address: an identifier that fits in a path segment."""
    return is_identifier(value) and is_addressable(value)


def is_stripe_customer_id(value: str) -> bool:
    """A Stripe customer id (``cus_...``). An account whose id is one is that customer: overage and top-ups
    bill it as itself, whoever paid for its credits."""
    return value.startswith("cus_")


@dataclass(frozen=True)
class Source:
    """What created a grant: a Stripe payment, an invoice, an admin grant, a rollover..."""

    type: str
    id: str | None = None


@dataclass(frozen=True)
class CostBasis:
    amount: Decimal = ZERO
    currency: str | None = None


@dataclass(frozen=True)
class LiveGrant:
    """The spendable part of a grant, kept on the account so one read decides a debit."""

    grant_id: str
    remaining: Decimal
    category: Category
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    held: bool = False

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def is_spendable(self, now: datetime) -> bool:
        """Active at this instant: effective, not expired (even before the expiry job ran), not held."""
        return not self.held and self.effective_at <= now and not self.is_expired(now)

    def status(self, now: datetime) -> GrantStatus:
        if self.remaining == 0:
            return GrantStatus.DEPLETED
        if self.is_expired(now):
            return GrantStatus.EXPIRED
        if self.held:
            return GrantStatus.HELD
        if self.effective_at > now:
            return GrantStatus.PENDING
        return GrantStatus.ACTIVE


@dataclass(frozen=True)
class Allocation:
    """How much of one grant an entry moved. ``remaining_after`` (set on entries that take credits out of a
    grant: debit, expire, void, revoke) is what the grant had left after this entry, so money recognition can
    place the entry on the grant's cumulative consumption without replaying its history (docs/money.md)."""

    grant_id: str
    amount: Decimal
    # Derived from the account state at the entry, not part of what was moved: left out of equality.
    remaining_after: Decimal | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LiveReservation:
    """An open reservation, kept on the account next to the grants it pins so one read decides a debit.

    ``allocations`` are the credits it holds on each grant (in the order a capture spends them); it holds them
    only while ``expires_at`` is in the future: past it, they are available again before the sweep runs.
    """

    reservation_id: str
    expires_at: datetime
    allocations: tuple[Allocation, ...] = ()

    def holds_at(self, now: datetime) -> bool:
        return self.expires_at > now

    @property
    def credits(self) -> Decimal:
        return sum((a.amount for a in self.allocations), ZERO)


@dataclass(frozen=True)
class ExpiryAt:
    """When credits expire next, and how many."""

    at: datetime
    amount: Decimal


@dataclass(frozen=True)
class GrantsNotLoaded:
    """Live grants of an account that a state does not hold: the ones stored apart from the account item
    (docs/data-model.md) that the decision did not need to read. What the loader promises of them at the
    decision's ``now``: each is spendable (effective, not past its expiry, not held, pinned by no
    reservation) and sorts at or after ``spend_from`` in spend order (``spend.order_key``), and every live
    grant sorting before ``spend_from`` is in ``AccountState.grants``. The promise holds until
    ``spendable_until`` (none of them expires before it): a decision at or after it must load them again.
    ``next_expiry``: the earliest expiry among them, when the loader looked (``expiry_known``)."""

    count: int = 0
    paid: Decimal = ZERO
    promotional: Decimal = ZERO
    spend_from: str | None = None
    spendable_until: datetime | None = None
    expiry_known: bool = True
    next_expiry: ExpiryAt | None = None
    # grants the loader looked for among them (by their records): one of these not held is not live at all
    looked_up: frozenset[str] = frozenset()

    def holds_at(self, now: datetime) -> bool:
        """The promise above still holds at ``now``."""
        return self.count == 0 or self.spendable_until is None or now < self.spendable_until

    @property
    def credits(self) -> Decimal:
        return self.paid + self.promotional


@dataclass(frozen=True)
class AccountState:
    """Balance, live grants and open reservations of one account; ``version`` counts its ledger entries."""

    account_id: str
    version: int = 0
    ledger_balance: Decimal = ZERO
    grants: dict[str, LiveGrant] = field(default_factory=dict)
    reservations: dict[str, LiveReservation] = field(default_factory=dict)
    # Overage recorded in the UTC month ``overage_month`` (domain/overage.py): guarded by ``version`` like the rest.
    overage_month: str | None = None
    overage_used: Decimal = ZERO
    # Until when the account's debit queue is being committed (combining.py): single debits join the queue
    # at once. A hint for throughput, never part of a decision about credits.
    queue_busy_until: datetime | None = None
    # The live grants not in ``grants`` (an account with many grants keeps most of them apart from its item).
    unloaded: GrantsNotLoaded = field(default_factory=GrantsNotLoaded)
    # How the data layer stored the grants read (dal/live_grants.py): carried from the read to the write
    # through every transition, never looked at by the domain.
    storage: object = field(default=None, compare=False, repr=False)

    def with_changes(
        self,
        *,
        entries: int,
        balance_delta: Decimal,
        grants: dict[str, LiveGrant],
        reservations: dict[str, LiveReservation] | None = None,
    ) -> AccountState:
        return replace(
            self,
            version=self.version + entries,
            ledger_balance=self.ledger_balance + balance_delta,
            grants=grants,
            reservations=self.reservations if reservations is None else reservations,
        )


@dataclass(frozen=True)
class Grant:
    """A block of credits as recorded when it was created (and when it was closed)."""

    grant_id: str
    account_id: str
    amount: Decimal
    category: Category
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    source: Source
    cost_basis: CostBasis
    created_at: datetime
    status: GrantStatus = GrantStatus.ACTIVE
    remaining: Decimal = ZERO
    closed_at: datetime | None = None
    funding_key: str | None = None
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def live(self) -> LiveGrant:
        return LiveGrant(
            grant_id=self.grant_id,
            remaining=self.remaining,
            category=self.category,
            priority=self.priority,
            effective_at=self.effective_at,
            expires_at=self.expires_at,
        )

    def merged_with(self, live: LiveGrant | None, now: datetime) -> Grant:
        """The grant as a reader sees it: live remaining and status when still live."""
        if live is None:
            return self
        return replace(self, remaining=live.remaining, status=live.status(now))


@dataclass(frozen=True)
class LedgerEntry:
    """An immutable record of one change. ``entry_key`` is also the operation's idempotency key."""

    entry_key: str
    account_id: str
    seq: int
    type: EntryType
    amount: Decimal
    balance_after: Decimal
    allocations: tuple[Allocation, ...]
    reference: str | None
    created_at: datetime
    fingerprint: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def usage_time(self) -> datetime:
        """When the usage behind a debit happened: the client's ``timestamp`` when it sent one (kept in the
        metadata), else when the entry was recorded. Burn per day and Stripe meter events count by it.
        A stamp that does not read as a time (only the usage API validates it) counts as the recording time:
        the stream jobs that ask must never fail on one entry's metadata and stall the account behind it."""
        stamp = self.metadata.get("timestamp")
        if not stamp:
            return self.created_at
        try:
            return parse_iso(stamp)
        except (ValueError, TypeError, OverflowError):
            return self.created_at


@dataclass(frozen=True)
class ClosedGrant:
    """A grant leaving the live set in a change; its item is updated in the same transaction."""

    grant_id: str
    status: GrantStatus
    closed_at: datetime


@dataclass(frozen=True)
class Change:
    """The outcome of a pure transition: the new account state and what must be written with it."""

    state: AccountState
    entries: tuple[LedgerEntry, ...]
    new_grants: tuple[Grant, ...] = ()
    closed_grants: tuple[ClosedGrant, ...] = ()


@dataclass(frozen=True)
class Balance:
    account_id: str
    available: Decimal
    ledger_balance: Decimal
    paid: Decimal
    promotional: Decimal
    held: Decimal
    pending: Decimal
    next_expiry_at: datetime | None
    next_expiry_amount: Decimal
    as_of: datetime
    reserved: Decimal = ZERO
