"""How the optimistic writers of one account wait after losing a race, and when they stop: one rule for the
ledger's and the reservations' commit loops.

A writer that lost a race (another writer moved the account's version) waits a random pause (full jitter,
growing to at most ``MAX_PAUSE_SECONDS``) and decides again, up to its attempt budget. It also stops, with
``ConcurrencyConflict`` (429 with ``Retry-After``, or a Stripe delivery Stripe sends again), when the next
pause and attempt would not end before the invocation's deadline: Lambda stops a function at its
``Timeout``, and an answer after that is no answer (API Gateway turns it into a 5xx, and the client cannot
tell whether its debit happened). The handler sets the deadline from its Lambda context
(``answering_by``); outside an invocation that set one (tests, tools, jobs) only the attempt budget counts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from credits_ledger.domain.errors import ConcurrencyConflict

MAX_PAUSE_SECONDS = 0.2
FIRST_PAUSE_SECONDS = 0.002
# Kept back from the invocation's end for the answer itself (serializing, logs, API Gateway's hop), and the
# time one more read-decide-write round may take under contention.
ANSWER_MARGIN_SECONDS = 1.0
ATTEMPT_SECONDS = 0.5


def pause_after_conflict(attempt: int) -> float:
    """Full jitter keeps concurrent writers of one account from retrying in lockstep."""
    return random.uniform(0, min(MAX_PAUSE_SECONDS, FIRST_PAUSE_SECONDS * 2**attempt))


@dataclass(frozen=True)
class _Deadline:
    at: float
    monotonic: Callable[[], float]


_deadline: ContextVar[_Deadline | None] = ContextVar("credits_invocation_deadline", default=None)


@contextmanager
def answering_by(
    context: Any,
    margin_seconds: float = ANSWER_MARGIN_SECONDS,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Within the block, retry loops answer ``margin_seconds`` before the Lambda ``context`` runs out of time
    (a context without a remaining time, or none, sets no deadline). The deadline ends with the block, so it
    never outlives its invocation."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    try:
        left = float(remaining()) / 1000 if callable(remaining) else None
    except Exception:  # a context that cannot say how long is left sets no deadline; it never fails a request
        left = None
    token = _deadline.set(None if left is None else _Deadline(monotonic() + left - margin_seconds, monotonic))
    try:
        yield
    finally:
        _deadline.reset(token)


def seconds_left() -> float | None:
    """Seconds until the invocation's deadline (None outside an invocation that set one)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline.at - deadline.monotonic()


def time_for(seconds: float) -> bool:
    """Whether ``seconds`` more (a pause and one more attempt) still end before the invocation's deadline."""
    deadline = _deadline.get()
    return deadline is None or deadline.monotonic() + seconds <= deadline.at


def ensure_time_for_an_attempt(account_id: str) -> None:
    """ConcurrencyConflict when even a first attempt would end after the invocation's deadline (a usage
    batch reaching its later accounts after earlier ones kept losing races)."""
    if not time_for(ATTEMPT_SECONDS):
        raise ConcurrencyConflict(f"account {account_id}: no time left for an attempt")


def wait_after_conflict(account_id: str, attempt: int, sleep: Callable[[float], None]) -> None:
    """Pause before the next attempt of ``account_id``'s write, the ``attempt``-th lost race; or, when the
    pause and one more attempt would end after the invocation's deadline, give up (ConcurrencyConflict)
    without pausing."""
    pause = pause_after_conflict(attempt)
    if not time_for(pause + ATTEMPT_SECONDS):
        raise ConcurrencyConflict(
            f"account {account_id}: {attempt + 1} conflicting writes, no time left to try again"
        )
    sleep(pause)
