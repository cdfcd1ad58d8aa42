"""Helpers for the ledger-core tests: a settable clock, a Ledger on a given client/table, books checks.

clock = FakeClock()                              # 2030-01-01T00:00:00Z, tz-aware UTC
ledger = make_ledger(client, "CreditsTable", clock)
clock.advance(days=2)
assert_books_balance(ledger, "cus_1")            # sum(ledger amounts) == balance == sum(live remaining)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.domain.models import (
    TERMINAL_STATUSES,
    Category,
    CostBasis,
    GrantStatus,
    LedgerEntry,
    Source,
)
from credits_ledger.domain.transitions import GrantSpec
from credits_ledger.ledger import Ledger

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class FakeClock:
    """A tz-aware UTC "now" the test sets and advances; call it like ``datetime.now``."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = self._check(start)

    @staticmethod
    def _check(moment: datetime) -> datetime:
        if moment.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware datetime")
        return moment.astimezone(UTC)

    def __call__(self) -> datetime:
        return self._now

    @property
    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = self._check(moment)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self._now = self._now + (delta if delta is not None else timedelta(**kwargs))
        return self._now


class SleepRecorder:
    """Stands in for ``time.sleep`` in the Ledger's conflict backoff: records instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_ledger(
    client: Any,
    table_name: str,
    clock: FakeClock,
    *,
    max_attempts: int = 60,
    sleep: Any = None,
    combiner_timing: Any = None,
    head_size: int | None = None,
) -> Ledger:
    """A Ledger over the real AccountRepository on ``client``/``table_name``; backoff never really sleeps.
    ``head_size``: settled grants the account item holds (dal/live_grants.py; small to drive the tail)."""
    repository = (
        AccountRepository(client, table_name)
        if head_size is None
        else AccountRepository(client, table_name, head_size=head_size)
    )
    return Ledger(
        repository,
        clock=clock,
        max_attempts=max_attempts,
        sleep=sleep if sleep is not None else SleepRecorder(),
        combiner_timing=combiner_timing,
    )


def spec(
    grant_id: str,
    amount: str | Decimal,
    *,
    category: Category = Category.PAID,
    priority: int = 50,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    source: Source | None = None,
    funding_key: str | None = None,
) -> GrantSpec:
    return GrantSpec(
        grant_id=grant_id,
        amount=Decimal(amount),
        source=source or Source("admin"),
        category=category,
        priority=priority,
        effective_at=effective_at,
        expires_at=expires_at,
        cost_basis=CostBasis(Decimal(0) if category is Category.PROMOTIONAL else Decimal(amount), "usd"),
        funding_key=funding_key,
    )


def all_entries(ledger: Ledger, account_id: str, page_size: int = 100) -> list[LedgerEntry]:
    """Every ledger entry of the account, newest first, following the cursors."""
    entries: list[LedgerEntry] = []
    cursor = None
    while True:
        page = ledger.transactions(account_id, page_size, cursor)
        entries.extend(page.items)
        if page.next_cursor is None:
            return entries
        cursor = page.next_cursor


def all_grants(ledger: Ledger, account_id: str) -> list[Any]:
    grants: list[Any] = []
    cursor = None
    while True:
        page = ledger.grants(account_id, 100, cursor)
        grants.extend(page.items)
        if page.next_cursor is None:
            return grants
        cursor = page.next_cursor


def ledger_now(ledger: Ledger) -> datetime:
    """The "now" the ledger decides with (its clock; a FakeClock in these tests)."""
    clock = getattr(ledger, "_clock", None)
    return clock() if callable(clock) else datetime.now(UTC)


def assert_books_balance(ledger: Ledger, account_id: str) -> Decimal:
    """The ledger's bookkeeping identity, read back from the table; returns the ledger balance.

    sum of ledger amounts == ledger balance == sum of live remaining; entries numbered 1..n without gaps,
    the newest entry's ``balance_after`` is the balance, never negative, and every grant record agrees with
    the live set (live grants show their live remaining, closed ones remaining 0 and a terminal status).
    """
    state = ledger.repository.state(account_id, consistent=True, all_grants=True)
    entries = all_entries(ledger, account_id)
    total = sum((e.amount for e in entries), Decimal(0))
    live_total = sum((g.remaining for g in state.grants.values()), Decimal(0))
    assert total == state.ledger_balance, f"sum of ledger {total} != ledger balance {state.ledger_balance}"
    assert live_total == state.ledger_balance, f"sum of live remaining {live_total} != {state.ledger_balance}"
    assert state.ledger_balance >= 0, f"negative balance {state.ledger_balance}"
    seqs = sorted(e.seq for e in entries)
    assert seqs == list(range(1, len(entries) + 1)), f"ledger sequence has gaps or repeats: {seqs}"
    assert state.version == len(entries)
    if entries:
        assert entries[0].balance_after == state.ledger_balance
    running = Decimal(0)
    for entry in sorted(entries, key=lambda e: e.seq):
        running += entry.amount
        assert entry.balance_after == running, (
            f"entry {entry.seq}: balance_after {entry.balance_after} != {running}"
        )
    records = all_grants(ledger, account_id)
    for record in records:
        live = state.grants.get(record.grant_id)
        if live is None:
            assert record.status in TERMINAL_STATUSES, (
                f"{record.grant_id} left the live set as {record.status}"
            )
            assert record.remaining == 0
        elif live.remaining == 0:
            # a spent grant the change could not close yet (too many for one transaction) reads as depleted
            assert record.status is GrantStatus.DEPLETED and record.remaining == 0
        elif live.remaining == 0:
            # spent by a debit that depleted more grants than one transaction closes: reads as depleted and
            # is closed by one of the account's next changes
            assert record.status is GrantStatus.DEPLETED
        else:
            # a live grant past its expires_at reads as expired before the job closes it; never depleted/voided
            assert record.status not in TERMINAL_STATUSES or (
                record.status is GrantStatus.EXPIRED and live.is_expired(ledger_now(ledger))
            )
            assert record.remaining == live.remaining
    assert set(state.grants) <= {g.grant_id for g in records}
    return state.ledger_balance
