"""Bench section ``subscriptions``: what a subscription's Stripe events cost through the webhook processor.

DynamoDB read / write capacity units (``ReturnConsumedCapacity`` on every call, DynamoDB Local at
``endpoint``; note docs/bench.md: DynamoDB Local under-reports multi-item transactions) and the median wall
time over a few runs, for:

- a period grant: the cycle invoice of a monthly plan (one grant) and of a yearly plan (twelve monthly grants);
- a proration: an upgrade invoice (a negative line revoking from the month, a positive line granting);
- a cancellation: ``customer.subscription.deleted`` of a yearly subscription (nine pending months voided).

    python -m tools.bench_subscriptions                          # starts DynamoDB Local, prints the rows
    python -m tools.bench_subscriptions http://127.0.0.1:8000    # an endpoint that is already running
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tools.bench import ValueRow as Row
from tools.bench import section_main
from tools.bench_webhook import ROOT, CapacityMeter, _tables

SECTION = "subs"
RUNS = 3


def _scenarios(customer: str, run: str) -> list[tuple[str, list[dict[str, Any]], int]]:
    """(name, events, index of the measured event): the events before it prepare the state."""
    from credits_dev import stripe_events as se

    def ts(moment: datetime) -> int:
        return int(moment.timestamp())

    start, month_end, year_end = (
        datetime(2030, 1, 15, tzinfo=UTC),
        datetime(2030, 2, 15, tzinfo=UTC),
        datetime(2031, 1, 15, tzinfo=UTC),
    )
    mid, cancel_at = datetime(2030, 1, 30, 12, tzinfo=UTC), datetime(2030, 4, 1, tzinfo=UTC)

    def invoice(lines: list[dict[str, Any]], subscription: str, created: datetime) -> dict[str, Any]:
        obj = se.invoice(customer, [], created=ts(created))
        obj.update(
            lines={"object": "list", "data": lines, "has_more": False},
            amount_paid=max(0, sum(line["amount"] for line in lines)),
            parent={"type": "subscription_details", "subscription_details": {"subscription": subscription}},
        )
        return se.event("invoice.paid", obj, created=ts(created))

    def line(
        price: str, s: datetime, e: datetime, amount: int, unit: int, sub: str, **kw: Any
    ) -> dict[str, Any]:
        return se.plan_line(
            price, ts(s), ts(e), amount, unit_amount=unit, item=f"si_{sub}", subscription=sub, **kw
        )

    monthly, yearly = f"sub_m{run}", f"sub_y{run}"
    cycle = invoice([line("price_pro_month_eur", start, month_end, 4900, 4900, monthly)], monthly, start)
    year = invoice(
        [line("price_pro_year_usd", start, year_end, 49000, 49000, yearly, interval="year")], yearly, start
    )
    upgrade = invoice(
        [
            line("price_pro_month_eur", mid, month_end, -2450, 4900, monthly, proration=True),
            line("price_business_month_eur", mid, month_end, 7450, 14900, monthly, proration=True),
        ],
        monthly,
        mid,
    )
    deleted = se.event(
        "customer.subscription.deleted",
        se.subscription_object(
            customer, "price_pro_year_usd", subscription=yearly, item=f"si_{yearly}", status="canceled",
            period=(ts(start), ts(year_end)), ended_at=ts(cancel_at),
        ),
        created=ts(cancel_at),
    )  # fmt: skip
    return [
        ("period grant: monthly cycle invoice (1 grant)", [cycle], 0),
        ("period grant: yearly invoice (12 monthly grants)", [year], 0),
        ("proration: upgrade invoice (revoke + grant)", [cycle, upgrade], 1),
        ("cancellation: yearly, 9 pending months voided", [year, deleted], 1),
    ]


def capacity_rows(client: Any, table: str, runs: int = RUNS) -> list[Row]:
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.dal.payments import PaymentRepository
    from credits_ledger.ledger import Ledger
    from credits_ledger.pricing import load_pricing
    from credits_ledger.webhooks import StripeWebhookProcessor

    meter = CapacityMeter(client)
    processor = StripeWebhookProcessor(
        Ledger(AccountRepository(client, table)),
        PaymentRepository(client, table),
        load_pricing(ROOT / "config" / "pricing.toml"),
        clock=lambda: datetime(2030, 1, 31, tzinfo=UTC),
    )
    measured: dict[str, list[tuple[float, float, int, float]]] = {}
    for _ in range(runs):
        run = uuid.uuid4().hex[:8]
        for name, events, index in _scenarios(f"cus_bench{run}", run):
            for event in events[:index]:
                processor.process(event)
            meter.take()
            began = time.perf_counter()
            result = processor.process(events[index])
            elapsed = (time.perf_counter() - began) * 1000
            if result.status != "processed":
                raise RuntimeError(f"{name}: {result.status} ({result.reason})")
            reads, writes, calls, _ = meter.take()
            measured.setdefault(name, []).append((reads, writes, calls, elapsed))
    rows = []
    for name, samples in measured.items():
        reads, writes, calls, elapsed = (statistics.median(s[i] for s in samples) for i in range(4))
        rows.append(Row(SECTION, f"{name} RCU", reads, "RCU", f"{int(calls)} DynamoDB calls"))
        rows.append(Row(SECTION, f"{name} WCU", writes, "WCU", "DynamoDB Local figures"))
        rows.append(Row(SECTION, f"{name} time", elapsed, "ms", f"median of {runs}, DynamoDB Local"))
    return rows


def run(endpoint: str, *, client_for: Callable[[str], Any] | None = None) -> list[Row]:
    return capacity_rows(*_tables(endpoint, "sub", client_for))


if __name__ == "__main__":
    section_main(run)
