"""Reservations: hold credits for a long-running job, then capture what it used (docs/reservations.md).

Each operation reads the account, decides with the pure transitions of domain/reservations.py and commits the
account change and the reservation record in one transaction, retrying on a version conflict like the
Ledger does. Idempotency comes from entry keys: ``reserve:<id>`` (the request fingerprint tells a replay from
another body: 409), and ``unreserve:<id>``, written by whichever of capture, release or the sweep ends the
reservation first; the others find it taken and answer from the record (a second capture: the first answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from credits_ledger.dal.accounts import AccountRepository, EntryExists, RelatedItemChanged, VersionConflict
from credits_ledger.dal.live_grants import GrantsToRead
from credits_ledger.dal.reservations import ReservationRecord, ReservationRepository
from credits_ledger.domain import idempotency as idem
from credits_ledger.domain import reservations as rv
from credits_ledger.domain.balance import available as available_at
from credits_ledger.domain.balance import with_available_after
from credits_ledger.domain.errors import ConcurrencyConflict, IdempotencyMismatch, InsufficientCredits
from credits_ledger.domain.models import AccountState, Change, LedgerEntry
from credits_ledger.domain.money import ZERO, format_amount, round_up
from credits_ledger.domain.reservations import ReservationError, ReservationStatus
from credits_ledger.domain.spend import MoreGrantsNeeded
from credits_ledger.domain.times import iso, parse_iso
from credits_ledger.domain.transitions import EntryContext
from credits_ledger.ledger import utc_now
from credits_ledger.pricing import Pricing
from credits_ledger.retry import ensure_time_for_an_attempt, wait_after_conflict
from credits_ledger.usage import InvalidUsage

Decide = Callable[[AccountState, datetime], tuple[Change, Sequence[dict[str, Any]]]]


def credits_for(meter: str, quantity: Decimal, pricing: Pricing) -> Decimal:
    """A reservation asked as meter x quantity is priced like usage (rounded up to 6 digits)."""
    rate = pricing.meters.get(meter)
    if rate is None:
        known = ", ".join(sorted(pricing.meters)) or "none"
        raise InvalidUsage("meter", f"unknown meter {meter!r} (known: {known})")
    return round_up(quantity * rate.credits_per_unit)


@dataclass(frozen=True)
class ReserveRequest:
    reservation_id: str
    account_id: str
    credits: Decimal
    expires_in: int
    meter: str | None = None
    quantity: Decimal | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """The same request however spelled; ``expires_in`` included (it is part of what was asked)."""
        return idem.fingerprint(
            {
                "customer": self.account_id,
                "credits": format_amount(self.credits),
                "meter": self.meter,
                "quantity": format_amount(self.quantity) if self.quantity is not None else None,
                "expires_in": self.expires_in,
                "metadata": sorted(self.metadata.items()),
            }
        )


@dataclass(frozen=True)
class Answer:
    record: ReservationRecord
    replayed: bool = False


@dataclass(frozen=True)
class ReservationView:
    """A reservation as a reader sees it now: an open one past ``expires_at`` reads ``expired`` and holds 0."""

    record: ReservationRecord
    status: ReservationStatus
    held: Decimal
    expires_at: datetime


class Reservations:
    def __init__(
        self,
        accounts: AccountRepository,
        records: ReservationRepository,
        clock: Callable[[], datetime] = utc_now,
        max_attempts: int = 60,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.accounts = accounts
        self.records = records
        self._clock = clock
        self._max_attempts = max_attempts
        self._sleep = sleep

    @classmethod
    def over(cls, accounts: AccountRepository, clock: Callable[[], datetime] = utc_now) -> Reservations:
        """The reservations of the accounts in ``accounts``' table (their records live in the same table, so a
        reserve commits with the account in one transaction)."""
        return cls(accounts, ReservationRepository(accounts.client, accounts.table), clock)

    # ---- reads -------------------------------------------------------------------------------------------
    def record(self, reservation_id: str) -> ReservationRecord:
        return self.records.get(reservation_id)

    def view(self, record: ReservationRecord, state: AccountState | None = None) -> ReservationView:
        if record.status is not ReservationStatus.ACTIVE:
            return ReservationView(record, record.status, ZERO, record.expires_at)
        now = self._clock()
        state = state or self.accounts.state(record.account_id, consistent=True, next_expiry=False)
        live = state.reservations.get(record.reservation_id)
        if live is None:  # ended after the record was read
            fresh = self.records.get(record.reservation_id)
            if fresh.status is ReservationStatus.ACTIVE:
                return ReservationView(fresh, ReservationStatus.EXPIRED, ZERO, fresh.expires_at)
            return self.view(fresh)
        if not live.holds_at(now):
            return ReservationView(record, ReservationStatus.EXPIRED, ZERO, live.expires_at)
        return ReservationView(record, ReservationStatus.ACTIVE, live.credits, live.expires_at)

    def open_of(self, account_id: str) -> list[ReservationView]:
        """The account's open reservations (those not ended yet, expired ones included), soonest end first."""
        state = self.accounts.state(account_id, consistent=True, next_expiry=False)
        records = self.records.get_many(state.reservations)
        views = [self.view(records[r], state) for r in state.reservations if r in records]
        return sorted(views, key=lambda v: (v.expires_at, v.record.reservation_id))

    # ---- writes ------------------------------------------------------------------------------------------
    def reserve(self, request: ReserveRequest) -> Answer:
        fingerprint = request.fingerprint()
        key = idem.reserve_key(request.reservation_id)
        made: dict[str, ReservationRecord] = {}

        def decide(state: AccountState, now: datetime) -> tuple[Change, Sequence[dict[str, Any]]]:
            expires_at = now + timedelta(seconds=request.expires_in)
            ctx = EntryContext(
                entry_key=key,
                now=now,
                reference=request.reservation_id,
                fingerprint=fingerprint,
                metadata={"expires_at": iso(expires_at), "credits": format_amount(request.credits)},
            )
            change = rv.reserve(state, request.reservation_id, request.credits, expires_at, ctx)
            record = ReservationRecord(
                reservation_id=request.reservation_id,
                account_id=request.account_id,
                credits=request.credits,
                expires_at=expires_at,
                created_at=now,
                allocations=change.entries[0].allocations,
                meter=request.meter,
                quantity=request.quantity,
                metadata=dict(request.metadata),
                fingerprint=fingerprint,
            )
            made["record"] = record
            return change, [self.records.create_action(record)]

        existing = self._commit(request.account_id, key, decide)
        if existing is None:
            return Answer(made["record"])
        if existing.fingerprint != fingerprint:
            raise IdempotencyMismatch(key)
        return Answer(first_answer(existing, request), replayed=True)

    def capture(self, record: ReservationRecord, credits: Decimal | None, allow_overrun: bool) -> Answer:
        if record.status is not ReservationStatus.ACTIVE:
            return self._ended_answer(record, ReservationStatus.CAPTURED)
        made: dict[str, ReservationRecord] = {}

        def decide(state: AccountState, now: datetime) -> tuple[Change, Sequence[dict[str, Any]]]:
            ctx = EntryContext(
                entry_key=idem.unreserve_key(record.reservation_id), now=now, reference=record.reservation_id
            )
            ended = rv.capture(state, record.reservation_id, credits, allow_overrun, ctx)
            after = record.ended(
                ended.status,
                now,
                captured=ended.captured,
                released=ended.released,
                expired=ended.expired,
                available_after=available_at(ended.change.state, now),
                capture_allocations=ended.allocations,
            )
            made["record"] = after
            # its debit says what is left to spend, as any debit does: an overrun may start a top-up
            return with_available_after(ended.change, now), [self.records.end_action(after)]

        return self._end(record, decide, made, ReservationStatus.CAPTURED)

    def release(self, record: ReservationRecord) -> Answer:
        if record.status is not ReservationStatus.ACTIVE:
            return self._ended_answer(record, ReservationStatus.RELEASED)
        made: dict[str, ReservationRecord] = {}
        return self._end(record, self._release_decision(record, made), made, ReservationStatus.RELEASED)

    def expire(self, account_id: str, reservation_id: str, now: datetime) -> ReservationRecord | None:
        """The sweep's end of a reservation past its ``expires_at`` at ``now`` (the job's "now"); None when
        there is nothing to do (ended already, or extended past ``now``)."""
        made: dict[str, ReservationRecord] = {}
        record = self.records.get(reservation_id)
        if record.status is not ReservationStatus.ACTIVE:
            return None
        try:
            existing = self._commit(
                account_id,
                idem.unreserve_key(reservation_id),
                self._release_decision(record, made, sweep=True),
                now=now,
            )
        except rv.ReservationNotDue:
            return None
        return made["record"] if existing is None else None

    def extend(self, record: ReservationRecord, expires_in: int) -> ReservationView:
        if record.status is not ReservationStatus.ACTIVE:
            raise ReservationError(
                record.reservation_id, "id", f"is {record.status.value}: nothing to extend"
            )

        def decide(state: AccountState, now: datetime) -> tuple[Change, Sequence[dict[str, Any]]]:
            expires_at = now + timedelta(seconds=expires_in)
            ctx = EntryContext(
                entry_key=idem.extend_key(record.reservation_id, state.version + 1),
                now=now,
                reference=record.reservation_id,
                metadata={"reservation": record.reservation_id, "expires_at": iso(expires_at)},
            )
            change = rv.extend(state, record.reservation_id, expires_at, record.created_at, ctx)
            return change, [self.records.extend_action(record.reservation_id, expires_at)]

        self._commit(record.account_id, None, decide)
        return self.view(self.records.get(record.reservation_id))

    # ---- helpers -----------------------------------------------------------------------------------------
    def _release_decision(
        self, record: ReservationRecord, made: dict[str, ReservationRecord], *, sweep: bool = False
    ) -> Decide:
        def decide(state: AccountState, now: datetime) -> tuple[Change, Sequence[dict[str, Any]]]:
            ctx = EntryContext(
                entry_key=idem.unreserve_key(record.reservation_id), now=now, reference=record.reservation_id
            )
            ended = rv.release(state, record.reservation_id, ctx, sweep=sweep)
            after = record.ended(ended.status, now, released=ended.released, expired=ended.expired)
            made["record"] = after
            return ended.change, [self.records.end_action(after)]

        return decide

    def _end(
        self,
        record: ReservationRecord,
        decide: Decide,
        made: dict[str, ReservationRecord],
        wanted: ReservationStatus,
    ) -> Answer:
        existing = self._commit(record.account_id, idem.unreserve_key(record.reservation_id), decide)
        if existing is None:
            return Answer(made["record"])
        return self._ended_answer(self.records.get(record.reservation_id), wanted)

    @staticmethod
    def _ended_answer(record: ReservationRecord, wanted: ReservationStatus) -> Answer:
        """A reservation that ended before: the first answer when it ended the way asked (a release of an
        expired one counts as released: it holds nothing either way), else 422."""
        if record.status is wanted or (
            wanted is ReservationStatus.RELEASED and record.status is ReservationStatus.EXPIRED
        ):
            return Answer(record, replayed=True)
        raise ReservationError(record.reservation_id, "id", f"is {record.status.value}")

    def _commit(
        self, account_id: str, key: str | None, decide: Decide, now: datetime | None = None
    ) -> LedgerEntry | None:
        """Decide on the account and commit once; the entry already under ``key`` when it was taken before
        (a replay), else None. ``key`` None: no replay check (a retry decides again)."""
        keys = [key] if key else []
        ensure_time_for_an_attempt(account_id)
        tail = GrantsToRead(self.accounts.head_size)  # what a decision asked of the grants kept apart

        def reread() -> tuple[AccountState, dict[str, LedgerEntry]]:
            return self.accounts.load(account_id, keys, consistent=True, now=now or self._clock(), tail=tail)

        state, existing = self.accounts.load(account_id, keys, now=now or self._clock())
        consistent = False
        for attempt in range(self._max_attempts):
            if key and key in existing:
                return existing[key]
            try:
                change, extra = decide(state, now or self._clock())
            except MoreGrantsNeeded as short:
                tail.more(account_id, short)
                state, existing = reread()
                consistent = True
                continue
            except (InsufficientCredits, ReservationError):
                if consistent and self.accounts.still_read_as(state):
                    raise
                # an eventually consistent read may be behind (a grant just added, a reservation just made)
                state, existing = reread()
                consistent = True
                continue
            try:
                self.accounts.commit(change, expected_version=state.version, extra_actions=extra)
                return None
            except EntryExists as exc:
                existing = exc.entries
                if not key or key not in existing:
                    state, existing = reread()
                    consistent = True
            except RelatedItemChanged:
                # the record moved on (ended or extended) since this decision's read: decide again on a fresh
                # account, which shows the reservation ended (422) or lets the extension through
                state, existing = reread()
                consistent = True
            except VersionConflict as exc:
                wait_after_conflict(account_id, attempt, self._sleep)
                if exc.current is not None and not tail.reads:
                    state, consistent = exc.current, True
                else:
                    state, existing = reread()
                    consistent = True
        raise ConcurrencyConflict(
            f"account {account_id}: gave up after {self._max_attempts} conflicting writes"
        )


def first_answer(entry: LedgerEntry, request: ReserveRequest) -> ReservationRecord:
    """The answer the ``reserve`` entry gave, rebuilt from it (a replay says what the first answer said)."""
    return ReservationRecord(
        reservation_id=request.reservation_id,
        account_id=entry.account_id,
        credits=Decimal(entry.metadata.get("credits", format_amount(request.credits))),
        expires_at=parse_iso(entry.metadata["expires_at"]),
        created_at=entry.created_at,
        allocations=entry.allocations,
        meter=request.meter,
        quantity=request.quantity,
        metadata=dict(request.metadata),
        fingerprint=entry.fingerprint,
    )
