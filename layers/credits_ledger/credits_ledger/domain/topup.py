"""Automatic top-ups: when a debit leaves ``available`` below the account's threshold, buy a pack. Pure.

A *crossing* is a debit whose available balance went from at or above the threshold to below it; only a
crossing starts a top-up, so a declined card is not charged again until the balance has come back above the
threshold and crossed it again. At most one top-up is in flight per account and at most ``monthly_limit``
are started per UTC calendar month: both are conditions of the write that claims the attempt
(dal/topups.py); this module only decides whether a debit is a crossing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from credits_ledger.domain.models import EntryType, LedgerEntry

DEFAULT_QUANTITY = 1


@dataclass(frozen=True)
class AutoTopupSettings:
    enabled: bool
    threshold: Decimal
    pack: str
    quantity: int = DEFAULT_QUANTITY
    monthly_limit: int | None = None  # top-ups started per UTC calendar month; None: no cap


def available_before_and_after(entry: LedgerEntry) -> tuple[Decimal, Decimal] | None:
    """What was available just before and after a debit entry (None when the entry does not say). A
    reservation's capture took from what was available only its overrun (the credits it held were not
    available; nothing is given back when it overruns)."""
    if entry.type is not EntryType.DEBIT or "available_after" not in entry.metadata:
        return None
    after = Decimal(entry.metadata["available_after"])
    if "reservation" in entry.metadata:
        return after + Decimal(entry.metadata.get("overrun", "0")), after
    return after - entry.amount, after  # a debit's amount is negative: before = after + taken


def leaves_below(entry: LedgerEntry, settings: AutoTopupSettings | None) -> bool:
    """True when ``entry`` is a debit that left ``available`` below the threshold (contract: such a debit
    starts a top-up, at most one in flight and ``monthly_limit`` a month; after a failure only a crossing)."""
    if settings is None or not settings.enabled:
        return False
    levels = available_before_and_after(entry)
    return levels is not None and levels[1] < settings.threshold


def still_below(available: Decimal, settings: AutoTopupSettings) -> bool:
    """True when the account's ``available`` credits now are still below the threshold: a debit that left it
    below starts a top-up only while that holds (its entry may be delivered long after, by a replayed
    batch, when a top-up or a purchase has brought the account back above)."""
    return available < settings.threshold


def is_crossing(entry: LedgerEntry, settings: AutoTopupSettings | None) -> bool:
    """True when ``entry`` is a debit that left ``available`` below the threshold from at or above it."""
    if settings is None or not settings.enabled:
        return False
    levels = available_before_and_after(entry)
    if levels is None:
        return False
    before, after = levels
    return after < settings.threshold <= before
