"""What a debit asks for and what it got: plain values shared by the ledger, the debit queue of a busy
account (dal/debit_queue.py) and the combiner that commits it (combining.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from credits_ledger.domain.errors import CreditsError, IdempotencyMismatch
from credits_ledger.domain.models import LedgerEntry


@dataclass(frozen=True)
class Outcome:
    entry: LedgerEntry
    replayed: bool = False


@dataclass(frozen=True)
class DebitRequest:
    key: str
    amount: Decimal
    fingerprint: str = ""
    reference: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # Usage debits may go into overage when the account's settings allow it (domain/overage.py).
    allow_overage: bool = False


@dataclass(frozen=True)
class DebitResult:
    request: DebitRequest
    outcome: Outcome | None = None
    error: CreditsError | None = None


def replay(entry: LedgerEntry, fingerprint: str) -> Outcome:
    """The first answer again for a repeated idempotency key; IdempotencyMismatch when the request differs."""
    if fingerprint and entry.fingerprint and entry.fingerprint != fingerprint:
        raise IdempotencyMismatch(entry.entry_key)
    return Outcome(entry=entry, replayed=True)
