"""Stripe subscription events for tests: ``customer.subscription.*``, subscription ``invoice.paid`` with plan
lines (cycle and proration), and ``charge.refunded`` of an invoice, as plain event dicts in Stripe's shapes.

Lines carry the price both ways Stripe sends it: ``pricing.price_details.price`` (an id, current API versions)
and, unless ``embed_price=False``, an expanded ``price`` with ``unit_amount`` and ``recurring`` (older API
versions), so the proration interval is known without calling the Stripe API.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from credits_dev import stripe_events as se

Json = dict[str, Any]
_counter = itertools.count(1)


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def uid(prefix: str) -> str:
    return f"{prefix}_T{next(_counter):08d}"


def event(event_type: str, obj: Json, *, event_id: str | None = None, created: int, **extra: Any) -> Json:
    return {
        "id": event_id or uid("evt"),
        "object": "event",
        "api_version": "2026-07-29.dahlia",
        "created": created,
        "type": event_type,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": obj},
        **extra,
    }


def plan_line(
    price: str,
    start: datetime,
    end: datetime,
    amount: int,
    *,
    quantity: int = 1,
    proration: bool = False,
    item: str = "si_1",
    subscription: str = "sub_1",
    unit_amount: int | None = None,
    interval: str = "month",
    embed_price: bool = True,
    line_id: str | None = None,
) -> Json:
    """credits_dev's subscription invoice line (``amount`` in minor units, negative for a credit) over
    ``start``..``end``; ``embed_price=False`` leaves the expanded ``price`` out, as current API versions do."""
    line = se.plan_line(
        price, ts(start), ts(end), amount, unit_amount=unit_amount, quantity=quantity, proration=proration,
        item=item, subscription=subscription, line_id=line_id or uid("il"), interval=interval,
    )  # fmt: skip
    if not embed_price:
        del line["price"]
    return line


def invoice_paid(
    customer: str,
    lines: list[Json],
    *,
    created: int,
    invoice_id: str | None = None,
    payment_intent: str | None = None,
    subscription: str = "sub_1",
    amount_paid: int | None = None,
    has_more: bool = False,
    billing_reason: str = "subscription_cycle",
    event_id: str | None = None,
    **extra: Any,
) -> Json:
    invoice_id = invoice_id or uid("in")
    paid = amount_paid if amount_paid is not None else max(0, sum(line["amount"] for line in lines))
    obj: Json = {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "currency": "eur",
        "status": "paid",
        "billing_reason": billing_reason,
        "amount_paid": paid,
        "amount_due": paid,
        "subtotal": sum(line["amount"] for line in lines),
        "created": created,
        "metadata": {},
        "livemode": False,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": subscription}},
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": has_more,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "payments": {
            "object": "list",
            "data": [{"payment": {"type": "payment_intent", "payment_intent": payment_intent}}]
            if payment_intent
            else [],
        },
    }
    return event("invoice.paid", obj, event_id=event_id, created=created, **extra)


def subscription_event(
    event_type: str,
    customer: str,
    price: str,
    *,
    created: int,
    subscription: str = "sub_1",
    item: str = "si_1",
    status: str = "active",
    quantity: int = 1,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    trial_start: datetime | None = None,
    trial_end: datetime | None = None,
    canceled_at: datetime | None = None,
    ended_at: datetime | None = None,
    cancel_at_period_end: bool = False,
    event_id: str | None = None,
) -> Json:
    obj = se.subscription_object(
        customer, price, subscription=subscription, item=item, status=status, quantity=quantity,
        period=_span(period_start, period_end), trial=_span(trial_start, trial_end),
        ended_at=ts(ended_at) if ended_at else None, cancel_at_period_end=cancel_at_period_end,
    )  # fmt: skip
    obj["canceled_at"] = ts(canceled_at) if canceled_at else None
    return event(event_type, obj, event_id=event_id, created=created)


def _span(start: datetime | None, end: datetime | None) -> tuple[int, int] | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise ValueError("a period needs both its start and its end")
    return ts(start), ts(end)


def charge_refunded(payment_intent: str, amount: int, refunded: int, *, created: int) -> Json:
    obj = {
        "id": uid("ch"),
        "object": "charge",
        "amount": amount,
        "amount_refunded": refunded,
        "payment_intent": payment_intent,
        "refunded": refunded >= amount,
        "currency": "eur",
    }
    return event("charge.refunded", obj, created=created)


# ---------------------------------------------------------------------------------------------- samples
SAMPLE_CUSTOMER = "cus_SampleSubscriber01"
SAMPLE_START = datetime(2026, 11, 1, tzinfo=UTC)


def sample_events() -> dict[str, Json]:
    """A Pro subscription's life for events/stripe_webhook/: created (trialing), the first paid month, an
    upgrade to Business with its proration invoice, and the cancellation."""
    cus, start = SAMPLE_CUSTOMER, SAMPLE_START
    trial_end = start + timedelta(days=14)
    month_end = datetime(2026, 12, 14, tzinfo=UTC)
    upgrade_at = datetime(2026, 11, 29, tzinfo=UTC)
    t = ts(start)
    pro, business = "price_pro_month_eur", "price_business_month_eur"
    return {
        "customer_subscription_created": subscription_event(
            "customer.subscription.created", cus, pro, created=t, subscription="sub_SampleSub01",
            item="si_SampleItem01", status="trialing", trial_start=start, trial_end=trial_end,
            period_start=start, period_end=trial_end, event_id="evt_SampleSubCreated01",
        ),
        "invoice_paid_subscription_cycle": invoice_paid(
            cus,
            [plan_line(pro, trial_end, month_end, 4900, unit_amount=4900, item="si_SampleItem01",
                       subscription="sub_SampleSub01", line_id="il_SampleCycle01")],
            created=ts(trial_end) + 3600, invoice_id="in_SampleCycle01", subscription="sub_SampleSub01",
            event_id="evt_SampleCyclePaid01",
        ),
        "customer_subscription_updated": subscription_event(
            "customer.subscription.updated", cus, business, created=ts(upgrade_at), subscription="sub_SampleSub01",
            item="si_SampleItem01", period_start=trial_end, period_end=month_end, event_id="evt_SampleSubUpdated01",
        ),
        "invoice_paid_subscription_upgrade": invoice_paid(
            cus,
            [
                plan_line(pro, upgrade_at, month_end, -2450, proration=True, unit_amount=4900,
                          item="si_SampleItem01", subscription="sub_SampleSub01", line_id="il_SampleUnused01"),
                plan_line(business, upgrade_at, month_end, 7450, proration=True, unit_amount=14900,
                          item="si_SampleItem01", subscription="sub_SampleSub01", line_id="il_SampleRemaining01"),
            ],
            created=ts(upgrade_at) + 5, invoice_id="in_SampleUpgrade01", subscription="sub_SampleSub01",
            billing_reason="subscription_update", event_id="evt_SampleUpgradePaid01",
        ),
        "customer_subscription_deleted": subscription_event(
            "customer.subscription.deleted", cus, business, created=ts(month_end), subscription="sub_SampleSub01",
            item="si_SampleItem01", status="canceled", canceled_at=month_end, ended_at=month_end,
            period_start=trial_end, period_end=month_end, event_id="evt_SampleSubDeleted01",
        ),
    }  # fmt: skip


def write_samples() -> list[Path]:
    """Write the subscription samples beside the other Stripe samples, signed with the documented sample
    secret at the event's own time (stale: re-sign before sending, as for the others)."""
    written = []
    for name, sample in sample_events().items():
        api = se.signed_api_event(
            se.body(sample), se.SAMPLE_SECRET, timestamp=sample["created"], request_id=f"sample-{name}"
        )
        path = se.SAMPLE_DIR / f"{name}.json"
        path.write_text(json.dumps(api, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m tests.support.subscription_events
    for written_path in write_samples():
        print(written_path.name)
