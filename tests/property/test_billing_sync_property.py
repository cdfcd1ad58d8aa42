"""Property: random debits (some into overage, some crossing the top-up threshold), grants, stream
deliveries with redeliveries, injected Stripe faults (500, 429, "committed but no answer"), declines, and
webhooks delivered late, twice and in between worker runs. Whatever the order:

- never two top-up attempts open at once for the account, never more started in a month than its limit,
  never more PaymentIntents created at Stripe than attempts;
- every overage debit is reported at most once, with its value, and exactly once unless Stripe left it without
  an answer past its de-duplication window (then the report is `unknown`, alarmed, never resent);
- the pack credits granted are exactly those of the PaymentIntents that succeeded, each once.

The worker runs on moto against the Stripe emulator through the real SDK (in process, no sockets).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits_dev.local.stripe_emulator import (
    DECLINING_METHOD,
    SUCCEEDING_METHOD,
    StripeEmulator,
    in_process_client,
)
from credits_ledger.dal import items as it
from credits_ledger.dal.account_settings import AccountSettingsRepository, SettingsDocument
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.meter_reports import UNKNOWN, MeterReportRepository
from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.dal.topups import OPEN, TopupRepository
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.domain.overage import OveragePolicy, OverageSettings
from credits_ledger.domain.topup import AutoTopupSettings
from credits_ledger.jobs.billing_sync import RESEND_WINDOW, BillingSync
from credits_ledger.ledger import DebitRequest, Ledger
from credits_ledger.pricing import load_pricing
from credits_ledger.stripe_api import StripeApi
from credits_ledger.topups import settle_from_event
from credits_ledger.webhooks import StripeWebhookProcessor
from tests.support.billing import METER_PATH, PI_PATH, STARTER_PRICING
from tests.support.bus import DiscardingBus
from tests.support.ledger import FakeClock, spec

D = Decimal
PRICING = STARTER_PRICING
MONTHLY_LIMIT = 2
TOPUP = AutoTopupSettings(enabled=True, threshold=D(100), pack="starter", monthly_limit=MONTHLY_LIMIT)

operation = st.one_of(
    st.tuples(st.just("debit"), st.integers(min_value=1, max_value=400)),
    st.tuples(st.just("grant"), st.integers(min_value=1, max_value=600)),
    st.tuples(st.just("stream"), st.booleans()),  # True: the batch also redelivers an already handled record
    st.tuples(
        st.just("fault"),
        st.sampled_from(
            [
                (METER_PATH, 500),
                (METER_PATH, None),
                (METER_PATH, 429),
                (PI_PATH, 500),
                (PI_PATH, None),
                (PI_PATH, 429),
            ]
        ),
    ),  # fmt: skip
    st.tuples(st.just("webhooks"), st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("card"), st.sampled_from([SUCCEEDING_METHOD, DECLINING_METHOD])),
    st.tuples(st.just("month"), st.just(0)),
)


@pytest.fixture
def world(moto_tables: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    pricing_file = tmp_path / "pricing.toml"
    pricing_file.write_text(PRICING, encoding="utf-8")
    monkeypatch.setenv("CREDITS_PRICING_FILE", str(pricing_file))
    load_pricing.cache_clear()
    yield {"client": moto_tables.client, "table": moto_tables.first, "pricing": load_pricing()}
    load_pricing.cache_clear()


class Run:
    def __init__(self, world: dict[str, Any]) -> None:
        import stripe

        client, table = world["client"], world["table"]
        self.account = f"cus_{uuid.uuid4().hex[:12]}"
        self.clock = FakeClock(datetime(2030, 3, 10, tzinfo=UTC))
        self.ledger = Ledger(AccountRepository(client, table), clock=self.clock)
        self.emulator = StripeEmulator()
        self.webhooks: list[dict[str, Any]] = []
        self.emulator.webhook = self.webhooks.append  # delivered later, by the "webhooks" operation
        sdk = stripe.StripeClient(
            "rk_test_property", max_network_retries=2, http_client=in_process_client(self.emulator)
        )
        api = StripeApi(sdk, sleep=lambda _: None)
        self.topups = TopupRepository(client, table)
        settings_repo = AccountSettingsRepository(client, table)
        self.sync = BillingSync(
            lambda: api,
            MeterReportRepository(client, table),
            self.topups,
            settings_repo,
            DiscardingBus(),
            world["pricing"],
            self.ledger,
            self.clock,
        )
        self.processor = StripeWebhookProcessor(
            self.ledger, PaymentRepository(client, table), world["pricing"], self.clock
        )
        settings_repo.put(
            self.account,
            SettingsDocument(overage=OverageSettings(OveragePolicy.ALLOW), auto_topup=TOPUP),
            self.clock(),
        )
        self.pending: list[LedgerEntry] = []
        self.handled: list[LedgerEntry] = []
        self.entries: list[LedgerEntry] = []
        self.seen_webhooks: list[dict[str, Any]] = []
        self.client, self.table = client, table

    # ---- operations ---------------------------------------------------------------------------------------
    def debit(self, amount: int) -> None:
        key = f"usage:{self.account}:{len(self.entries)}"
        entry = self.ledger.debit(
            self.account, DebitRequest(key=key, amount=D(amount), allow_overage=True)
        ).entry
        self.entries.append(entry)
        self.pending.append(entry)

    def grant(self, amount: int) -> None:
        grant_id = f"g{uuid.uuid4().hex[:10]}"
        self.ledger.grant(self.account, spec(grant_id, str(amount)), key=f"grant:{grant_id}")

    def stream(self, redeliver: bool) -> None:
        batch = list(self.pending)
        if redeliver and self.handled:
            batch.insert(0, self.handled[len(self.handled) // 2])
        if not batch:
            return
        failed = self._deliver(batch)
        done = [e for e in batch if e.entry_key not in failed]
        self.handled += [e for e in done if e in self.pending]
        self.pending = [e for e in self.pending if e.entry_key in failed]

    def deliver_webhooks(self, count: int) -> None:
        for _ in range(min(count, len(self.webhooks))):
            event = self.webhooks.pop(0)
            self._webhook(event)
            self.seen_webhooks.append(event)
        if self.seen_webhooks and count == 3:  # Stripe delivers one again
            self._webhook(self.seen_webhooks[0])

    def finish(self) -> None:
        for _ in range(20):
            if not self.pending and not self.webhooks:
                return
            self.stream(False)
            self.deliver_webhooks(len(self.webhooks))
        raise AssertionError(f"records never went through: {self.pending}")

    def _webhook(self, event: dict[str, Any]) -> None:
        self.processor.process(event)
        settle_from_event(event, self.topups, DiscardingBus(), self.clock)

    def _deliver(self, entries: list[LedgerEntry]) -> set[str]:
        """Entry keys of the records the batch reported as failed (Lambda retries from the first of them).
        A DynamoDB stream batch names its failures by sequence number, not by event id."""
        from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
        from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

        from credits_dev.lambda_context import FakeLambdaContext

        records = []
        for entry in entries:
            item = it.to_dynamo(it.entry_to_item(entry))
            records.append({
                "eventID": f"ev-{entry.entry_key}",
                "eventName": "INSERT",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2030",
                "dynamodb": {"Keys": {"pk": item["pk"], "sk": item["sk"]}, "NewImage": item,
                             "SequenceNumber": str(entry.seq)},
            })  # fmt: skip
        event = {"Records": records}
        processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
        try:
            result = process_partial_response(
                event=event, record_handler=self.sync.batch(event).handle, processor=processor,
                context=FakeLambdaContext(),
            )  # fmt: skip
        except BatchProcessingError:
            return {entry.entry_key for entry in entries}
        failed_sequence_numbers = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        return {entry.entry_key for entry in entries if str(entry.seq) in failed_sequence_numbers}

    # ---- what Stripe and the table hold -----------------------------------------------------------------
    def attempts(self) -> list[dict[str, Any]]:
        raw = self.client.scan(
            TableName=self.table,
            FilterExpression="begins_with(pk, :p)",
            ExpressionAttributeValues={":p": {"S": f"TOPUP#{self.account}|"}},
        )["Items"]
        return [it.from_dynamo(item) for item in raw]

    def check(self) -> None:
        attempts = self.attempts()
        assert sum(1 for a in attempts if a["status"] in OPEN) <= 1
        per_month: dict[str, int] = {}
        for attempt in attempts:
            month = str(attempt["created_at"])[:7]
            per_month[month] = per_month.get(month, 0) + 1
        assert all(count <= MONTHLY_LIMIT for count in per_month.values()), per_month
        created = [pi for pi in self.emulator.payment_intents.values() if pi["customer"] == self.account]
        assert len(created) <= len(attempts)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=30))
def test_exactly_once_under_any_interleaving(
    world: dict[str, Any], operations: list[tuple[str, Any]]
) -> None:
    run = Run(world)
    run.grant(150)
    for name, argument in operations:
        if name == "debit":
            run.debit(argument)
        elif name == "grant":
            run.grant(argument)
        elif name == "stream":
            run.stream(argument)
        elif name == "fault":
            path, status = argument
            run.emulator.inject(path, status, times=3)  # every SDK try of one call
        elif name == "webhooks":
            run.deliver_webhooks(argument)
        elif name == "card":
            headers = {"Authorization": "Bearer rk_test_property"}
            body = f"invoice_settings[default_payment_method]={argument}"
            run.emulator.handle("POST", f"/v1/customers/{run.account}", headers, body)
        elif name == "month":
            run.clock.advance(days=31)
        run.check()
    run.emulator.faults.clear()
    run.finish()
    run.check()
    # every overage debit reported at most once, with its value; and exactly once unless Stripe gave no answer
    # for longer than its de-duplication window allows a resend (then `unknown`, alarmed, never sent again)
    overage = {e.entry_key: e.metadata["overage"] for e in run.entries if "overage" in e.metadata}
    accepted = [m for m in run.emulator.meter_events if m["payload"]["stripe_customer_id"] == run.account]
    assert len({m["identifier"] for m in accepted}) == len(accepted)
    assert {m["identifier"]: m["payload"]["value"] for m in accepted}.items() <= overage.items()
    reports = MeterReportRepository(run.client, run.table)
    for entry_key in set(overage) - {m["identifier"] for m in accepted}:
        report = reports.get(entry_key)
        assert report is not None and report.status == UNKNOWN, (entry_key, report)
        assert run.clock() - report.first_sent_at > RESEND_WINDOW
    # the packs granted are those of the PaymentIntents that succeeded, once each
    succeeded = [
        pi for pi in run.emulator.payment_intents.values()
        if pi["customer"] == run.account and pi["status"] == "succeeded"
    ]  # fmt: skip
    granted = [
        e for e in run.ledger.transactions(run.account, 100).items
        if e.type.value == "grant" and e.entry_key.startswith("stripe:grant:")
    ]  # fmt: skip
    topup_credits = sum((e.amount for e in granted), D(0))
    assert topup_credits == 1000 * len(succeeded), (
        topup_credits,
        len(succeeded),
        json.dumps(run.attempts(), default=str),
    )
