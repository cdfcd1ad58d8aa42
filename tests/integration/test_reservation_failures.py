"""Every reservation write is safe to apply twice: failures injected around its committed TransactWriteItems
(the same botocore hooks as test_failure_injection.py, on a client configured like production).

(a) botocore re-sends a transaction that already committed (same ClientRequestToken): applied once.
(b) the caller gets an error after the commit (read timeout) and calls again: the second call answers what
    the first committed (reserve: a replay; capture/release: the first answer; the sweep: nothing to do),
    and the account item, the ledger and the reservation record moved once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.aws import CLIENT_CONFIG
from credits_ledger.dal.reservations import ReservationRecord, ReservationRepository
from credits_ledger.domain.errors import ConcurrencyConflict
from credits_ledger.domain.models import EntryType
from credits_ledger.domain.reservations import ReservationStatus
from credits_ledger.ledger import Ledger
from credits_ledger.reservations import Reservations, ReserveRequest
from credits_ledger.retry import answering_by
from tests.support.faults import fail_after_commit, lose_every_race, resend_after_commit
from tests.support.ledger import FakeClock, all_entries, assert_books_balance, make_ledger, spec

D = Decimal
ACCT = "cus_fi"
TWI = "TransactWriteItems"
RID = "job-fi"


@dataclass(frozen=True)
class Op:
    name: str
    run: Callable[[Reservations, FakeClock], ReservationRecord | None]
    entries: tuple[tuple[str, EntryType, Decimal], ...]  # (key, type, amount) the op writes
    status: ReservationStatus
    setup: Callable[[Reservations, FakeClock], None] = field(default=lambda s, c: None)


def _reserve(service: Reservations, clock: FakeClock) -> ReservationRecord:
    return service.reserve(ReserveRequest(RID, ACCT, D(60), 3600)).record


def _reserve_then_lapse(service: Reservations, clock: FakeClock) -> None:
    _reserve(service, clock)
    clock.advance(hours=2)


UNRESERVE_ENTRY = (f"unreserve:{RID}", EntryType.UNRESERVE, D(0))  # every op but reserve ends with it


def _capture(name: str, amount: int, overrun: bool) -> Op:
    return Op(
        name,
        lambda s, c: s.capture(s.record(RID), D(amount), overrun).record,
        ((f"capture:{RID}", EntryType.DEBIT, D(-amount)), UNRESERVE_ENTRY),
        ReservationStatus.CAPTURED,
        setup=_reserve,
    )


OPS = [
    Op("reserve", _reserve, ((f"reserve:{RID}", EntryType.RESERVE, D(0)),), ReservationStatus.ACTIVE),
    _capture("capture", 25, overrun=False),
    _capture("capture-overrun", 90, overrun=True),
    Op(
        "release",
        lambda s, c: s.release(s.record(RID)).record,
        (UNRESERVE_ENTRY,),
        ReservationStatus.RELEASED,
        setup=_reserve,
    ),
    Op(
        "sweep",
        lambda s, c: s.expire(ACCT, RID, c.now),
        (UNRESERVE_ENTRY,),
        ReservationStatus.EXPIRED,
        setup=_reserve_then_lapse,
    ),
]


@pytest.fixture
def client(moto_tables: Any) -> Any:
    return boto3.client("dynamodb", region_name="us-east-1", config=CLIENT_CONFIG)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(moto_tables: Any, client: Any, clock: FakeClock) -> Ledger:
    ledger = make_ledger(client, moto_tables["CreditsTable"], clock)
    ledger.grant(ACCT, spec("gr_1", "100"), key="g:1")
    return ledger


@pytest.fixture
def service(ledger: Ledger, client: Any, moto_tables: Any, clock: FakeClock) -> Reservations:
    return Reservations(
        ledger.repository, ReservationRepository(client, moto_tables["CreditsTable"]), clock=clock
    )


def _prepare(ledger: Ledger, service: Reservations, clock: FakeClock, op: Op) -> tuple[Decimal, int]:
    """Runs ``op``'s setup; returns the ledger balance and the number of entries it left, for _assert_once."""
    op.setup(service, clock)
    return ledger.repository.state(ACCT, consistent=True).ledger_balance, len(all_entries(ledger, ACCT))


def _assert_once(ledger: Ledger, service: Reservations, op: Op, before: tuple[Decimal, int]) -> None:
    entries = all_entries(ledger, ACCT)
    written = [(e.entry_key, e.type, e.amount) for e in reversed(entries[: len(entries) - before[1]])]
    assert written == list(op.entries)
    assert service.record(RID).status is op.status
    expected = before[0] + sum((amount for _, _, amount in op.entries), D(0))
    assert assert_books_balance(ledger, ACCT) == expected


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_resend_of_a_committed_reservation_write_applies_once(
    ledger: Ledger, service: Reservations, client: Any, clock: FakeClock, op: Op
) -> None:
    before = _prepare(ledger, service, clock, op)
    forced = resend_after_commit(client, TWI)
    op.run(service, clock)
    assert forced == [1]
    _assert_once(ledger, service, op, before)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_failure_after_commit_then_caller_retry_applies_once(
    ledger: Ledger, service: Reservations, client: Any, clock: FakeClock, op: Op
) -> None:
    before = _prepare(ledger, service, clock, op)
    fail_after_commit(client, TWI)
    with pytest.raises(ReadTimeoutError):
        op.run(service, clock)
    again = op.run(service, clock)
    stored = service.record(RID)
    if op.name == "sweep":
        assert again is None  # ended by the first call: nothing left to do
    elif op.name == "reserve":  # the replay rebuilds the first answer from the reserve entry
        assert again is not None
        assert (again.credits, again.expires_at, again.allocations) == (
            stored.credits,
            stored.expires_at,
            stored.allocations,
        )
    else:
        assert again == stored
    _assert_once(ledger, service, op, before)


def test_extend_retried_by_the_caller_moves_the_end_to_the_same_instant(
    ledger: Ledger, service: Reservations, client: Any, clock: FakeClock
) -> None:
    _reserve(service, clock)
    fail_after_commit(client, TWI)
    with pytest.raises(ReadTimeoutError):
        service.extend(service.record(RID), 7200)
    view = service.extend(service.record(RID), 7200)
    # an extension is "end at now + expires_in": applying it twice ends at the same instant, moves no credit
    assert view.expires_at == clock.now + timedelta(seconds=7200)
    assert service.record(RID).expires_at == view.expires_at
    assert ledger.balance(ACCT).reserved == D(60)
    assert assert_books_balance(ledger, ACCT) == D(100)


def test_a_reservation_that_keeps_losing_races_gives_up_before_the_invocation_ends(
    ledger: Ledger, service: Reservations, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = lose_every_race(monkeypatch, service.accounts)
    seconds = {"now": 0.0}

    def sleep(pause: float) -> None:  # time passes only in the pauses (and a second per commit below)
        seconds["now"] += pause + 1

    monkeypatch.setattr(service, "_sleep", sleep)
    with (
        answering_by(FakeLambdaContext(remaining_ms=10_000), monotonic=lambda: seconds["now"]),
        pytest.raises(ConcurrencyConflict, match="no time left"),
    ):
        _reserve(service, FakeClock())
    # 9 s to spend (10 s less the answer's margin), a second and a pause of at most 0.2 s per lost race, and
    # no pause starts unless half a second for one more attempt is left after it: about ten commits, not 60
    assert 8 <= len(commits) <= 10
    assert ledger.balance(ACCT).reserved == D(0)
