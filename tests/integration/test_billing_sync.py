"""The billing sync worker (overage meter events, automatic top-ups) on moto tables against the local Stripe
emulator over HTTP with the real SDK: every call's parameters and idempotency key, exactly one meter event
per overage debit under injected faults (500, 429, timeout after Stripe committed, crash after Stripe
answered, stream redelivery), one top-up per crossing, declines, the in-flight and monthly limits."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from credits_dev import stripe_events as se
from credits_dev.lambda_context import FakeLambdaContext
from credits_dev.local.patterns import matches
from credits_dev.local.stripe_emulator import DECLINING_METHOD, PREFIX, StripeEmulator, serve
from credits_dev.local.template import load_template
from credits_ledger.dal import items as it
from credits_ledger.dal.account_settings import AccountSettingsRepository, SettingsDocument
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.meter_reports import REJECTED, REPORTED, UNKNOWN, MeterReportRepository
from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.dal.topups import (
    CLAIMED,
    FAILED,
    REQUESTED,
    SUCCEEDED,
    TopupAttempt,
    TopupCharge,
    TopupNotStarted,
    TopupRepository,
    attempt_id_of,
)
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.domain.overage import OveragePolicy, OverageSettings
from credits_ledger.domain.topup import AutoTopupSettings
from credits_ledger.jobs.billing_sync import BillingSync
from credits_ledger.ledger import DebitRequest, Ledger
from credits_ledger.pricing import load_pricing
from credits_ledger.stripe_api import StripeApi, new_stripe_client
from credits_ledger.topups import settle_from_event
from credits_ledger.webhooks import StripeWebhookProcessor
from tests.support.billing import METER_PATH, PI_PATH, STARTER_PRICING
from tests.support.bus import RecordingBus
from tests.support.expiry import load_handler
from tests.support.leading_keys import record_keys
from tests.support.ledger import FakeClock, spec

D = Decimal
T0 = datetime(2030, 1, 15, tzinfo=UTC)
PRICING = (
    STARTER_PRICING
    + """
[stripe]
overage_meter = "credits_overage"
"""
)


@dataclass
class Env:
    ledger: Ledger
    clock: FakeClock
    emulator: StripeEmulator
    sync: BillingSync
    bus: RecordingBus
    settings: AccountSettingsRepository
    reports: MeterReportRepository
    topups: TopupRepository
    webhooks: StripeWebhookProcessor
    client: Any
    table: str
    delivered: list[dict[str, Any]] = field(default_factory=list)
    # moto is not thread-safe, and the emulator sends its webhooks from a thread of their own after it
    # answered (as Stripe does): the worker's batch and each webhook take turns on the tables
    tables_in_use: threading.RLock = field(default_factory=threading.RLock)

    def configure(self, account: str, overage: bool = False, topup: AutoTopupSettings | None = None) -> None:
        policy = OverageSettings(OveragePolicy.ALLOW) if overage else OverageSettings()
        self.settings.put(account, SettingsDocument(overage=policy, auto_topup=topup), self.clock())

    def grant(self, account: str, amount: str, grant_id: str) -> None:
        self.ledger.grant(account, spec(grant_id, amount), key=f"grant:{grant_id}")

    def debit(self, account: str, usage_id: str, amount: str) -> LedgerEntry:
        request = DebitRequest(
            key=f"usage:{usage_id}", amount=D(amount), allow_overage=True, reference=usage_id
        )
        return self.ledger.debit(account, request).entry

    def record(self, entry: LedgerEntry) -> dict[str, Any]:
        """The stream record DynamoDB writes for a new ledger entry (INSERT, NEW image)."""
        item = it.to_dynamo(it.entry_to_item(entry))
        return {
            "eventID": f"ev-{entry.entry_key}",
            "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2030",
            "eventName": "INSERT",
            "eventSource": "aws:dynamodb",
            "dynamodb": {
                "Keys": {"pk": item["pk"], "sk": item["sk"]},
                "NewImage": item,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
                "SequenceNumber": str(entry.seq),
            },
        }

    def deliver(self, *entries: LedgerEntry) -> list[str]:
        """One batch through the worker; returns the failed record ids (retried by Lambda)."""
        from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
        from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

        event = {"Records": [self.record(e) for e in entries]}
        batch = self.sync.batch(event)
        processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
        try:
            with self.tables_in_use:
                result = process_partial_response(
                    event=event, record_handler=batch.handle, processor=processor, context=FakeLambdaContext()
                )
        except BatchProcessingError:  # every record failed: Lambda retries the whole batch
            self.emulator.drain()
            return [f"ev-{e.entry_key}" for e in entries]
        self.emulator.drain()
        assert self.emulator.webhook_failures == []
        return [f["itemIdentifier"] for f in result["batchItemFailures"]]

    def webhook(self, event: dict[str, Any]) -> None:
        """What the stack's webhook route does with an event the emulator sends."""
        with self.tables_in_use:
            self.delivered.append(event)
            self.webhooks.process(event)
            settle_from_event(event, self.topups, self.bus, self.clock)

    def available(self, account: str) -> Decimal:
        return self.ledger.balance(account).available

    def calls(self, path: str) -> list[dict[str, Any]]:
        return self.emulator.received(path)


