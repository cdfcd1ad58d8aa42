"""LedgerStreamFunction on moto: stream records (from events/ledger_stream/ and from real ledger operations)
become credits.ledger.entry events and low-balance / depleted alerts on crossings only; a failed publish
fails the record (and the rest of the batch) for a retry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.account_settings import get_settings, put_settings
from credits_ledger.bus import EventBus
from credits_ledger.dal.account_settings import AccountSettingsRepository
from credits_ledger.dal.reconcile import ReconcileRepository, bucket_of
from credits_ledger.dal.reminders import ReminderRepository
from credits_ledger.jobs.expiry import ExpiryJob
from credits_ledger.jobs.ledger_stream import LedgerStream
from credits_ledger.jobs.scheduled import Deadline
from credits_ledger.ledger import DebitRequest
from credits_ledger.pricing import load_pricing
from credits_ledger.reservations import Reservations
from tests.support.expiry import (
    StreamEnv,
    StreamRecorder,
    load_event,
    load_handler,
    pricing_and_bus,
    template_filter,
)
from tests.support.leading_keys import record_keys
from tests.support.ledger import FakeClock, all_entries, make_ledger, spec

D = Decimal
T0 = datetime(2030, 1, 1, tzinfo=UTC)
TABLE = "CreditsTable"
LOW, DEPLETED, ENTRY = "credits.balance.low", "credits.balance.depleted", "credits.ledger.entry"
PRICING = '[meters.api_call]\ncredits_per_unit = "1"\n\n[alerts]\nlow_balance_threshold = "100"\n'


@dataclass
class Env(StreamEnv):
    client: Any

    def debit(self, account: str, key: str, amount: str) -> None:
        self.do(lambda: self.ledger.debit(account, DebitRequest(key=key, amount=D(amount))))

    def grant(self, account: str, grant_id: str, amount: str, expires_at: datetime | None = None) -> None:
        self.do(
            lambda: self.ledger.grant(
                account, spec(grant_id, amount, expires_at=expires_at), key=f"g:{grant_id}"
            )
        )

    def alerts(self, account: str | None = None) -> list[tuple[str, str]]:
        return [
            (e["detail-type"], e["detail"]["available"])
            for e in self.bus.events()
            if e["detail-type"] in (LOW, DEPLETED) and account in (None, e["detail"]["account"])
        ]


@pytest.fixture
def env(moto_tables: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    bus = pricing_and_bus(monkeypatch, tmp_path, PRICING)
    clock = FakeClock(T0)
    handler = load_handler("ledger_stream")
    recorder = StreamRecorder(moto_tables.client, TABLE, clock)
    yield Env(
        handler, make_ledger(moto_tables.client, TABLE, clock), clock, bus, recorder, moto_tables.client
    )
    load_pricing.cache_clear()


def test_the_sample_event_publishes_the_entry_and_a_low_balance_alert(env: Env) -> None:
    # Given events/ledger_stream/debit_below_threshold.json: a debit entry, and its account going 150 -> 60
    event = load_event("ledger_stream/debit_below_threshold.json")
    # When the function processes it
    result = env.handler.lambda_handler(event, FakeLambdaContext())
    # Then no record failed, the entry went out with its ids, and one low alert (threshold 100 by default)
    assert result == {"batchItemFailures": []}
    (entry,) = env.bus.events(ENTRY)
    assert entry["source"] == "credits"
    assert entry["detail"] == {
        "event_id": "c81e728d9d4c2f636f067f89cc14862c",
        "entry_key": "usage:evt_demo_3",
        "account": "cus_demo",
        "seq": 3,
        "type": "debit",
        "amount": "-90",
        "balance_after": "60",
        "allocations": [{"grant": "gr_demo", "amount": "90"}],
        "reference": "evt_demo_3",
        "created_at": "2030-01-15T12:00:00.000000Z",
        "metadata": {"meter": "api_call"},
    }
    (low,) = env.bus.events(LOW)
    assert low["detail"]["alert_id"] == "eccbc87e4b5ce2fe28308fd9f2a7baf3:credits.balance.low"
    assert (low["detail"]["available_before"], low["detail"]["available"], low["detail"]["threshold"]) == (
        "150",
        "60",
        "100",
    )


def test_every_ledger_entry_is_published_once_with_its_key(env: Env) -> None:
    # Given a grant and two debits recorded from the table's changes
    env.grant("cus_a", "g1", "500")
    env.debit("cus_a", "u1", "10")
    env.debit("cus_a", "u2", "20")
    # When the function processes the batch
    assert env.deliver() == {"batchItemFailures": []}
    # Then one credits.ledger.entry per ledger entry, in order, carrying entry key and balance after
    published = [
        (e["detail"]["entry_key"], e["detail"]["type"], e["detail"]["balance_after"])
        for e in env.bus.events(ENTRY)
    ]
    assert published == [("g:g1", "grant", "500"), ("u1", "debit", "490"), ("u2", "debit", "470")]
    assert len({e["detail"]["event_id"] for e in env.bus.events(ENTRY)}) == 3
    # And the account was registered for reconciliation by its first state insert
    page = ReconcileRepository(env.client, TABLE).registry_page(bucket_of("cus_a"))
    assert [c.account_id for c in page.checkpoints] == ["cus_a"]


def test_low_fires_once_per_downward_crossing_and_depleted_at_zero(env: Env) -> None:
    # Given 500 credits and a threshold of 100
    env.grant("cus_a", "g1", "500")
    env.deliver()
    # When debits take it to 200, 50 (crossing), 40 and 0, each delivered in its own batch
    for key, amount in [("u1", "300"), ("u2", "150"), ("u3", "10"), ("u4", "40")]:
        env.debit("cus_a", key, amount)
        env.deliver()
    # Then one low (at 50, not again at 40) and one depleted (at 0)
    assert env.alerts() == [(LOW, "50"), (DEPLETED, "0")]
    # When credits come back above the threshold and a debit crosses it again, all in one batch
    env.grant("cus_a", "g2", "500")
    env.debit("cus_a", "u5", "450")
    env.debit("cus_a", "u6", "10")
    env.deliver()
    # Then the crossing alerts again, once
    assert env.alerts() == [(LOW, "50"), (DEPLETED, "0"), (LOW, "50")]


def test_from_above_straight_to_zero_raises_low_then_depleted(env: Env) -> None:
    # Given 500 credits / When one debit spends them all
    env.grant("cus_a", "g1", "500")
    env.debit("cus_a", "u1", "500")
    env.deliver()
    # Then both alerts, low first
    assert env.alerts() == [(LOW, "0"), (DEPLETED, "0")]


def test_a_per_account_threshold_overrides_the_default(env: Env) -> None:
    # Given an account whose admin set its threshold to 1000 (through the settings route's function)
    view = put_settings(
        "cus_b",
        {"low_balance_threshold": "1000"},
        repository=AccountSettingsRepository(env.client, TABLE),
        pricing=load_pricing(),
        clock=env.clock,
    )
    assert view == {
        "customer": "cus_b",
        "low_balance_threshold": "1000",
        "effective_low_balance_threshold": "1000",
        "overage": {"policy": "reject", "limit": None},
        "auto_topup": None,
        "updated_at": "2030-01-01T00:00:00.000000Z",
    }
    env.grant("cus_b", "g1", "1500")
    env.grant("cus_c", "g2", "1500")
    env.deliver()
    # When both accounts spend 600
    env.debit("cus_b", "u1", "600")
    env.debit("cus_c", "u2", "600")
    env.deliver()
    # Then only the account with the 1000 threshold is low (the other is far above the default 100)
    assert env.alerts("cus_b") == [(LOW, "900")]
    assert env.alerts("cus_c") == []


def grant_150_expiring_and_50_lasting(env: Env) -> datetime:
    """cus_a gets 150 credits expiring at the end of January (g_exp) plus 50 that never expire (g_keep),
    delivered: available 200. Returns when the 150 expire."""
    expires = datetime(2030, 1, 31, tzinfo=UTC)
    env.grant("cus_a", "g_exp", "150", expires)
    env.grant("cus_a", "g_keep", "50")
    env.deliver()
    return expires


def test_a_drop_caused_by_time_passing_is_reported_once_by_the_next_change(env: Env) -> None:
    # Given 150 credits expiring at the end of January plus 50 that never expire (available 200)
    expires = grant_150_expiring_and_50_lasting(env)
    # When the expiry job expires the 150 after their expires_at (available was 200, now 50)
    env.clock.set(expires + timedelta(minutes=15))
    job = ExpiryJob(
        env.ledger,
        ReminderRepository(env.client, TABLE),
        EventBus(),
        load_pricing(),
        reservations=Reservations.over(env.ledger.repository),
    )
    env.do(lambda: job.run(env.clock.now, "run", Deadline(None)))
    env.deliver()
    # Then one low alert, attributed to the expiry
    assert env.alerts() == [(LOW, "50")]
    # When a debit follows / Then no second alert
    env.debit("cus_a", "u1", "10")
    env.deliver()
    assert env.alerts() == [(LOW, "50")]


def test_a_debit_after_expires_at_but_before_the_job_alerts_once_and_the_job_not_again(env: Env) -> None:
    # Given available 200 of which 150 expire at the end of January
    expires = grant_150_expiring_and_50_lasting(env)
    # When a debit comes after expires_at (available already 50) and before the nightly job
    env.clock.set(expires + timedelta(hours=3))
    env.debit("cus_a", "u1", "50")
    env.deliver()
    # Then the debit's record reports the crossing (and depletion) once
    assert env.alerts() == [(LOW, "0"), (DEPLETED, "0")]
    # When the job then expires the 150 / Then nothing is reported twice
    env.clock.set(expires + timedelta(days=1, minutes=15))
    env.do(lambda: env.ledger.expire("g_exp", as_of=env.clock.now))
    env.deliver()
    assert env.alerts() == [(LOW, "0"), (DEPLETED, "0")]


def test_a_failed_publish_fails_the_record_and_the_rest_of_the_batch_for_a_retry(env: Env) -> None:
    # Given a batch of a grant entry, its account insert, a debit entry and its account change (crossing low),
    # and a bus whose second PutEvents call (the debit entry's) reports a failed entry
    env.grant("cus_a", "g1", "150")
    env.debit("cus_a", "u1", "100")
    event = env.recorder.drain(template_filter)
    calls: list[int] = []

    class FailSecondCall:
        def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            calls.append(len(Entries))
            if len(calls) == 2:
                return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "ThrottlingException"}]}
            return {"FailedEntryCount": 0, "Entries": [{"EventId": "x"}] * len(Entries)}

    failing = LedgerStream(
        EventBus(FailSecondCall(), env.bus.name),
        AccountSettingsRepository(env.client, TABLE),
        ReconcileRepository(env.client, TABLE),
        load_pricing(),
    )
    original = env.handler.stream
    env.handler.stream = lambda: failing
    try:
        # When the function processes the batch
        result = env.handler.lambda_handler(event, FakeLambdaContext())
    finally:
        env.handler.stream = original
    # Then the debit entry's record and every later one are reported failed, the two before it not
    sequence = [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]
    kinds = [r["dynamodb"]["Keys"]["pk"]["S"] for r in event["Records"]]
    assert kinds == ["ENTRY#g:g1", "ACCOUNT#cus_a", "ENTRY#u1", "ACCOUNT#cus_a"]
    failed = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    first_failed = 2
    assert failed == sequence[first_failed:]
    assert env.alerts() == []  # the crossing record was not processed
    # When Lambda retries from the first failure with a working bus
    retry = {"Records": event["Records"][first_failed:]}
    assert env.handler.lambda_handler(retry, FakeLambdaContext()) == {"batchItemFailures": []}
    # Then the debit entry is out and the crossing raised its one low alert
    assert [e["detail"]["entry_key"] for e in env.bus.events(ENTRY)] == ["u1"]  # g:g1 went to the failing bus
    assert env.alerts() == [(LOW, "50")]


def test_records_the_function_does_not_care_about_are_ignored(env: Env) -> None:
    # Given changes to a grant item and a settings item only (no entry, no account state)
    env.grant("cus_a", "g1", "100")
    env.recorder.drain()
    env.do(lambda: env.ledger.void("g1"))
    event = env.recorder.drain()
    unrelated = {
        "Records": [r for r in event["Records"] if r["dynamodb"]["Keys"]["pk"]["S"].startswith("GRANT#")]
    }
    assert unrelated["Records"]
    # When they reach the function (e.g. without the template's filter)
    result = env.handler.lambda_handler(unrelated, FakeLambdaContext())
    # Then nothing is published and nothing fails
    assert result == {"batchItemFailures": []}
    assert env.bus.events() == []
    assert all_entries(env.ledger, "cus_a")  # the void itself was recorded by the ledger


def test_settings_writes_keep_the_latest_and_null_resets_to_the_default(env: Env) -> None:
    # Given a threshold set at 12:00
    repository = AccountSettingsRepository(env.client, TABLE)
    noon, morning = T0 + timedelta(hours=12), T0 + timedelta(hours=9)
    put_settings("cus_a", {"low_balance_threshold": "500"}, repository=repository, clock=lambda: noon)
    # When a write stamped 09:00 arrives late / Then it is dropped and the answer is the stored 12:00 one
    late = put_settings("cus_a", {"low_balance_threshold": "1"}, repository=repository, clock=lambda: morning)
    assert (late["low_balance_threshold"], late["updated_at"]) == ("500", "2030-01-01T12:00:00.000000Z")
    # When the admin resets it with null / Then the pricing default applies again
    reset = put_settings("cus_a", {"low_balance_threshold": None}, repository=repository, clock=lambda: noon)
    assert (reset["low_balance_threshold"], reset["effective_low_balance_threshold"]) == (None, "100")
    assert get_settings("cus_a", repository=repository)["effective_low_balance_threshold"] == "100"


def test_low_balance_alerts_count_available_so_a_reservation_can_cross_the_threshold(env: Env) -> None:
    from credits_ledger.reservations import ReserveRequest

    service = Reservations.over(env.ledger.repository, clock=env.clock)
    # Given 300 credits and a threshold of 100
    env.grant("cus_r", "g1", "300")
    env.deliver()
    # When a reservation holds 250 of them (the ledger balance stays 300)
    env.do(lambda: service.reserve(ReserveRequest("job-alert", "cus_r", D(250), 3600)))
    env.deliver()
    # Then available went 300 -> 50: low, as for a debit
    assert env.alerts("cus_r") == [(LOW, "50")]
    # When it is released, and a debit then takes available to 40
    env.do(lambda: service.release(service.record("job-alert")))
    env.debit("cus_r", "u1", "260")
    env.deliver()
    # Then going back above re-armed the alert and the debit crossed it again
    assert env.alerts("cus_r") == [(LOW, "50"), (LOW, "40")]


def test_the_function_touches_only_the_keys_its_role_allows(env: Env) -> None:
    # Given a grant and debits down past the low-balance threshold
    env.grant("cus_a", "g1", "150")
    env.debit("cus_a", "u1", "100")
    # When the function processes the batch, recording every partition key it reads or writes
    with record_keys(env.client) as recorder:
        assert env.deliver() == {"batchItemFailures": []}
    # Then it alerted, and every table operation it used is one LedgerStreamRole allows
    assert env.alerts("cus_a") == [(LOW, "50")]
    recorder.check("LedgerStreamRole")
