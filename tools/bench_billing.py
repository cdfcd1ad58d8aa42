"""Bench section ``billing``: what overage and automatic top-ups cost in DynamoDB request units and time.

- a usage debit that is covered, and one that goes into overage (the overage policy is read only then);
- the billing sync worker per overage debit record (meter report claimed and settled, settings read, one
  meter event), per redelivery of it (nothing sent), and per crossing that requests a top-up (attempt
  claimed, customer / price / PaymentIntent calls, requested);
- exactly-once under faults: meter events Stripe accepted vs overage debits after every call of a first
  delivery failed with "committed, no answer" and the stream delivered every record again.

Stripe is the local emulator in process (credits_dev/local/stripe_emulator.py), so times are DynamoDB Local
plus our code, without network.

    python -m tools.bench_billing [ENDPOINT]
"""

from __future__ import annotations

import contextlib
import os
import uuid
from decimal import Decimal
from typing import Any

from tools.bench import ValueRow, counted_client, credits_table, median_units, section_main

SECTION = "billing"
RUNS = int(os.environ.get("BENCH_BILLING_RUNS", "10"))
PRICING = '[meters.api_call]\ncredits_per_unit = "1"\n\n[packs.starter]\ncredits = "1000"\nstripe_prices = ["price_EUR_starter"]\n'


def _row(name: str, reads: float, writes: float, ms: float, note: str = "") -> list[ValueRow]:
    return [
        ValueRow(SECTION, f"{name}: read units", reads, "RRU", note),
        ValueRow(SECTION, f"{name}: write units", writes, "WRU"),
        ValueRow(SECTION, f"{name}: time", ms, "ms"),
    ]


def run(endpoint: str, runs: int = RUNS) -> list[ValueRow]:
    import tempfile

    import stripe
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    from credits_dev.lambda_context import FakeLambdaContext
    from credits_dev.local.stripe_emulator import StripeEmulator, in_process_client
    from credits_ledger.dal import items as it
    from credits_ledger.dal.account_settings import AccountSettingsRepository, SettingsDocument
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.dal.meter_reports import MeterReportRepository
    from credits_ledger.dal.topups import TopupRepository
    from credits_ledger.domain.models import Source
    from credits_ledger.domain.overage import OveragePolicy, OverageSettings
    from credits_ledger.domain.topup import AutoTopupSettings
    from credits_ledger.domain.transitions import GrantSpec
    from credits_ledger.jobs.billing_sync import BillingSync
    from credits_ledger.ledger import DebitRequest, Ledger
    from credits_ledger.pricing import load_pricing
    from credits_ledger.stripe_api import StripeApi

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(PRICING)
    os.environ["CREDITS_PRICING_FILE"] = handle.name
    load_pricing.cache_clear()
    pricing = load_pricing()
    client, counter = counted_client(endpoint)
    table = credits_table(client, "bill")
    ledger = Ledger(AccountRepository(client, table))
    settings = AccountSettingsRepository(client, table)
    emulator = StripeEmulator()
    sdk = stripe.StripeClient("rk_test_bench", max_network_retries=2, http_client=in_process_client(emulator))
    api = StripeApi(sdk, sleep=lambda _: None)

    class Quiet:
        def publish(self, events: Any) -> None:
            pass

    sync = BillingSync(
        lambda: api,
        MeterReportRepository(client, table),
        TopupRepository(client, table),
        settings,
        Quiet(),
        pricing,
        ledger,
    )

    def account(overage: bool, topup: bool, credits: str) -> str:
        name = f"cus_bench{uuid.uuid4().hex[:8]}"
        settings.put(
            name,
            SettingsDocument(
                overage=OverageSettings(OveragePolicy.ALLOW if overage else OveragePolicy.REJECT),
                auto_topup=AutoTopupSettings(True, Decimal(100), "starter") if topup else None,
            ),
            ledger._clock(),
        )
        grant_id = f"g{uuid.uuid4().hex[:10]}"
        ledger.grant(name, GrantSpec(grant_id, Decimal(credits), Source("admin")), key=f"grant:{grant_id}")
        return name

    def debit(name: str, key: str, amount: int) -> Any:
        return ledger.debit(name, DebitRequest(key=key, amount=Decimal(amount), allow_overage=True)).entry

    def deliver(entries: list[Any]) -> None:
        records = []
        for entry in entries:
            item = it.to_dynamo(it.entry_to_item(entry))
            records.append({
                "eventID": f"ev-{entry.entry_key}", "eventName": "INSERT",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2030",
                "dynamodb": {"Keys": {"pk": item["pk"], "sk": item["sk"]}, "NewImage": item},
            })  # fmt: skip
        event = {"Records": records}
        processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
        # every record failing raises: the stream would retry the batch
        with contextlib.suppress(BatchProcessingError):
            process_partial_response(
                event=event,
                record_handler=sync.batch(event).handle,
                processor=processor,
                context=FakeLambdaContext(),
            )

    rows: list[ValueRow] = []
    covered = account(True, False, "1000000")
    rows += _row(
        "usage debit, covered", *median_units(counter, runs, lambda i: debit(covered, f"usage:c{i}", 1))
    )
    overdrawn = account(True, False, "1")
    rows += _row(
        "usage debit into overage",
        *median_units(counter, runs, lambda i: debit(overdrawn, f"usage:o{i}", 5)),
        note="the overage policy is read only when credits run out",
    )
    entries = [debit(overdrawn, f"usage:w{i}", 5) for i in range(runs)]
    rows += _row(
        "worker: one overage debit record",
        *median_units(counter, runs, lambda i: deliver([entries[i]])),
        note="claim + settle the meter report, settings read, one meter event",
    )
    rows += _row(
        "worker: the same record again", *median_units(counter, runs, lambda i: deliver([entries[i]]))
    )
    crossings = []
    for _ in range(runs):
        name = account(False, True, "150")
        crossings.append(debit(name, f"usage:x{uuid.uuid4().hex[:6]}", 100))
    rows += _row(
        "worker: a crossing requesting a top-up",
        *median_units(counter, runs, lambda i: deliver([crossings[i]])),
        note="attempt claimed (transaction), customer + price + PaymentIntent calls, requested",
    )
    # exactly once under faults
    faulty = [debit(overdrawn, f"usage:f{i}", 3) for i in range(50)]
    emulator.inject("/v1/billing/meter_events", None, times=3 * 10)  # first ten reports: committed, no answer
    for entry in faulty:
        deliver([entry])
    for entry in faulty:
        deliver([entry])  # the stream delivers every record again
    accepted = [m for m in emulator.meter_events if m["identifier"].startswith("usage:f")]
    sent = [
        r
        for r in emulator.received("/v1/billing/meter_events")
        if r["params"]["identifier"].startswith("usage:f")
    ]
    rows.append(
        ValueRow(
            SECTION,
            "meter events accepted / overage debits (faults)",
            len(accepted) / len(faulty),
            "ratio",
            f"{len(accepted)} accepted of {len(sent)} calls for {len(faulty)} debits; 10 answers lost",
        )
    )
    return rows


if __name__ == "__main__":
    section_main(run)