@pytest.fixture
def env(moto_tables: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    pricing_file = tmp_path / "pricing.toml"
    pricing_file.write_text(PRICING, encoding="utf-8")
    monkeypatch.setenv("CREDITS_PRICING_FILE", str(pricing_file))
    load_pricing.cache_clear()
    pricing = load_pricing()
    # the SDK's own backoff between retries, shortened
    monkeypatch.setattr("stripe._http_client.HTTPClient._sleep_time_seconds", lambda self, n, r=None: 0.01)
    monkeypatch.setattr("credits_ledger.stripe_api.TIMEOUT_SECONDS", (2.0, 5.0))
    clock = FakeClock(T0)
    client, table = moto_tables.client, moto_tables.first
    ledger = Ledger(AccountRepository(client, table), clock=clock)
    emulator = StripeEmulator()
    server = serve(emulator)
    base = f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    api = StripeApi(new_stripe_client("rk_test_emulated", base), sleep=lambda _: None)
    bus = RecordingBus()
    settings = AccountSettingsRepository(client, table)
    reports, topups = MeterReportRepository(client, table), TopupRepository(client, table)
    sync = BillingSync(lambda: api, reports, topups, settings, bus, pricing, ledger, clock)
    webhooks = StripeWebhookProcessor(ledger, PaymentRepository(client, table), pricing, clock)
    environment = Env(ledger, clock, emulator, sync, bus, settings, reports, topups, webhooks, client, table)
    emulator.webhook = environment.webhook
    yield environment
    server.shutdown()
    server.server_close()
    load_pricing.cache_clear()


def overdrawn(env: Env, usage_id: str = "u1", account: str = "cus_A") -> LedgerEntry:
    """A debit of 15 on 10 available: 5 credits of overage."""
    env.configure(account, overage=True)
    env.grant(account, "10", f"g-{usage_id}")
    entry = env.debit(account, usage_id, "15")
    assert entry.metadata["overage"] == "5"
    return entry


# ---- the event source ------------------------------------------------------------------------------------------
def test_the_template_filter_lets_only_new_debits_through(env: Env) -> None:
    template = load_template(Path(__file__).resolve().parents[2] / "template.yaml")
    source = template["Resources"]["BillingSyncFunction"]["Properties"]["Events"]["NewDebits"]["Properties"]
    [pattern] = [json.loads(f["Pattern"]) for f in source["FilterCriteria"]["Filters"]]
    debit = env.record(overdrawn(env))
    grant_entry = env.ledger.grant("cus_B", spec("gB", "5"), key="grant:gB").entry
    assert matches(pattern, debit)
    assert not matches(pattern, env.record(grant_entry))
    assert not matches(pattern, {**debit, "eventName": "MODIFY"})


# ---- overage: one meter event per overage debit -----------------------------------------------------------------
def test_an_overage_debit_becomes_one_meter_event(env: Env) -> None:
    entry = overdrawn(env)
    assert env.deliver(entry) == []
    [call] = env.calls(METER_PATH)
    assert call["idempotency_key"] == "meter:usage:u1:0"
    assert call["params"] == {
        "event_name": "credits_overage",
        "payload": {"stripe_customer_id": "cus_A", "value": "5"},
        "identifier": "usage:u1",
        "timestamp": str(int(entry.created_at.timestamp())),
    }
    assert env.reports.get("usage:u1").status == REPORTED  # type: ignore[union-attr]
    # the stream delivers the record again: nothing is sent
    assert env.deliver(entry) == []
    assert len(env.calls(METER_PATH)) == 1 and len(env.emulator.meter_events) == 1


def test_covered_debits_send_nothing(env: Env) -> None:
    env.configure("cus_A", overage=True)
    env.grant("cus_A", "10", "g1")
    assert env.deliver(env.debit("cus_A", "u1", "4")) == []
    assert env.emulator.received() == []


def test_stripe_500_is_retried_and_still_one_event(env: Env) -> None:
    entry = overdrawn(env)
    env.emulator.inject(METER_PATH, 500, times=3)  # the first delivery's call and both SDK retries
    assert env.deliver(entry) == [f"ev-{entry.entry_key}"]
    assert env.reports.get(entry.entry_key).status == "sending"  # type: ignore[union-attr]
    assert env.deliver(entry) == []  # Lambda's retry of the record
    keys = [c["idempotency_key"] for c in env.calls(METER_PATH)]
    assert keys == ["meter:usage:u1:0"] * 3 + ["meter:usage:u1:1"]  # a fresh key after no answer
    assert len(env.emulator.meter_events) == 1


def test_429_is_retried_with_backoff(env: Env) -> None:
    entry = overdrawn(env)
    env.emulator.inject(METER_PATH, 429, times=2)
    assert env.deliver(entry) == []
    assert [c["status"] for c in env.calls(METER_PATH)] == [429, 429, 200]
    assert len(env.emulator.meter_events) == 1


def test_timeout_after_stripe_committed_is_one_event(env: Env) -> None:
    entry = overdrawn(env)
    # Stripe records the event, then no answer reaches us: on every SDK try of the first delivery
    env.emulator.inject(METER_PATH, None, times=3)
    assert env.deliver(entry) == [f"ev-{entry.entry_key}"]
    assert env.deliver(entry) == []
    calls = env.calls(METER_PATH)
    assert len(calls) == 4 and [c["replayed"] for c in calls] == [False, True, True, False]
    assert calls[-1]["duplicate"] is True  # the new key's call carried the same identifier: dropped
    assert len(env.emulator.meter_events) == 1


def test_crash_after_stripe_answered_is_one_event(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = overdrawn(env)
    real_settle = env.reports.settle

    def crash_once(*args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(env.reports, "settle", real_settle)
        raise ConnectionError("the function died before recording the answer")

    monkeypatch.setattr(env.reports, "settle", crash_once)
    assert env.deliver(entry) == [f"ev-{entry.entry_key}"]
    assert env.deliver(entry) == []
    calls = env.calls(METER_PATH)
    # the same key again: Stripe answers with the first answer (nothing new is recorded)
    assert [(c["idempotency_key"], c["replayed"]) for c in calls] == [
        ("meter:usage:u1:0", False),
        ("meter:usage:u1:0", True),
    ]
    assert len(env.emulator.meter_events) == 1
    assert env.reports.get(entry.entry_key).status == REPORTED  # type: ignore[union-attr]


def test_a_rejected_report_is_recorded_and_never_retried(env: Env) -> None:
    entry = overdrawn(env)
    env.emulator.inject(METER_PATH, 400)
    assert env.deliver(entry) == []  # a 4xx does not fail the record (it would fail the same way again)
    report = env.reports.get(entry.entry_key)
    assert report is not None and report.status == REJECTED and "400" in (report.reason or "")
    assert env.deliver(entry) == []
    assert len(env.calls(METER_PATH)) == 1


def test_an_account_that_is_no_stripe_customer_is_rejected_without_a_call(env: Env) -> None:
    entry = overdrawn(env, account="acct_internal")
    assert env.deliver(entry) == []
    assert env.reports.get(entry.entry_key).status == REJECTED  # type: ignore[union-attr]
    assert env.calls(METER_PATH) == []


def test_an_account_named_by_credits_customer_bills_the_stripe_customer_that_paid_for_it(env: Env) -> None:
    # Given org_42's credits bought by the Stripe customer cus_A (metadata.credits_customer), an older
    # payment by cus_OLD delivered late, overage allowed and an automatic top-up below 100
    paid = se.checkout_session_completed("cus_A", "starter", metadata={"credits_customer": "org_42"})
    late = se.checkout_session_completed(
        "cus_OLD", "starter", metadata={"credits_customer": "org_42"}, event_created=paid["created"] - 3600
    )
    env.webhook(paid)
    env.webhook(late)
    assert env.settings.get("org_42").billing_customer == "cus_A"  # the later payment's customer stays
    env.settings.put(
        "org_42",
        SettingsDocument(overage=OverageSettings(OveragePolicy.ALLOW), auto_topup=TOPUP),
        env.clock(),
    )
    # When org_42 goes 50 into overage
    entry = env.debit("org_42", "u-org", "2050")
    assert entry.metadata["overage"] == "50"
    assert env.deliver(entry) == []
    # Then the meter event and the top-up are cus_A's, and the top-up's credits are org_42's
    [meter] = env.calls(METER_PATH)
    assert meter["params"]["payload"]["stripe_customer_id"] == "cus_A"
    [intent] = env.calls(PI_PATH)
    assert intent["params"]["customer"] == "cus_A"
    assert intent["params"]["metadata"]["credits_customer"] == "org_42"
    assert env.available("org_42") == 2000
    # and an account that is a Stripe customer itself is billed as itself, whoever paid for its credits
    env.webhook(se.checkout_session_completed("cus_OTHER", "starter", metadata={"credits_customer": "cus_B"}))
    assert env.settings.get("cus_B").billing_customer == "cus_B"


def test_a_link_to_the_paying_customer_a_moment_old_is_billed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given org_42 linked to cus_A by a payment a moment ago, which an eventually consistent read still misses
    env.webhook(se.checkout_session_completed("cus_A", "starter", metadata={"credits_customer": "org_42"}))
    env.settings.put("org_42", SettingsDocument(overage=OverageSettings(OveragePolicy.ALLOW)), env.clock())
    read = env.settings.get_many

    def stale_unless_consistent(account_ids: Any, *, consistent: bool = True) -> dict[str, Any]:
        found = read(account_ids, consistent=consistent)
        return found if consistent else {a: replace(s, stripe_customer=None) for a, s in found.items()}

    monkeypatch.setattr(env.settings, "get_many", stale_unless_consistent)
    # When org_42 goes into overage
    entry = env.debit("org_42", "u-org", "1010")
    assert env.deliver(entry) == []
    # Then its overage is billed to cus_A, not rejected for good as having nobody to bill
    [meter] = env.calls(METER_PATH)
    assert meter["params"]["payload"]["stripe_customer_id"] == "cus_A"
    assert env.reports.get("usage:u-org").status == REPORTED  # type: ignore[union-attr]


def test_an_account_without_a_customer_is_read_again_only_when_it_has_something_to_bill(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given org_7, which no payment linked to a Stripe customer, with overage allowed
    env.grant("org_7", "100", "g_org_7")
    env.settings.put("org_7", SettingsDocument(overage=OverageSettings(OveragePolicy.ALLOW)), env.clock())
    strong_reads: list[str] = []
    read = env.settings.get

    def counting(account_id: str, *, consistent: bool = True) -> Any:
        if consistent:
            strong_reads.append(account_id)
        return read(account_id, consistent=consistent)

    monkeypatch.setattr(env.settings, "get", counting)
    # When a batch holds two covered debits, then one holds two overage debits
    assert env.deliver(env.debit("org_7", "c1", "10"), env.debit("org_7", "c2", "10")) == []
    assert strong_reads == []  # nothing to bill: no read again
    assert env.deliver(env.debit("org_7", "o1", "100"), env.debit("org_7", "o2", "5")) == []
    # Then the account is read again once for that batch, and both reports are rejected: nobody to bill
    assert strong_reads == ["org_7"]
    assert env.reports.get("usage:o1").status == REJECTED  # type: ignore[union-attr]
    assert env.reports.get("usage:o2").status == REJECTED  # type: ignore[union-attr]


def test_no_resend_after_the_deduplication_window(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = overdrawn(env)
    env.emulator.inject(METER_PATH, 500, times=3)
    assert env.deliver(entry) != []
    env.clock.advance(hours=23, minutes=1)
    assert env.deliver(entry) == []
    assert env.reports.get(entry.entry_key).status == UNKNOWN  # type: ignore[union-attr]
    assert len(env.calls(METER_PATH)) == 3 and env.emulator.meter_events == []


def test_a_failed_record_fails_the_rest_of_the_batch_in_order(env: Env) -> None:
    first = overdrawn(env, "u1")
    second = overdrawn(env, "u2")
    env.emulator.inject(METER_PATH, 500, times=3)
    assert env.deliver(first, second) == [f"ev-{first.entry_key}", f"ev-{second.entry_key}"]
    assert env.reports.get(second.entry_key) is None  # not touched: the retry starts at the first failure
    assert env.deliver(first, second) == []
    assert sorted(e["identifier"] for e in env.emulator.meter_events) == ["usage:u1", "usage:u2"]


# ---- automatic top-ups ------------------------------------------------------------------------------------------
TOPUP = AutoTopupSettings(enabled=True, threshold=D(100), pack="starter", quantity=2, monthly_limit=2)


def crossing(env: Env, usage_id: str = "u1", topup: AutoTopupSettings = TOPUP) -> LedgerEntry:
    env.configure("cus_A", topup=topup)
    if env.available("cus_A") < 150:
        env.grant("cus_A", "150", f"g-{usage_id}")
    return env.debit("cus_A", usage_id, str(env.available("cus_A") - 60))


def test_a_crossing_requests_one_top_up_and_its_webhook_grants_it(env: Env) -> None:
    entry = crossing(env)
    assert env.available("cus_A") == 60
    assert env.deliver(entry) == []
    attempt_id = attempt_id_of("cus_A", "usage:u1")
    key = f"topup:{attempt_id}"
    customer, price = env.calls("/v1/customers/cus_A"), env.calls("/v1/prices/price_EUR_starter")
    assert [c["idempotency_key"] for c in customer + price] == [f"{key}:customer", f"{key}:price"]
    [intent_call] = env.calls(PI_PATH)
    assert intent_call["idempotency_key"] == key
    assert intent_call["params"] == {
        "customer": "cus_A",
        "amount": "2000",  # the price's unit_amount x quantity 2
        "currency": "eur",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "metadata": {
            "credits_pack": "starter",
            "credits_customer": "cus_A",
            "credits_topup": attempt_id,
            "credits_quantity": "2",
        },
    }
    # the emulator sent payment_intent.succeeded: two packs granted, the attempt settled, events published
    assert [e["type"] for e in env.delivered] == ["payment_intent.succeeded"]
    assert env.available("cus_A") == 60 + 2000
    assert env.topups.attempt(attempt_id).status == SUCCEEDED  # type: ignore[union-attr]
    assert env.topups.state("cus_A").in_flight is None
    assert sorted(env.bus.types()) == ["credits.topup.requested", "credits.topup.succeeded"]
    # redelivery of the crossing record and of the webhook: nothing more
    assert env.deliver(entry) == []
    env.webhook(env.delivered[0])
    assert len(env.calls(PI_PATH)) == 1 and env.available("cus_A") == 2060
    assert len(env.bus.events) == 2


def test_a_debit_left_below_the_threshold_starts_the_next_top_up_once_the_last_succeeded(env: Env) -> None:
    # Given a threshold above what one pack brings back (5,000 against packs of 1,000), two a month
    high = AutoTopupSettings(enabled=True, threshold=D(5000), pack="starter", monthly_limit=2)
    env.configure("cus_A", topup=high)
    env.grant("cus_A", "5100", "g1")
    assert env.deliver(env.debit("cus_A", "u1", "3100")) == []  # 2,000: a crossing; the pack brings 3,000
    assert env.available("cus_A") == 3000
    # When a debit leaves the account below the threshold again (no crossing: it was below already)
    assert env.deliver(env.debit("cus_A", "u2", "10")) == []
    # Then it starts the next top-up (contract: a debit that leaves available below the threshold), and the
    # monthly limit still caps them
    assert env.available("cus_A") == 3990
    assert env.deliver(env.debit("cus_A", "u3", "10")) == []
    assert len(env.calls(PI_PATH)) == 2 and env.available("cus_A") == 3980
    assert env.topups.state("cus_A").count == 2


def test_a_debit_that_leaves_the_threshold_covered_starts_nothing(env: Env) -> None:
    env.configure("cus_A", topup=TOPUP)
    env.grant("cus_A", "300", "g1")
    above = env.debit("cus_A", "u1", "100")  # 200 left: above the threshold
    assert env.deliver(above) == [] and env.calls(PI_PATH) == []
    assert env.deliver(env.debit("cus_A", "u2", "150")) == []  # 50: a crossing
    assert len(env.calls(PI_PATH)) == 1


def set_card(env: Env, method: str) -> None:
    """The customer's default payment method, set as with the Stripe API (``POST /v1/customers/{id}``)."""
    headers = {"Authorization": "Bearer rk_test_emulated"}
    body = f"invoice_settings[default_payment_method]={method}"
    assert env.emulator.handle("POST", "/v1/customers/cus_A", headers, body)[0] == 200


def test_a_decline_is_recorded_published_and_waits_for_the_next_crossing(env: Env) -> None:
    set_card(env, DECLINING_METHOD)
    entry = crossing(env)
    assert env.deliver(entry) == []  # a decline does not fail the record
    attempt = env.topups.attempt(attempt_id_of("cus_A", "usage:u1"))
    assert attempt is not None and attempt.status == FAILED and "declined" in (attempt.reason or "")
    assert attempt.payment_intent is not None
    assert env.bus.types() == ["credits.topup.failed"]  # once, although the webhook came too
    assert [e["type"] for e in env.delivered] == ["payment_intent.payment_failed"]
    assert env.topups.state("cus_A").in_flight is None
    # below the threshold already: the next debits are no crossing, no new charge
    assert env.deliver(env.debit("cus_A", "u2", "10")) == []
    assert len(env.calls(PI_PATH)) == 1
    # the customer fixes the card and buys credits; the next crossing tries again
    set_card(env, "pm_card_visa")
    assert env.deliver(crossing(env, "u3")) == []
    assert [c["status"] for c in env.calls(PI_PATH)] == [402, 200]


def test_at_most_one_in_flight_and_the_monthly_limit(env: Env) -> None:
    env.emulator.webhook = None  # the PaymentIntent succeeds, its webhook is late
    limited = AutoTopupSettings(enabled=True, threshold=D(100), pack="starter", monthly_limit=1)
    first = crossing(env, "u1", limited)
    assert env.deliver(first) == []
    env.grant("cus_A", "200", "g-more")  # back above the threshold, crossing again while the first is open
    second = env.debit("cus_A", "u2", str(env.available("cus_A") - 50))
    assert env.deliver(second) == []
    assert len(env.calls(PI_PATH)) == 1  # in flight: not started
    # the first settles; a third crossing in the same month hits the monthly limit
    intent = next(iter(env.emulator.payment_intents.values()))
    env.webhook(
        {"id": "evt_late", "type": "payment_intent.succeeded", "created": 1, "data": {"object": intent}}
    )
    env.grant("cus_A", "500", "g-again")
    third = env.debit("cus_A", "u3", str(env.available("cus_A") - 50))
    assert env.deliver(third) == []
    assert len(env.calls(PI_PATH)) == 1
    # next month it may start again
    env.clock.advance(days=20)
    env.grant("cus_A", "500", "g-next-month")
    fourth = env.debit("cus_A", "u4", str(env.available("cus_A") - 50))
    assert env.deliver(fourth) == []
    assert len(env.calls(PI_PATH)) == 2
    state = env.topups.state("cus_A")
    assert (state.month, state.count) == ("2030-02", 1)


def test_stripe_unavailable_retries_the_same_payment_intent(env: Env) -> None:
    entry = crossing(env)
    env.emulator.inject(PI_PATH, None, times=3)  # created, but no answer on any SDK try
    assert env.deliver(entry) == [f"ev-{entry.entry_key}"]
    assert env.deliver(entry) == []
    calls = env.calls(PI_PATH)
    assert {c["idempotency_key"] for c in calls} == {f"topup:{attempt_id_of('cus_A', 'usage:u1')}"}
    assert len(env.emulator.payment_intents) == 1  # one charge: every retry replayed the first answer
    assert env.available("cus_A") == 60 + 2000


def test_a_crossing_delivered_after_the_account_is_back_above_the_threshold_starts_nothing(env: Env) -> None:
    # Given a crossing whose record fails to be delivered (a batch that goes to the failure queue)
    entry = crossing(env)
    # When the customer buys credits before the batch is replayed
    env.grant("cus_A", "500", "g-bought")
    assert env.deliver(entry) == []
    # Then no card is charged: the account is no longer below the threshold
    assert env.calls(PI_PATH) == [] and env.topups.state("cus_A").count == 0
    # while a crossing delivered in time still starts one
    assert env.deliver(env.debit("cus_A", "u2", str(env.available("cus_A") - 60))) == []
    assert len(env.calls(PI_PATH)) == 1


def test_a_retry_of_a_started_attempt_finishes_it_even_when_the_account_is_back_above(env: Env) -> None:
    # Given a crossing whose attempt was claimed but got no PaymentIntent (Stripe did not answer)
    entry = crossing(env)
    env.emulator.inject("/v1/customers/cus_A", None, times=3)
    assert env.deliver(entry) == [f"ev-{entry.entry_key}"]
    # When the customer buys credits before the record is delivered again
    env.grant("cus_A", "500", "g-bought")
    assert env.deliver(entry) == []
    # Then the retry finishes the attempt it started (a top-up bought once), instead of leaving it in flight
    # so that no later crossing could start another
    attempt = env.topups.attempt(attempt_id_of("cus_A", "usage:u1"))
    assert attempt is not None and attempt.status == SUCCEEDED
    assert env.topups.state("cus_A").in_flight is None
    assert len(env.calls(PI_PATH)) == 1


def test_the_billing_sync_role_allows_what_a_top_up_reads(env: Env) -> None:
    # an account whose grants reach past its item (expiring ones kept in its partition): reading what it
    # has available is a Query, which the function's role must allow
    env.configure("cus_A", topup=TOPUP)
    for n in range(15):
        grant = spec(f"g{n}", "10", priority=n, expires_at=env.clock.now + timedelta(days=30 + n))
        env.ledger.grant("cus_A", grant, key=f"grant:g{n}")
    entry = env.debit("cus_A", "u1", "100")
    with record_keys(env.client) as recorded:
        assert env.deliver(entry) == []
    recorded.check("BillingSyncRole")
    assert len(env.calls(PI_PATH)) == 1


def test_a_retry_after_the_price_and_the_card_changed_sends_the_first_charge_again(env: Env) -> None:
    # Given a crossing whose PaymentIntent Stripe created without the answer reaching the worker (and whose
    # webhook is late)
    env.emulator.webhook = None
    entry = crossing(env)
    env.emulator.inject(PI_PATH, None, times=3)
    assert env.deliver(entry) == [f"ev-{entry.entry_key}"]
    # When the pack's price and the customer's card change before the stream delivers the record again
    env.emulator.set_price("price_EUR_starter", 1500, "eur")
    set_card(env, "pm_card_mastercard")
    assert env.deliver(entry) == []
    # Then the retry sends the first request again (what Stripe's idempotency key answers with the first
    # PaymentIntent) instead of a changed one (an idempotency error that settled the paid attempt failed)
    calls = env.calls(PI_PATH)
    assert {(c["params"]["amount"], c["params"]["payment_method"]) for c in calls} == {
        ("2000", "pm_card_visa")
    }
    assert [c["status"] for c in calls][-1] == 200
    [intent] = env.emulator.payment_intents.values()
    attempt = env.topups.attempt(attempt_id_of("cus_A", "usage:u1"))
    assert attempt is not None and (attempt.status, attempt.payment_intent) == (REQUESTED, intent["id"])
    # and its webhook settles it and grants the pack twice, once
    env.webhook(
        {"id": "evt_late", "type": "payment_intent.succeeded", "created": 1, "data": {"object": intent}}
    )
    assert env.topups.attempt(attempt.attempt_id).status == SUCCEEDED  # type: ignore[union-attr]
    assert env.available("cus_A") == 60 + 2000


def test_the_function_handler_runs_the_worker(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = overdrawn(env)
    monkeypatch.setenv("STRIPE_API_KEY", "rk_test_emulated")
    base = env.sync.stripe()._client._requestor._options.base_addresses["api"]
    monkeypatch.setenv("STRIPE_API_BASE", base)
    monkeypatch.setenv("TABLE_NAME", env.table)
    monkeypatch.delenv("EVENT_BUS_NAME", raising=False)
    monkeypatch.setenv("CREDITS_EVENT_BUS", "log-only")
    handler = load_handler("billing_sync")
    handler.sync.cache_clear()
    result = handler.lambda_handler({"Records": [env.record(entry)]}, FakeLambdaContext())
    assert result == {"batchItemFailures": []}
    assert [e["identifier"] for e in env.emulator.meter_events] == ["usage:u1"]
    handler.sync.cache_clear()


def test_later_month_overage_timestamp_is_the_usage_time(env: Env) -> None:
    env.configure("cus_A", overage=True)
    request = DebitRequest(
        key="usage:u9",
        amount=D(3),
        allow_overage=True,
        metadata={"timestamp": it.iso(T0 - timedelta(hours=2))},
    )
    entry = env.ledger.debit("cus_A", request).entry
    assert env.deliver(entry) == []
    [call] = env.calls(METER_PATH)
    assert call["params"]["timestamp"] == str(int((T0 - timedelta(hours=2)).timestamp()))


def _billed_per_month(env: Env) -> dict[str, Decimal]:
    """What Stripe bills per UTC month: the values of the meter events, summed by their timestamps' months."""
    billed: dict[str, Decimal] = {}
    for event in env.emulator.meter_events:
        at = datetime.fromtimestamp(int(event["timestamp"]), UTC)
        month = f"{at.year:04d}-{at.month:02d}"
        billed[month] = billed.get(month, D(0)) + D(str(event["payload"]["value"]))
    return billed


def _overage_debit(env: Env, usage_id: str, amount: str, stamp: datetime | None = None) -> LedgerEntry:
    metadata = {"timestamp": it.iso(stamp)} if stamp else {}
    request = DebitRequest(
        key=f"usage:{usage_id}", amount=D(amount), allow_overage=True, reference=usage_id, metadata=metadata
    )
    return env.ledger.debit("cus_A", request).entry


@pytest.mark.parametrize("late", ["a late usage of last month", "a usage stamped ahead into next month"])
def test_what_stripe_bills_per_month_stays_within_the_overage_limit(env: Env, late: str) -> None:
    # Given an overage limit of 10 credits a month
    limit = D(10)
    env.settings.put(
        "cus_A", SettingsDocument(overage=OverageSettings(OveragePolicy.ALLOW, limit)), env.clock()
    )
    if late == "a late usage of last month":
        # When January's limit is used, and a usage of January 31 is sent on February 1 (counted in February)
        env.clock.set(datetime(2030, 1, 31, 23, 50, tzinfo=UTC))
        entries = [_overage_debit(env, "jan-1", "10")]
        env.clock.set(datetime(2030, 2, 1, 0, 10, tzinfo=UTC))
        entries.append(_overage_debit(env, "jan-2", "10", datetime(2030, 1, 31, 23, 55, tzinfo=UTC)))
    else:
        # When a usage stamped 4 minutes ahead is sent on January 31 (counted in January), then February's
        # limit is used
        env.clock.set(datetime(2030, 1, 31, 23, 58, tzinfo=UTC))
        entries = [_overage_debit(env, "feb-0", "10", datetime(2030, 2, 1, 0, 2, tzinfo=UTC))]
        env.clock.set(datetime(2030, 2, 1, 0, 30, tzinfo=UTC))
        entries.append(_overage_debit(env, "feb-1", "10"))
    assert env.deliver(*entries) == []
    # Then each month's meter events sum to the month's limit: the late one is billed in the month it counted in
    assert _billed_per_month(env) == {"2030-01": limit, "2030-02": limit}


def test_a_usage_sent_35_days_late_is_billed_within_the_days_stripe_accepts(env: Env) -> None:
    # Given an account in overage, and a usage of 35 days ago (the oldest the API takes) sent now
    env.configure("cus_A", overage=True)
    entry = _overage_debit(env, "old", "3", T0 - timedelta(days=35))
    # When its overage is reported
    assert env.deliver(entry) == []
    # Then its meter event is stamped at the start of this month, well within Stripe's 35 days
    [call] = env.calls(METER_PATH)
    assert call["params"]["timestamp"] == str(int(datetime(2030, 1, 1, tzinfo=UTC).timestamp()))


def test_a_crash_between_settling_and_publishing_is_repaired_once(env: Env) -> None:
    env.emulator.webhook = None  # the worker alone settles the decline
    set_card(env, DECLINING_METHOD)
    entry = crossing(env)
    published = env.bus.publish

    def down(events: Any) -> None:
        raise ConnectionError("EventBridge unreachable")

    env.bus.publish = down  # type: ignore[method-assign]
    assert env.deliver(entry) == [f"ev-{entry.entry_key}"]  # settled, event not published: the record fails
    env.bus.publish = published  # type: ignore[method-assign]
    attempt = env.topups.attempt(attempt_id_of("cus_A", entry.entry_key))
    assert attempt is not None and attempt.status == FAILED and attempt.announce == "credits.topup.failed"
    assert env.deliver(entry) == [] and env.bus.types() == []  # a fresh note: its settler may be at work
    env.clock.advance(minutes=2)
    assert env.deliver(entry) == [] and env.bus.types() == ["credits.topup.failed"]
    assert env.deliver(entry) == [] and env.bus.types() == ["credits.topup.failed"]
    assert len(env.calls(PI_PATH)) == 1


def test_a_late_debit_of_an_earlier_month_cannot_begin_that_months_count_again(env: Env) -> None:
    def top_up(key: str, month: str) -> None:  # claimed by a debit of ``month``, then succeeded
        attempt = TopupAttempt(f"cus_A|{key}", "cus_A", key, "starter", 1, CLAIMED, env.clock.now)
        claimed, started = env.topups.claim(attempt, month, 1)
        assert started
        env.topups.settle(claimed, SUCCEEDED, env.clock.now, "credits.topup.succeeded")

    # Given a monthly limit of one, November's top-up and December's
    top_up("usage:nov-1", "2030-11")
    top_up("usage:dec-1", "2030-12")
    # When a November debit is delivered late (another shard, a failed batch replayed), then another of
    # December; Then neither starts a top-up: November's count is gone, and December's limit still holds
    for key, month, why in (
        ("usage:nov-2", "2030-11", "before the last"),
        ("usage:dec-2", "2030-12", "limit"),
    ):
        with pytest.raises(TopupNotStarted, match=why):
            top_up(key, month)
    state = env.topups.state("cus_A")
    assert (state.month, state.count, state.in_flight) == ("2030-12", 1, None)


def test_an_attempts_charge_is_fixed_once_and_only_while_it_is_claimed(env: Env) -> None:
    attempt = TopupAttempt("cus_A|usage:u1", "cus_A", "usage:u1", "starter", 2, CLAIMED, env.clock.now)
    claimed, _ = env.topups.claim(attempt, "2030-01", None)
    first = TopupCharge("cus_A", 2000, "eur", "pm_card_visa")
    # the first delivery fixes it; a concurrent or later one gets the first one's back, whatever it found
    assert env.topups.fix_charge(claimed.attempt_id, first) == first
    assert env.topups.fix_charge(claimed.attempt_id, TopupCharge("cus_A", 3000, "eur", "pm_other")) == first
    assert env.topups.attempt(claimed.attempt_id).charge == first  # type: ignore[union-attr]
    # an attempt settled before any charge was fixed (a decline of another delivery) gets none
    other = TopupAttempt("cus_B|usage:u1", "cus_B", "usage:u1", "starter", 1, CLAIMED, env.clock.now)
    claimed_other, _ = env.topups.claim(other, "2030-01", None)
    env.topups.settle(claimed_other, FAILED, env.clock.now, "credits.topup.failed")
    assert env.topups.fix_charge(claimed_other.attempt_id, first) is None
