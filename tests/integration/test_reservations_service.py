"""The Reservations service on moto, through the real repositories and the table of template.yaml: the account
change and the reservation record commit together, each operation's idempotency, the sweep's end."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_ledger.dal.reconcile import ReconcileRepository
from credits_ledger.dal.reservations import ReservationRepository
from credits_ledger.domain.errors import IdempotencyMismatch, InsufficientCredits
from credits_ledger.domain.models import EntryType
from credits_ledger.domain.reconcile import Checkpoint
from credits_ledger.domain.reservations import ReservationError, ReservationNotFound, ReservationStatus
from credits_ledger.domain.topup import (
    AutoTopupSettings,
    available_before_and_after,
    is_crossing,
    leaves_below,
)
from credits_ledger.jobs.reconcile import ReconcileJob, ReconcileSummary
from credits_ledger.ledger import Ledger
from credits_ledger.reservations import Reservations, ReserveRequest
from tests.support.bus import RecordingBus
from tests.support.ledger import (
    FakeClock,
    SleepRecorder,
    all_entries,
    assert_books_balance,
    ledger_now,
    make_ledger,
    spec,
)

D = Decimal
ACCT = "cus_1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(moto_tables: Any, clock: FakeClock) -> Ledger:
    ledger = make_ledger(moto_tables.client, moto_tables["CreditsTable"], clock)
    ledger.grant(ACCT, spec("g1", "100", expires_at=clock.now + timedelta(days=2)), "grant:g1")
    return ledger


@pytest.fixture
def service(ledger: Ledger, moto_tables: Any, clock: FakeClock) -> Reservations:
    records = ReservationRepository(moto_tables.client, moto_tables["CreditsTable"])
    return Reservations(ledger.repository, records, clock=clock, sleep=SleepRecorder())


def request(rid: str = "job-1", credits: str = "30", expires_in: int = 3600, **kwargs: Any) -> ReserveRequest:
    return ReserveRequest(rid, kwargs.pop("account", ACCT), D(credits), expires_in, **kwargs)


def test_reserve_writes_the_entry_and_the_record_together(service: Reservations, ledger: Ledger) -> None:
    answer = service.reserve(request())
    assert not answer.replayed
    record = service.record("job-1")
    assert (record.status, record.credits, record.account_id) == (ReservationStatus.ACTIVE, D(30), ACCT)
    assert record == answer.record
    b = ledger.balance(ACCT)
    assert (b.available, b.reserved, b.ledger_balance) == (D(70), D(30), D(100))
    assert [e.type for e in all_entries(ledger, ACCT)] == [EntryType.RESERVE, EntryType.GRANT]
    assert_books_balance(ledger, ACCT)


def test_reserve_replays_and_rejects_another_body(
    service: Reservations, ledger: Ledger, clock: FakeClock
) -> None:
    first = service.reserve(request())
    clock.advance(seconds=5)
    again = service.reserve(request())
    assert again.replayed
    assert (again.record.expires_at, again.record.allocations) == (
        first.record.expires_at,
        first.record.allocations,
    )
    with pytest.raises(IdempotencyMismatch):
        service.reserve(request(credits="31"))
    with pytest.raises(IdempotencyMismatch):  # ids are unique across accounts
        service.reserve(request(account="cus_other"))
    assert ledger.balance(ACCT).reserved == D(30)


def test_not_enough_available_holds_nothing(service: Reservations, ledger: Ledger) -> None:
    with pytest.raises(InsufficientCredits):
        service.reserve(request(credits="101"))
    with pytest.raises(ReservationNotFound):
        service.record("job-1")
    assert ledger.balance(ACCT).reserved == D(0)
    assert len(all_entries(ledger, ACCT)) == 1


def test_capture_once_and_a_second_capture_returns_the_first_answer(
    service: Reservations, ledger: Ledger
) -> None:
    service.reserve(request(credits="60"))
    first = service.capture(service.record("job-1"), D("25"), False)
    assert (first.record.status, first.record.captured, first.record.released) == (
        ReservationStatus.CAPTURED,
        D(25),
        D(35),
    )
    assert first.record.available_after == D(75)
    second = service.capture(service.record("job-1"), D("50"), True)
    assert second.replayed and second.record == first.record
    # a capture decided on a stale record (read before the first capture) replays too
    stale = first.record.__class__(**{**first.record.__dict__, "status": ReservationStatus.ACTIVE})
    assert service.capture(stale, None, False).record == first.record
    with pytest.raises(ReservationError, match="captured"):
        service.release(service.record("job-1"))
    assert ledger.balance(ACCT).ledger_balance == D(75)
    assert_books_balance(ledger, ACCT)


def test_release_then_capture_is_refused(service: Reservations, ledger: Ledger) -> None:
    service.reserve(request())
    released = service.release(service.record("job-1"))
    assert (released.record.status, released.record.released) == (ReservationStatus.RELEASED, D(30))
    assert service.release(service.record("job-1")).replayed
    with pytest.raises(ReservationError, match="released"):
        service.capture(service.record("job-1"), None, False)
    assert ledger.balance(ACCT).available == D(100)


def test_extend_and_the_sweep(service: Reservations, ledger: Ledger, clock: FakeClock) -> None:
    service.reserve(request(expires_in=600))
    view = service.extend(service.record("job-1"), 7200)
    assert view.expires_at == clock.now + timedelta(seconds=7200)
    assert list(service.records.iter_due(clock.now + timedelta(seconds=601))) == []
    due_at = clock.now + timedelta(seconds=7200)
    assert list(service.records.iter_due(due_at)) == [(ACCT, "job-1")]
    clock.advance(seconds=7200)
    assert service.view(service.record("job-1")).status is ReservationStatus.EXPIRED
    ended = service.expire(ACCT, "job-1", due_at)
    assert ended is not None and ended.status is ReservationStatus.EXPIRED
    assert service.expire(ACCT, "job-1", due_at) is None  # a second sweep: nothing to do
    assert list(service.records.iter_due(due_at)) == []
    assert service.release(service.record("job-1")).record.status is ReservationStatus.EXPIRED
    assert ledger.repository.state(ACCT).reservations == {}
    assert_books_balance(ledger, ACCT)


def test_reserved_credits_of_a_grant_that_expired_stay_capturable(
    service: Reservations, ledger: Ledger, clock: FakeClock
) -> None:
    service.reserve(request(credits="60", expires_in=5 * 86400))
    clock.advance(days=3)
    outcome = ledger.expire("g1", clock.now)
    assert outcome is not None and outcome.entry.amount == D(-40)
    assert ledger.balance(ACCT).reserved == D(60)
    captured = service.capture(service.record("job-1"), D("10"), False)
    assert (captured.record.captured, captured.record.expired) == (D(10), D(50))
    assert ledger.balance(ACCT).ledger_balance == D(0)
    assert ledger.grant_view("g1").status.value == "expired"
    assert_books_balance(ledger, ACCT)


def test_reconcile_checks_reserved_credits_against_the_open_reservations(
    service: Reservations, ledger: Ledger, moto_tables: Any
) -> None:
    bus = RecordingBus()
    job = ReconcileJob(
        ledger.repository, ReconcileRepository(moto_tables.client, moto_tables["CreditsTable"]), bus
    )
    service.reserve(request("open-1", credits="30"))
    service.reserve(request("open-2", credits="20"))
    service.capture(service.record("open-2"), D("5"), False)
    summary = ReconcileSummary(now=ledger_now(ledger), run_id="run")
    assert job.check(Checkpoint(ACCT), summary).ok
    # a reservation record ended without its unreserve entry (an impossible write, made by hand) is caught
    moto_tables.client.update_item(
        TableName=moto_tables["CreditsTable"],
        Key={"pk": {"S": "RESERVATION#open-1"}, "sk": {"S": "RESERVATION"}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "released"}},
    )
    result = job.check(Checkpoint(ACCT), summary)
    assert [p.code for p in result.problems] == ["reservation_record"]
    assert bus.events


def test_an_extension_decided_on_a_stale_account_after_a_capture_is_refused(
    service: Reservations, ledger: Ledger
) -> None:
    service.reserve(request(credits="60"))
    stale_record = service.record("job-1")
    stale_state = ledger.repository.load(ACCT, [])
    service.capture(service.record("job-1"), D("10"), False)
    real_load = service.accounts.load
    calls: list[bool] = []

    def stale_once(account_id: str, keys: Any = (), **read: Any) -> Any:
        if not calls:
            calls.append(True)
            return stale_state  # read before the capture: the reservation still looks open
        return real_load(account_id, keys, **read)

    service.accounts.load = stale_once  # type: ignore[method-assign]
    # the record's "active" condition fails with the version: decided again on a fresh read, it is refused
    with pytest.raises(ReservationError, match="not an open reservation"):
        service.extend(stale_record, 7200)
    assert calls == [True]
    assert service.record("job-1").status is ReservationStatus.CAPTURED
    assert_books_balance(ledger, ACCT)


@pytest.mark.parametrize("first_to_end", ["a", "a:expire"])
def test_an_id_that_extends_another_by_a_key_suffix_is_its_own_reservation(
    service: Reservations, ledger: Ledger, clock: FakeClock, first_to_end: str
) -> None:
    # Given reservation "a" on the grant that expires first, and "a:expire" on another grant: spelled
    # unescaped, "a:expire"'s end would share its key with what "a"'s end gives back to an expired grant
    ledger.grant(ACCT, spec("g2", "100"), "grant:g2")
    service.reserve(request("a", "10", expires_in=5 * 86_400))
    clock.advance(days=3)
    ledger.expire("g1", clock.now)
    service.reserve(request("a:expire", "50"))
    # When both end, in either order: "a" released (its 10 go back to g1, expired, so they expire at once)
    # and "a:expire" captured
    for rid in [first_to_end] + [r for r in ("a", "a:expire") if r != first_to_end]:
        if rid == "a":
            assert service.release(service.record("a")).record.expired == D(10)
        else:
            service.capture(service.record("a:expire"), D(50), False)
    # Then each ended once, as itself: nothing is left reserved, and g2 paid the 50
    assert service.record("a").status is ReservationStatus.RELEASED
    assert service.record("a:expire").status is ReservationStatus.CAPTURED
    assert ledger.balance(ACCT).reserved == D(0)
    assert assert_books_balance(ledger, ACCT) == D(50)


def test_an_overrun_capture_says_what_is_left_and_may_start_a_top_up(
    service: Reservations, ledger: Ledger
) -> None:
    # Given 100 credits of which a job holds 10 (available 90), and a top-up below 50
    service.reserve(request("job", "10"))
    top_up = AutoTopupSettings(enabled=True, threshold=D(50), pack="starter")
    # When the job captures 95 (85 beyond what it held)
    service.capture(service.record("job"), D(95), True)
    # Then its debit says 5 are left, as any debit does, and counts as a crossing of the threshold (90 -> 5)
    entry = ledger.repository.entry("capture:job")
    assert entry is not None and entry.metadata["available_after"] == "5"
    assert available_before_and_after(entry) == (D(90), D(5))
    assert is_crossing(entry, top_up) and leaves_below(entry, top_up)
