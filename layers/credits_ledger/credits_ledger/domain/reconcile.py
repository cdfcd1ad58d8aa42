"""Reconciliation of one account: its state item against its ledger, incrementally from a checkpoint.

Pure. The invariants (docs/api.md section 1): the balance on the account equals the sum of its ledger
amounts and the sum of its live grants' remaining credits; ``version`` equals the number of entries (seq
1..version, no gap, no duplicate); every entry's ``balance_after`` continues the running sum; no live grant
is below zero; reserved credits match the open reservations (every pin on a live grant, what holds on a grant
at most its remaining, each reservation on the account open in its record and never holding more than it
reserved). A checkpoint
(last verified seq and ledger sum) lets a run read only the entries written since the last clean check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from credits_ledger.domain.models import AccountState, LedgerEntry
from credits_ledger.domain.money import ZERO, format_amount
from credits_ledger.domain.reserved import pinned


@dataclass(frozen=True)
class OpenReservation:
    """What the reservation record says, for the check against the account item."""

    account_id: str
    status: str
    credits: Decimal


@dataclass(frozen=True)
class Checkpoint:
    """The ledger of an account was verified up to ``seq`` (inclusive), where its amounts summed to ``total``."""

    account_id: str
    seq: int = 0
    total: Decimal = ZERO
    verified_at: datetime | None = None
    noted_mismatch: bool = False  # its registry item still carries the note of an earlier mismatch


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


@dataclass(frozen=True)
class Reconciliation:
    account_id: str
    version: int
    balance: Decimal
    ledger_sum: Decimal
    grants_sum: Decimal
    entries_read: int
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    checkpoint: Checkpoint | None = None  # the next checkpoint, only when everything matched

    @property
    def ok(self) -> bool:
        return not self.problems

    def detail(self) -> dict[str, object]:
        return {
            "account": self.account_id,
            "version": self.version,
            "balance": format_amount(self.balance),
            "ledger_sum": format_amount(self.ledger_sum),
            "grants_remaining_sum": format_amount(self.grants_sum),
            "entries_read": self.entries_read,
            "problems": [{"code": p.code, "message": p.message} for p in self.problems],
        }


def missing_tail(checkpoint: Checkpoint, state: AccountState, entries: Sequence[LedgerEntry]) -> bool:
    """True when the entries end before ``state.version`` without any other gap: what a lagging index
    (LedgerByAccount is eventually consistent) looks like, worth one more read before calling it a mismatch."""
    expected = range(checkpoint.seq + 1, checkpoint.seq + 1 + len(entries))
    return [e.seq for e in entries] == list(expected) and checkpoint.seq + len(entries) < state.version


def reservation_problems(
    state: AccountState, records: Mapping[str, OpenReservation], now: datetime
) -> list[Problem]:
    """Reserved credits against the open reservations: ``records`` are the records of the reservations the
    account item holds (missing: no record)."""
    problems: list[Problem] = []
    for reservation in state.reservations.values():
        rid = reservation.reservation_id
        record = records.get(rid)
        if record is None or record.status != "active" or record.account_id != state.account_id:
            said = "no record" if record is None else f"a record {record.status} on {record.account_id}"
            problems.append(Problem("reservation_record", f"open reservation {rid} has {said}"))
        elif reservation.credits > record.credits:
            problems.append(
                Problem(
                    "reservation_credits",
                    f"reservation {rid} holds {format_amount(reservation.credits)}, "
                    f"more than the {format_amount(record.credits)} reserved",
                )
            )
        if any(a.amount <= 0 or a.grant_id not in state.grants for a in reservation.allocations):
            problems.append(Problem("reservation_pins", f"reservation {rid} pins a closed grant or nothing"))
    for grant_id, held in sorted(pinned(state, now).items()):
        if held > state.grants[grant_id].remaining:
            problems.append(
                Problem(
                    "reserved",
                    f"grant {grant_id} has {format_amount(state.grants[grant_id].remaining)} left, "
                    f"reservations hold {format_amount(held)}",
                )
            )
    return problems


def reconcile(
    state: AccountState,
    checkpoint: Checkpoint,
    entries: Sequence[LedgerEntry],
    now: datetime,
    reservations: Mapping[str, OpenReservation] | None = None,
    *,
    read_at: datetime | None = None,
) -> Reconciliation:
    """Check ``state`` against ``checkpoint`` plus ``entries`` (the entries with seq > checkpoint.seq and
    <= state.version, in seq order) and, when given, its open reservations against their records.

    ``now`` is the check's time (the next checkpoint's ``verified_at``). ``read_at`` (default ``now``) is when
    ``state`` was read: the reservations on it count as holding credits only if they still held then, since
    a reservation that lapsed before the read may already have been spent by a debit."""
    problems: list[Problem] = []
    running = checkpoint.total
    expected_seq = checkpoint.seq + 1
    for entry in entries:
        if entry.seq != expected_seq:
            problems.append(Problem("sequence", f"expected entry seq {expected_seq}, found {entry.seq}"))
            expected_seq = entry.seq
        running += entry.amount
        if entry.balance_after != running:
            problems.append(
                Problem(
                    "balance_after",
                    f"entry {entry.entry_key} (seq {entry.seq}) says balance_after {format_amount(entry.balance_after)}"
                    f", the ledger sums to {format_amount(running)}",
                )
            )
            running = entry.balance_after  # report each break once, not every entry after it
        expected_seq += 1
    ledger_sum = checkpoint.total + sum((e.amount for e in entries), ZERO)
    last_seq = checkpoint.seq + len(entries)
    if last_seq != state.version or (entries and entries[-1].seq != state.version):
        problems.append(
            Problem("version", f"version is {state.version}, the ledger has entries up to {last_seq}")
        )
    if ledger_sum != state.ledger_balance:
        problems.append(
            Problem(
                "ledger_sum",
                f"balance is {format_amount(state.ledger_balance)}, the ledger sums to {format_amount(ledger_sum)}",
            )
        )
    grants_sum = sum((g.remaining for g in state.grants.values()), ZERO)
    if grants_sum != state.ledger_balance:
        problems.append(
            Problem(
                "grants_sum",
                f"balance is {format_amount(state.ledger_balance)}, live grants hold {format_amount(grants_sum)}",
            )
        )
    # A live grant at 0 is allowed: the core closes at most 40 spent grants per change and leaves the rest
    # live at 0 (read as depleted) for the account's next changes. Below 0 is never allowed.
    negative = sorted(g.grant_id for g in state.grants.values() if g.remaining < 0)
    if negative:
        problems.append(Problem("grant_remaining", f"live grants below zero: {', '.join(negative)}"))
    if state.reservations:
        problems.extend(reservation_problems(state, reservations or {}, read_at or now))
    result = Reconciliation(
        account_id=state.account_id,
        version=state.version,
        balance=state.ledger_balance,
        ledger_sum=ledger_sum,
        grants_sum=grants_sum,
        entries_read=len(entries),
        problems=tuple(problems),
    )
    if problems:
        return result
    next_checkpoint = Checkpoint(state.account_id, seq=state.version, total=ledger_sum, verified_at=now)
    return replace(result, checkpoint=next_checkpoint)
