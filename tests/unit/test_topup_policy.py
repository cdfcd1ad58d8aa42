"""Automatic top-up decisions (pure): which debit is a crossing of the threshold."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from credits_ledger.domain.models import EntryType, LedgerEntry
from credits_ledger.domain.topup import (
    AutoTopupSettings,
    available_before_and_after,
    is_crossing,
    leaves_below,
    still_below,
)

D = Decimal
ON = AutoTopupSettings(enabled=True, threshold=D(100), pack="starter")


def debit(taken: str, available_after: str | None, entry_type: EntryType = EntryType.DEBIT) -> LedgerEntry:
    metadata = {"available_after": available_after} if available_after is not None else {}
    return LedgerEntry(
        entry_key="usage:u1",
        account_id="cus_A",
        seq=2,
        type=entry_type,
        amount=-D(taken),
        balance_after=D(0),
        allocations=(),
        reference="u1",
        created_at=datetime(2030, 1, 1, tzinfo=UTC),
        metadata=metadata,
    )


@pytest.mark.parametrize(
    ("taken", "after", "crossing"),
    [
        ("50", "60", True),  # 110 -> 60
        ("10", "100", False),  # 110 -> 100: not below
        ("1", "99", True),  # exactly at the threshold before: a crossing
        ("5", "90", False),  # 95 -> 90: already below
        ("0", "0", False),  # an overage debit on an empty account: nothing crossed
        ("150", "0", True),  # 150 -> 0
    ],
)
def test_crossings(taken: str, after: str, crossing: bool) -> None:
    assert is_crossing(debit(taken, after), ON) is crossing


def test_disabled_absent_or_not_a_usage_debit() -> None:
    assert not is_crossing(debit("50", "60"), None)
    assert not is_crossing(debit("50", "60"), AutoTopupSettings(False, D(100), "starter"))
    assert not is_crossing(debit("50", "60", EntryType.ADJUSTMENT), ON)
    assert not is_crossing(debit("50", None), ON)  # a debit that does not say what is left


def test_levels() -> None:
    assert available_before_and_after(debit("50", "60")) == (D(110), D(60))


def capture(taken: str, overrun: str | None, available_after: str) -> LedgerEntry:
    """A reservation's capture debit: ``taken`` credits, of which ``overrun`` beyond what it held."""
    entry = debit(taken, available_after)
    metadata = {**entry.metadata, "reservation": "job"} | (
        {"overrun": overrun} if overrun is not None else {}
    )
    return LedgerEntry(
        **{**entry.__dict__, "entry_key": "capture:job", "reference": "job", "metadata": metadata}
    )


@pytest.mark.parametrize(
    ("taken", "overrun", "after", "before", "crossing"),
    [
        ("95", "85", "30", "115", True),  # held 10, took 85 more: available 115 -> 30
        ("95", "85", "120", "205", False),  # 205 -> 120: not below
        ("10", "0", "60", "60", False),  # took what it held: available unchanged, nothing crossed
        ("10", None, "60", "60", False),  # a capture entry that names no overrun took none
    ],
)
def test_a_capture_took_from_what_was_available_only_its_overrun(
    taken: str, overrun: str | None, after: str, before: str, crossing: bool
) -> None:
    entry = capture(taken, overrun, after)
    assert available_before_and_after(entry) == (D(before), D(after))
    assert is_crossing(entry, ON) is crossing
    assert leaves_below(entry, ON) is (D(after) < ON.threshold)


@pytest.mark.parametrize(
    ("taken", "after", "below"),
    [("50", "60", True), ("10", "99", True), ("1", "100", False), ("50", "500", False), ("0", "40", True)],
)
def test_leaves_below_is_any_debit_ending_under_the_threshold(taken: str, after: str, below: bool) -> None:
    assert leaves_below(debit(taken, after), ON) is below
    assert not leaves_below(debit(taken, after), None)
    assert not leaves_below(debit(taken, after, EntryType.ADJUSTMENT), ON)


def test_a_top_up_starts_only_while_the_account_is_still_below_the_threshold() -> None:
    assert still_below(D(99), ON) and still_below(D(0), ON)
    assert not still_below(D(100), ON) and not still_below(D(2060), ON)
