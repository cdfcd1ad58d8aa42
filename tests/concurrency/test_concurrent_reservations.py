"""Concurrent reservations against a real DynamoDB engine (DynamoDB Local, never moto).

1. 32 threads reserve 10 credits each, at the same instant, on an account holding 100: exactly 10 succeed,
   the 22 others get InsufficientCredits and hold nothing.
2. Captures racing debits and the sweep: reservations are captured twice at once (same id from two threads,
   different amounts, some with overrun), released, or left to lapse while the sweep runs, while other
   threads debit the account until it is empty. Each reservation ends exactly once, debits never spend what
   an open reservation holds, and the ledger, the account item and the reservation records agree.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.config import Config

from credits_dev.local.dynamodb_local import DUMMY_CREDENTIALS, REGION
from credits_ledger.aws import CLIENT_CONFIG
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.reservations import ReservationRepository
from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import EntryType, Source
from credits_ledger.domain.reservations import ReservationError, ReservationStatus
from credits_ledger.domain.transitions import GrantSpec
from credits_ledger.ledger import DebitRequest, Ledger
from credits_ledger.reservations import Reservations, ReserveRequest
from tests.concurrency.ledger_audit import ManualClock, ledger_entries

pytestmark = [pytest.mark.dynamodb_local, pytest.mark.slow]

D = Decimal
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACCOUNT = "cus_reservations"


def patient_client(endpoint: str) -> Any:
    """A client like production's but with a long read timeout: 32 transactions at once on a shared 2-core
    machine can keep DynamoDB Local busy for more than production's 5 s, and a timed-out call would leave the
    outcome of that reservation unknown to the test (the assertions are about correctness, not latency)."""
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=REGION,
        config=CLIENT_CONFIG.merge(Config(read_timeout=120, connect_timeout=30)),
        **DUMMY_CREDENTIALS,
    )


def service_on(endpoint: str, table: str, clock: ManualClock) -> Reservations:
    client = patient_client(endpoint)
    return Reservations(
        AccountRepository(client, table), ReservationRepository(client, table), clock=clock, max_attempts=400
    )


def ledger_on(endpoint: str, table: str, clock: ManualClock) -> Ledger:
    return Ledger(AccountRepository(patient_client(endpoint), table), clock=clock, max_attempts=400)


def run_threads(targets: list[Any]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(target: Any) -> None:
        try:
            target()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return errors


def audit(endpoint: str, table: str) -> None:
    """The books of the account: entries 1..N, running balance, account item == ledger == live grants, pins
    on live grants never above their remaining, every reservation ended at most once and its record agreeing."""
    client = patient_client(endpoint)
    entries = sorted(ledger_entries(client, table, ACCOUNT), key=lambda e: e.seq)
    state = AccountRepository(client, table).state(ACCOUNT, consistent=True)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1)) == list(range(1, state.version + 1))
    running = D(0)
    for entry in entries:
        running += entry.amount
        assert entry.balance_after == running >= 0
    assert state.ledger_balance == running == sum((g.remaining for g in state.grants.values()), D(0))
    for reservation in state.reservations.values():
        for allocation in reservation.allocations:
            assert allocation.amount <= state.grants[allocation.grant_id].remaining
    keys = Counter(e.entry_key for e in entries)
    assert max(keys.values()) == 1
    records = ReservationRepository(client, table)
    for key in keys:
        if key.startswith("reserve:") and ":extend:" not in key:
            rid = key.removeprefix("reserve:")
            record = records.get(rid)
            ended = f"unreserve:{rid}" in keys
            assert ended == (record.status is not ReservationStatus.ACTIVE) == (rid not in state.reservations)
            captured = next((e for e in entries if e.entry_key == f"capture:{rid}"), None)
            if captured is not None:
                assert record.status is ReservationStatus.CAPTURED
                assert -captured.amount == record.captured


def test_32_concurrent_reserves_of_10_on_100_credits_exactly_10_succeed(local_tables: Any) -> None:
    endpoint, table = local_tables.endpoint_url, local_tables["CreditsTable"]
    clock = ManualClock(T0)
    ledger_on(endpoint, table, clock).grant(
        ACCOUNT, GrantSpec("g_100", D(100), Source("admin")), key="grant:g_100"
    )
    start = threading.Barrier(32, timeout=60)
    results: list[str] = []
    lock = threading.Lock()

    def reserver(index: int) -> Any:
        def run() -> None:
            service = service_on(endpoint, table, clock)
            start.wait()
            try:
                service.reserve(ReserveRequest(f"job-{index}", ACCOUNT, D(10), 3600))
                outcome = "reserved"
            except InsufficientCredits:
                outcome = "insufficient"
            with lock:
                results.append(outcome)

        return run

    assert run_threads([reserver(i) for i in range(32)]) == []
    assert Counter(results) == {"reserved": 10, "insufficient": 22}
    state = AccountRepository(patient_client(endpoint), table).state(ACCOUNT, consistent=True)
    assert len(state.reservations) == 10
    assert sum((r.credits for r in state.reservations.values()), D(0)) == D(100)
    balance = ledger_on(endpoint, table, clock).balance(ACCOUNT)
    assert (balance.available, balance.reserved, balance.ledger_balance) == (D(0), D(100), D(100))
    audit(endpoint, table)


def test_captures_race_debits_and_the_sweep(local_tables: Any) -> None:
    endpoint, table = local_tables.endpoint_url, local_tables["CreditsTable"]
    clock = ManualClock(T0)
    ledger = ledger_on(endpoint, table, clock)
    ledger.grant(ACCOUNT, GrantSpec("g_a", D(150), Source("admin")), key="grant:g_a")
    ledger.grant(
        ACCOUNT,
        GrantSpec("g_b", D(100), Source("admin"), priority=10, expires_at=T0 + timedelta(minutes=30)),
        key="grant:g_b",
    )
    setup = service_on(endpoint, table, clock)
    # 12 reservations of 10: 0-3 captured twice at once, 4-5 captured with overrun, 6-7 released while a
    # capture races them, 8-11 short-lived (they lapse and the sweep ends them)
    for index in range(12):
        lifetime = 600 if index >= 8 else 7200
        setup.reserve(ReserveRequest(f"r{index}", ACCOUNT, D(10), lifetime))
    clock.set(T0 + timedelta(minutes=20))  # 8-11 lapsed: their credits are available again
    start = threading.Barrier(16, timeout=60)
    outcomes: dict[str, list[str]] = {f"r{i}": [] for i in range(12)}
    lock = threading.Lock()
    debited: list[Decimal] = []

    def note(rid: str, what: str) -> None:
        with lock:
            outcomes[rid].append(what)

    def capturer(rid: str, credits: Decimal | None, overrun: bool = False) -> Any:
        def run() -> None:
            service = service_on(endpoint, table, clock)
            start.wait()
            try:
                answer = service.capture(service.record(rid), credits, overrun)
                note(rid, f"captured {answer.record.captured}")
            except (ReservationError, InsufficientCredits) as exc:
                note(rid, type(exc).__name__)

        return run

    def releaser(rid: str) -> Any:
        def run() -> None:
            service = service_on(endpoint, table, clock)
            start.wait()
            try:
                service.release(service.record(rid))
                note(rid, "released")
            except ReservationError:
                note(rid, "ReservationError")

        return run

    def debiter(index: int) -> Any:
        def run() -> None:
            own = ledger_on(endpoint, table, clock)
            start.wait()
            for n in range(60):
                try:
                    own.debit(ACCOUNT, DebitRequest(key=f"usage:{index}:{n}", amount=D(3)))
                    with lock:
                        debited.append(D(3))
                except InsufficientCredits:
                    return

        return run

    def sweeper() -> None:
        service = service_on(endpoint, table, clock)
        start.wait()
        for _ in range(3):
            for account_id, rid in service.records.iter_due(T0 + timedelta(minutes=20)):
                service.expire(account_id, rid, T0 + timedelta(minutes=20))

    targets = [capturer(f"r{i}", D(4 + i)) for i in range(4)]
    targets += [capturer(f"r{i}", D(7)) for i in range(4)]
    targets += [capturer("r4", D(25), overrun=True), capturer("r5", D(12), overrun=True)]
    targets += [releaser("r6"), capturer("r6", D(1)), releaser("r7"), capturer("r7", None)]
    targets += [debiter(0), sweeper]
    assert len(targets) == 16
    assert run_threads(targets) == []

    service = service_on(endpoint, table, clock)
    records = {rid: service.record(rid) for rid in outcomes}
    for index in range(4):  # two captures at once: one wins, the other gets its answer
        rid = f"r{index}"
        assert records[rid].status is ReservationStatus.CAPTURED
        assert outcomes[rid] == [f"captured {records[rid].captured}"] * 2
        assert records[rid].captured in (D(4 + index), D(7))
    for rid in ("r6", "r7"):  # release or capture, whichever came first; the other is refused
        assert records[rid].status in (ReservationStatus.RELEASED, ReservationStatus.CAPTURED)
        assert sorted(outcomes[rid])[0] in ("ReservationError", "captured 1", "captured 10")
        assert outcomes[rid].count("ReservationError") == 1
    for rid in ("r4", "r5"):  # overrun: captured in full, or refused with nothing changed
        assert records[rid].status in (ReservationStatus.CAPTURED, ReservationStatus.ACTIVE)
        if records[rid].status is ReservationStatus.CAPTURED:
            assert records[rid].captured == (D(25) if rid == "r4" else D(12))
    for index in range(8, 12):
        assert records[f"r{index}"].status is ReservationStatus.EXPIRED
    entries = ledger_entries(patient_client(endpoint), table, ACCOUNT)
    unreserves = Counter(e.entry_key for e in entries if e.type is EntryType.UNRESERVE)
    assert all(n == 1 for n in unreserves.values())
    # what the debits took never came out of an open reservation: the reservations still open hold in full
    state = AccountRepository(patient_client(endpoint), table).state(ACCOUNT, consistent=True)
    for rid, live in state.reservations.items():
        assert live.credits == records[rid].credits
    audit(endpoint, table)
