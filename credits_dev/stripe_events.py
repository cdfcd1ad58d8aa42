"""Realistic, signed Stripe webhook events, built from Stripe's own example objects (``credits_dev/fixtures``,
MIT, see the README there) with their placeholders (``obj_123``, ``"currency": "currency"``, timestamps
1234567890, ``"type": "type"``...) replaced by realistic values: Stripe-looking ids, the real status values,
current timestamps, consistent amounts. The one builder of the repository: ``credits stripe send``, the local
stack, the tests, ``make bench`` and the stored samples all use it.

Keyword builders (tests, bench) return a full ``event`` dict (``ev["data"]["object"]`` is the Stripe object)
and take the object builder's arguments plus ``event_id=`` and ``event_created=``; ``event(type, obj)``
wraps any object:

    ev = checkout_session_completed("cus_Q1", pack="starter", amount_subtotal=1900)
    api = signed_api_event(body(ev), "whsec_test")            # what API Gateway hands the Lambda function
    api = resign(api, "whsec_test")                            # a stored sample, with a fresh timestamp

The command line's view (``credits stripe send``) is one ``EventOptions`` per event type:

    event = build_event("checkout.session.completed", EventOptions(customer="cus_123", credits="500"))
    header = signature_header(body(event), "whsec_...")        # Stripe-Signature: t=...,v1=...

Related objects share one suffix: payment intent ``pi_X`` -> charge ``ch_X`` -> dispute ``dp_X``, so a refund
or dispute sent later with ``--payment-intent pi_X`` names the same payment as the purchase.
``python -m credits_dev.stripe_events`` rewrites ``events/stripe_webhook/*.json``.
"""

from __future__ import annotations

import base64 as b64
import calendar
import copy
import datetime as dt
import json
import random
import string
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE_DIR = REPO_ROOT / "events" / "stripe_webhook"
SAMPLE_SECRET = "whsec_local_sample_secret"  # documented in events/README.md; never a real secret
API_VERSION = "2026-07-29.dahlia"  # the GA spec the fixtures were taken from
ROUTE = "/v1/webhooks/stripe"

# Values of the stripe-mock fixtures that are not real data (besides a string equal to its own key, such as
# "currency": "currency"); a built event must contain none of them.
PLACEHOLDER_NUMBERS = frozenset({1234567890, 1028554472})

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------- fixtures
@cache
def _fixture_text(directory: Path, name: str) -> str:
    return (directory / f"{name}.json").read_text(encoding="utf-8")


def fixture(name: str) -> Json:
    """A fresh deep copy of a fixture object, e.g. ``fixture("checkout.session")``."""
    return json.loads(_fixture_text(FIXTURES, name))


# ---------------------------------------------------------------------------------------------- ids, time
_ALPHABET = string.ascii_letters + string.digits


class Ids:
    """Stripe-looking ids (``pi_3Q...``); seeded for reproducible sample files, random otherwise."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed if seed is not None else uuid.uuid4().int)

    def __call__(self, prefix: str, length: int = 24) -> str:
        body = "".join(self._rng.choice(_ALPHABET) for _ in range(length))
        if prefix in {"pi", "ch", "re", "evt", "in", "il", "dp", "pm", "inpay", "price"}:
            body = ("3" if prefix in {"pi", "ch", "re"} else "1") + "Q" + body[2:]
        return f"{prefix}_{body}"

    def customer(self) -> str:
        return self("cus", 14)

    def session(self) -> str:
        return self("cs_test_a1", 56)


new_id = Ids()


def now() -> int:
    return int(time.time())


def _or_seconds_ago(created: int | None, seconds: int) -> int:
    """``created``, or ``seconds`` before now: an object is older than the event that announces it."""
    return created if created is not None else now() - seconds


def charge_for(payment_intent: str) -> str:
    """The charge id tests use for a PaymentIntent's (only) charge: same suffix, so links are easy to read."""
    return "ch_" + payment_intent.removeprefix("pi_")


def _request(ids: Ids) -> Json:
    return {"id": ids("req", 14), "idempotency_key": str(uuid.UUID(int=ids._rng.getrandbits(128), version=4))}


def _address() -> Json:
    return {
        "city": "Berlin",
        "country": "DE",
        "line1": "Friedrichstrasse 123",
        "line2": None,
        "postal_code": "10117",
        "state": None,
    }


# ---------------------------------------------------------------------------------------------- events
def event(
    type: str,
    obj: Json,
    id: str | None = None,
    created: int | None = None,
    *,
    ids: Ids | None = None,
    previous_attributes: Json | None = None,
) -> Json:
    """A snapshot event (``event.json`` envelope) carrying ``obj``."""
    ids = ids or new_id
    ev = fixture("event")
    ev.update(
        id=id or ids("evt"),
        api_version=API_VERSION,
        created=created if created is not None else now(),
        type=type,
        pending_webhooks=1,
        livemode=False,
        request=_request(ids),
    )
    ev["data"] = {"object": obj}
    if previous_attributes is not None:
        ev["data"]["previous_attributes"] = previous_attributes
    return ev


def _event_of(
    type: str,
    build: Callable[..., Json],
    *args: Any,
    event_id: str | None = None,
    event_created: int | None = None,
    previous_attributes: Json | None = None,
    **fields: Any,
) -> Json:
    """The event ``type`` carrying ``build(*args, **fields)``: what every keyword builder of an event is.
    ``event_id`` and ``event_created`` are the event's; the object and the event draw on the same ``ids``."""
    obj = build(*args, **fields)
    return event(
        type, obj, event_id, event_created, ids=fields.get("ids"), previous_attributes=previous_attributes
    )


def body(ev: Json) -> str:
    """The body as Stripe sends it: pretty-printed JSON (the signature covers exactly these bytes)."""
    return json.dumps(ev, indent=2)


def _string_values(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """Stripe keeps metadata values as strings."""
    return {k: str(v) for k, v in (metadata or {}).items()}


def _metadata(
    pack: str | None, credits: str | int | None, metadata: Mapping[str, Any] | None
) -> dict[str, str]:
    result: dict[str, str] = {}
    if pack is not None:
        result["credits_pack"] = pack
    if credits is not None:
        result["credits"] = str(credits)
    result.update(_string_values(metadata))
    return result


def _list(data: list[Json], url: str) -> Json:
    """A Stripe list object holding all of ``data`` (one page)."""
    return {"object": "list", "data": data, "has_more": False, "url": url}


# ---- checkout.session.* ----------------------------------------------------------------------------------
def checkout_session(
    customer: str | None,
    pack: str | None = None,
    credits: str | int | None = None,
    *,
    payment_intent: str | None = None,
    amount_subtotal: int = 1900,
    amount_tax: int = 0,
    currency: str = "eur",
    payment_status: str = "paid",
    mode: str = "payment",
    metadata: Mapping[str, Any] | None = None,
    session_id: str | None = None,
    created: int | None = None,
    ids: Ids | None = None,
) -> Json:
    """A completed Checkout Session (``checkout.session.json``) of mode ``payment``."""
    ids = ids or new_id
    created = _or_seconds_ago(created, 120)
    obj = fixture("checkout.session")
    session_id = session_id or ids.session()
    total = amount_subtotal + amount_tax
    obj.update(
        id=session_id,
        created=created,
        expires_at=created + 86_400,
        customer=customer,
        customer_creation=None,
        customer_email=None,
        currency=currency,
        amount_subtotal=amount_subtotal,
        amount_total=total,
        mode=mode,
        payment_intent=payment_intent or (ids("pi") if mode == "payment" else None),
        payment_status=payment_status,
        status="complete",
        url=None,
        metadata=_metadata(pack, credits, metadata),
        payment_method_configuration_details={"id": ids("pmc"), "parent": None},
        shipping_address_collection=None,
        shipping_cost=None,
        shipping_options=[],
        currency_conversion=None,
        custom_text={
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": amount_tax},
        invoice_creation={"enabled": False, "invoice_data": obj["invoice_creation"]["invoice_data"]},
        collected_information=None,
        after_expiration=None,
        managed_payments={"enabled": False},
        adaptive_pricing={"enabled": False},
    )
    obj["customer_details"].update(
        address=_address(), email="ada@example.com", name="Ada Lovelace", tax_exempt="none"
    )
    obj["automatic_tax"].update(enabled=amount_tax > 0, status="complete" if amount_tax else None)
    return obj


def checkout_session_completed(
    customer: str | None,
    pack: str | None = None,
    credits: str | int | None = None,
    *,
    type: str = "checkout.session.completed",
    **fields: Any,
) -> Json:
    """``checkout.session.completed`` (or ``type=`` one of the async_payment_* events) for a new session."""
    return _event_of(type, checkout_session, customer, pack, credits, **fields)


def checkout_session_event(type: str, session: Json, event_id: str | None = None, **changes: Any) -> Json:
    """Another event about an existing session (e.g. ``checkout.session.async_payment_succeeded`` once the
    bank transfer arrived: ``payment_status="paid"``)."""
    obj = copy.deepcopy(session)
    obj.update(changes)
    return event(type, obj, event_id)


# ---- payment_intent.succeeded ------------------------------------------------------------------------------
def payment_intent(
    customer: str | None,
    amount: int,
    *,
    currency: str = "eur",
    pack: str | None = None,
    credits: str | int | None = None,
    metadata: Mapping[str, Any] | None = None,
    payment_intent: str | None = None,
    latest_charge: str | None = "derive",
    status: str = "succeeded",
    created: int | None = None,
    ids: Ids | None = None,
) -> Json:
    """A PaymentIntent (``payment_intent.json``); ``latest_charge`` defaults to ``charge_for(id)``."""
    ids = ids or new_id
    created = _or_seconds_ago(created, 60)
    pi_id = payment_intent or ids("pi")
    obj = fixture("payment_intent")
    obj.update(
        id=pi_id,
        amount=amount,
        amount_received=amount if status == "succeeded" else 0,
        amount_details={"tip": {}},
        canceled_at=None,
        client_secret=f"{pi_id}_secret_{ids('x', 25)[2:]}",
        created=created,
        currency=currency,
        customer=customer,
        description="Credit top-up",
        last_payment_error=None,
        latest_charge=charge_for(pi_id) if latest_charge == "derive" else latest_charge,
        metadata=_metadata(pack, credits, metadata),
        next_action=None,
        payment_method=ids("pm"),
        payment_method_configuration_details={"id": ids("pmc"), "parent": None},
        processing=None,
        status=status,
        transfer_data=None,
        managed_payments={"enabled": False},
        automatic_payment_methods={"enabled": True, "allow_redirects": "always"},
    )
    return obj


def payment_intent_succeeded(customer: str | None, amount: int, **fields: Any) -> Json:
    return _event_of("payment_intent.succeeded", payment_intent, customer, amount, **fields)


# ---- invoice.paid / invoice_payment.paid -------------------------------------------------------------------
LineSpec = tuple[str | None, int, int] | Mapping[str, Any]


def _invoice_line(spec: LineSpec, invoice_id: str, currency: str, period: int, ids: Ids) -> Json:
    """``(price_id, quantity, amount)`` or a dict with those keys plus ``metadata`` / ``price_metadata``."""
    if isinstance(spec, Mapping):
        price_id, quantity, amount = spec.get("price"), spec.get("quantity", 1), spec["amount"]
        line_metadata, price_metadata = spec.get("metadata", {}), spec.get("price_metadata")
    else:
        price_id, quantity, amount = spec
        line_metadata, price_metadata = {}, None
    line = copy.deepcopy(fixture("invoice")["lines"]["data"][0])
    item = ids("ii")
    price: Any = price_id
    if price_metadata is not None:  # an expanded price (lines.data.pricing.price_details.price)
        price = {
            "id": price_id or ids("price"),
            "object": "price",
            "currency": currency,
            "metadata": _string_values(price_metadata),
            "unit_amount": amount // max(quantity, 1),
            "product": ids("prod", 14),
        }
    line.update(
        id=ids("il"),
        invoice=invoice_id,
        amount=amount,
        currency=currency,
        description=f"{quantity} x credits",
        metadata=_string_values(line_metadata),
        quantity=quantity,
        quantity_decimal=str(quantity),
        period={"start": period, "end": period},
        subtotal=amount,
        discountable=True,
        parent={
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": item,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
        pricing={
            "type": "price_details",
            "price_details": {"price": price, "product": ids("prod", 14)} if price is not None else None,
            "unit_amount_decimal": str(amount // max(quantity, 1)),
        },
    )
    return line


def invoice(
    customer: str | None,
    lines: Sequence[LineSpec],
    *,
    payment_intent: str | None = None,
    link: str = "payments",
    currency: str = "eur",
    amount_tax: int = 0,
    metadata: Mapping[str, Any] | None = None,
    invoice_id: str | None = None,
    created: int | None = None,
    ids: Ids | None = None,
) -> Json:
    """A paid invoice (``invoice.json``). ``payment_intent`` is linked as the API does: ``link="payments"``
    (an ``invoice_payment`` in ``payments.data``, API 2025-03-31+), ``"field"`` (the old ``payment_intent``
    field) or ``"none"`` (the link only arrives with ``invoice_payment.paid``)."""
    ids = ids or new_id
    created = _or_seconds_ago(created, 300)
    invoice_id = invoice_id or ids("in")
    obj = fixture("invoice")
    data = [_invoice_line(spec, invoice_id, currency, created, ids) for spec in lines]
    subtotal = sum(line["amount"] for line in data)
    total = subtotal + amount_tax
    obj.update(
        id=invoice_id,
        customer=customer,
        customer_email="ada@example.com",
        customer_name="Ada Lovelace",
        customer_address=_address(),
        created=created,
        currency=currency,
        due_date=None,
        effective_at=created,
        period_start=created,
        period_end=created,
        next_payment_attempt=None,
        webhooks_delivered_at=created + 1,
        status="paid",
        number=f"{ids('x', 8)[2:].upper()}-0001",
        attempt_count=1,
        attempted=True,
        auto_advance=False,
        amount_due=total,
        amount_paid=total,
        amount_remaining=0,
        amount_overpaid=0,
        subtotal=subtotal,
        subtotal_excluding_tax=subtotal,
        total=total,
        total_excluding_tax=subtotal,
        from_invoice=None,
        last_finalization_error=None,
        shipping_cost=None,
        parent=None,
        metadata=_string_values(metadata),
        hosted_invoice_url=f"https://invoice.stripe.com/i/acct_1Q/{ids('test', 40)}",
        invoice_pdf=f"https://pay.stripe.com/invoice/acct_1Q/{ids('test', 40)}/pdf",
        status_transitions={
            "finalized_at": created + 1,
            "marked_uncollectible_at": None,
            "paid_at": created + 2,
            "voided_at": None,
        },
        total_taxes=[],
    )
    obj["lines"] = _list(data, f"/v1/invoices/{invoice_id}/lines")
    obj["payment_settings"]["payment_method_options"] = None
    if payment_intent and link == "field":
        obj["payment_intent"] = payment_intent
    elif payment_intent and link == "payments":
        payment = invoice_payment(
            invoice_id, payment_intent, total, currency=currency, created=created + 1, ids=ids
        )
        obj["payments"] = _list([payment], f"/v1/invoice_payments?invoice={invoice_id}")
    return obj


def invoice_paid(customer: str | None, lines: Sequence[LineSpec], **fields: Any) -> Json:
    """``invoice.paid``; ``lines`` are ``(price_id, quantity, amount)`` tuples (amount in minor units, tax
    excluded) or dicts ``{"price", "quantity", "amount", "metadata", "price_metadata"}``."""
    return _event_of("invoice.paid", invoice, customer, lines, **fields)


def invoice_payment(
    invoice_id: str,
    payment_intent: str,
    amount: int = 0,
    *,
    currency: str = "eur",
    created: int | None = None,
    ids: Ids | None = None,
) -> Json:
    ids = ids or new_id
    created = _or_seconds_ago(created, 200)
    obj = fixture("invoice_payment")
    obj.update(
        id=ids("inpay"),
        amount_paid=amount,
        amount_requested=amount,
        created=created,
        currency=currency,
        invoice=invoice_id,
        is_default=True,
        livemode=False,
        payment={"type": "payment_intent", "payment_intent": payment_intent},
        status="paid",
        status_transitions={"canceled_at": None, "paid_at": created + 1},
    )
    return obj


def invoice_payment_paid(invoice_id: str, payment_intent: str, amount: int = 0, **fields: Any) -> Json:
    return _event_of("invoice_payment.paid", invoice_payment, invoice_id, payment_intent, amount, **fields)


# ---- charge.refunded -----------------------------------------------------------------------------------------
def charge(
    payment_intent: str | None,
    amount: int,
    amount_refunded: int = 0,
    *,
    charge_id: str | None = None,
    customer: str | None = None,
    currency: str = "eur",
    created: int | None = None,
    ids: Ids | None = None,
) -> Json:
    """A captured card charge (``charge.json``) of ``payment_intent``, refunded up to ``amount_refunded``."""
    ids = ids or new_id
    created = _or_seconds_ago(created, 60)
    charge_id = charge_id or (charge_for(payment_intent) if payment_intent else ids("ch"))
    obj = fixture("charge")
    refunds = []
    if amount_refunded:
        refund = fixture("refund")
        refund.update(
            id=ids("re"),
            amount=amount_refunded,
            charge=charge_id,
            created=created + 3_600,
            currency=currency,
            payment_intent=payment_intent,
            reason="requested_by_customer",
            balance_transaction=ids("txn"),
        )
        refunds.append(refund)
    obj.update(
        id=charge_id,
        amount=amount,
        amount_captured=amount,
        amount_refunded=amount_refunded,
        refunded=amount_refunded >= amount,
        captured=True,
        paid=True,
        created=created,
        currency=currency,
        customer=customer,
        description=None,
        payment_intent=payment_intent,
        payment_method=ids("pm"),
        balance_transaction=ids("txn"),
        outcome={
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        receipt_url=f"https://pay.stripe.com/receipts/payment/{ids('x', 60)[2:]}",
        transfer_data=None,
        source=None,
        refunds=_list(refunds, f"/v1/charges/{charge_id}/refunds"),
    )
    obj["billing_details"].update(address=_address(), email="ada@example.com", name="Ada Lovelace")
    obj["payment_method_details"]["card"]["wallet"] = None
    obj["payment_method_details"]["card"]["overcapture"]["maximum_amount_capturable"] = amount
    return obj


def charge_refunded(payment_intent: str | None, amount: int, amount_refunded: int, **fields: Any) -> Json:
    """``charge.refunded``: ``amount_refunded`` is cumulative over every refund of the charge."""
    return _event_of(
        "charge.refunded",
        charge,
        payment_intent,
        amount,
        amount_refunded,
        previous_attributes={"amount_refunded": 0, "refunded": False} if amount_refunded else None,
        **fields,
    )


# ---- charge.dispute.* ----------------------------------------------------------------------------------------
def dispute(
    payment_intent: str | None,
    status: str = "needs_response",
    *,
    amount: int = 1900,
    charge_id: str | None = None,
    dispute_id: str | None = None,
    currency: str = "eur",
    reason: str = "fraudulent",
    created: int | None = None,
    ids: Ids | None = None,
) -> Json:
    """A dispute (``dispute.json``) of the charge of ``payment_intent``; ``payment_intent=None`` names only
    the charge (``charge_id``), as older API versions did."""
    ids = ids or new_id
    created = _or_seconds_ago(created, 30)
    obj = fixture("dispute")
    obj.update(
        id=dispute_id or ids("dp"),
        amount=amount,
        charge=charge_id or (charge_for(payment_intent) if payment_intent else ids("ch")),
        payment_intent=payment_intent,
        created=created,
        currency=currency,
        reason=reason,
        status=status,
        is_charge_refundable=status in {"warning_needs_response", "needs_response"},
    )
    obj["evidence_details"].update(due_by=created + 14 * 86_400)
    obj["payment_method_details"]["card"]["case_type"] = (
        "inquiry" if status.startswith("warning") else "chargeback"
    )
    return obj


def dispute_created(payment_intent: str | None, status: str = "needs_response", **fields: Any) -> Json:
    return _event_of("charge.dispute.created", dispute, payment_intent, status, **fields)


def dispute_closed(payment_intent: str | None, status: str, **fields: Any) -> Json:
    """``charge.dispute.closed`` with ``status`` ``won``, ``lost`` or ``warning_closed``."""
    return _event_of("charge.dispute.closed", dispute, payment_intent, status, **fields)


# ---------------------------------------------------------------------------------------------- the CLI's view
PURCHASE_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "payment_intent.succeeded",
    "invoice.paid",
)
CHARGE_TYPES = ("charge.refunded", "charge.dispute.created", "charge.dispute.closed")
SUBSCRIPTION_TYPES = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)
SUPPORTED_TYPES = PURCHASE_TYPES + CHARGE_TYPES + SUBSCRIPTION_TYPES


class EventBuildError(ValueError):
    """The options cannot make this event (the message says which option is missing or wrong)."""


def suffix_of(object_id: str) -> str:
    return object_id.split("_", 1)[1] if "_" in object_id else object_id


@dataclass
class EventOptions:
    """What ``credits stripe send`` lets the user choose (one field per command-line option)."""

    customer: str | None = None
    credits: str | None = None  # metadata.credits
    pack: str | None = None  # metadata.credits_pack
    valid_days: int | None = None  # metadata.credits_valid_days
    category: str | None = None  # metadata.credits_category
    account: str | None = None  # metadata.credits_customer (an account id other than the customer)
    amount: int = 1000  # minor units, before tax
    currency: str = "eur"
    payment_intent: str | None = None
    charge: str | None = None
    amount_refunded: int | None = None  # charge.refunded: cumulative; default the whole amount
    status: str | None = None  # charge.dispute.closed: won | lost
    dispute: str | None = None
    price: str | None = None  # invoice.paid: a Stripe price id of a pack (or of a plan, with subscription)
    quantity: int = 1
    subscription: str | None = None  # a subscription's events and its invoices (plan prices)
    upgrade_from: str | None = None  # invoice.paid of a subscription: the old plan price of a proration
    old_amount: int | None = None  # the old price's unit amount (minor units)
    trial_days: int | None = None  # customer.subscription.created: trialing for this many days
    event_id: str | None = None
    created: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def ids(self) -> tuple[str, str]:
        """(payment intent, charge) ids, related by suffix; generated (and kept) when not given."""
        if self.payment_intent is None:
            self.payment_intent = f"pi_{suffix_of(self.charge)}" if self.charge else new_id("pi")
        if self.charge is None:
            self.charge = f"ch_{suffix_of(self.payment_intent)}"
        return self.payment_intent, self.charge

    def credits_metadata(self, required: bool = True) -> dict[str, str]:
        metadata = dict(self.metadata)
        for key, value in (
            ("credits", self.credits),
            ("credits_pack", self.pack),
            ("credits_valid_days", self.valid_days),
            ("credits_category", self.category),
            ("credits_customer", self.account),
        ):
            if value is not None:
                metadata[key] = str(value)
        if required and "credits" not in metadata and "credits_pack" not in metadata:
            raise EventBuildError("say what the payment buys: --credits N or --pack NAME")
        return metadata

    def purchaser(self) -> str | None:
        if not self.customer and not self.account:
            raise EventBuildError(
                "a purchase needs --customer cus_... (the account that receives the credits)"
            )
        return self.customer or None


def build_event(event_type: str, options: EventOptions) -> Json:
    """A Stripe ``event`` of ``event_type`` as Stripe would deliver it to a webhook endpoint."""
    now_ = options.created or now()
    stamp: dict[str, Any] = {"event_id": options.event_id, "event_created": now_}
    if event_type not in SUPPORTED_TYPES:
        raise EventBuildError(
            f"unsupported event type {event_type!r}; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    if event_type in PURCHASE_TYPES:
        customer = options.purchaser()
    if event_type in SUBSCRIPTION_TYPES or (event_type == "invoice.paid" and options.subscription):
        return _subscription_event(event_type, options, now_)
    if event_type.startswith("checkout.session."):
        intent, _ = options.ids()
        return checkout_session_completed(
            customer,
            type=event_type,
            payment_intent=intent,
            amount_subtotal=options.amount,
            currency=options.currency,
            metadata=options.credits_metadata(),
            created=now_ - 60,
            **stamp,
        )
    if event_type == "payment_intent.succeeded":
        intent, charge_id = options.ids()
        return payment_intent_succeeded(
            customer,
            options.amount,
            currency=options.currency,
            metadata=options.credits_metadata(),
            payment_intent=intent,
            latest_charge=charge_id,
            created=now_ - 5,
            **stamp,
        )
    if event_type == "invoice.paid":
        return _invoice_paid(options, customer, now_)
    intent, charge_id = options.ids()
    if event_type == "charge.refunded":
        refunded = options.amount if options.amount_refunded is None else options.amount_refunded
        if not 0 <= refunded <= options.amount:
            raise EventBuildError("--amount-refunded must be between 0 and --amount (the charge's amount)")
        return charge_refunded(
            intent,
            options.amount,
            refunded,
            charge_id=charge_id,
            customer=options.customer,
            currency=options.currency,
            created=now_ - 3600,
            **stamp,
        )
    closed = event_type == "charge.dispute.closed"
    if closed and options.status not in ("won", "lost"):
        raise EventBuildError("charge.dispute.closed needs --status won or --status lost")
    builder = dispute_closed if closed else dispute_created
    return builder(
        intent,
        str(options.status) if closed else "needs_response",
        amount=options.amount,
        charge_id=charge_id,
        dispute_id=options.dispute or f"dp_{suffix_of(intent)}",
        currency=options.currency,
        created=now_ - (86400 if closed else 0),
        **stamp,
    )


def _invoice_paid(options: EventOptions, customer: str | None, now_: int) -> Json:
    if not options.price and not options.credits:
        raise EventBuildError("invoice.paid needs --price price_... (a pack's Stripe price) or --credits N")
    intent, _ = options.ids()
    line = {
        "price": options.price or new_id("price"),
        "quantity": options.quantity,
        "amount": options.amount,
        "metadata": {"credits": str(options.credits)} if options.credits and not options.price else {},
    }
    return invoice_paid(
        customer,
        [line],
        payment_intent=intent,
        currency=options.currency,
        metadata=options.credits_metadata(required=False) if options.account else {},
        created=now_ - 60,
        event_id=options.event_id,
        event_created=now_,
    )


# ---------------------------------------------------------------------------------------------- subscriptions
def plan_line(
    price: str,
    start: int,
    end: int,
    amount: int,
    *,
    unit_amount: int | None,
    quantity: int = 1,
    proration: bool = False,
    item: str,
    subscription: str,
    currency: str = "eur",
    line_id: str | None = None,
    interval: str = "month",
) -> Json:
    """A subscription invoice line (``amount`` in minor units, negative for a credit) carrying its price both
    ways Stripe does: ``pricing.price_details.price`` (an id) and an expanded ``price`` with ``unit_amount``
    and ``recurring`` (older API versions), so a proration needs no call to the Stripe API."""
    return {
        "id": line_id or new_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": currency,
        "description": f"{quantity} x {price}" + (" (proration)" if proration else ""),
        "livemode": False,
        "metadata": {},
        "quantity": quantity,
        "period": {"start": start, "end": end},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": new_id("ii") if proration else None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
                "subscription_item": item,
            },
        },
        "pricing": {
            "type": "price_details",
            "price_details": {"price": price, "product": f"prod_{suffix_of(price)}"},
            "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
        },
        "price": {
            "id": price,
            "object": "price",
            "type": "recurring",
            "currency": currency,
            "unit_amount": unit_amount,
            "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
            "recurring": {"interval": interval, "interval_count": 1, "usage_type": "licensed"},
            "metadata": {},
        },
    }


def subscription_object(
    customer: str,
    price: str,
    *,
    subscription: str,
    item: str,
    status: str = "active",
    quantity: int = 1,
    period: tuple[int, int] | None = None,
    trial: tuple[int, int] | None = None,
    ended_at: int | None = None,
    cancel_at_period_end: bool = False,
    currency: str = "eur",
) -> Json:
    """A ``subscription`` with one item (current API: the period is on the item)."""
    return {
        "id": subscription,
        "object": "subscription",
        "customer": customer,
        "currency": currency,
        "status": status,
        "livemode": False,
        "metadata": {},
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": ended_at,
        "ended_at": ended_at,
        "trial_start": trial[0] if trial else None,
        "trial_end": trial[1] if trial else None,
        "items": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": item,
                    "object": "subscription_item",
                    "quantity": quantity,
                    "subscription": subscription,
                    "price": {
                        "id": price,
                        "object": "price",
                        "recurring": {"interval": "month", "interval_count": 1},
                    },
                    "current_period_start": period[0] if period else None,
                    "current_period_end": period[1] if period else None,
                }
            ],
        },
    }


def current_month(now_: int) -> tuple[int, int]:
    """The billing period ``credits stripe send`` uses: today 00:00 UTC to the same day next month (so the
    cycle invoice, an upgrade and the view sent the same day agree on it)."""
    day = dt.datetime.fromtimestamp(now_, tz=dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.month % 12 + 1
    year = day.year + (1 if day.month == 12 else 0)
    last = calendar.monthrange(year, month)[1]
    return int(day.timestamp()), int(day.replace(year=year, month=month, day=min(day.day, last)).timestamp())


def _subscription_event(event_type: str, options: EventOptions, now_: int) -> Json:
    customer = options.purchaser()
    if not options.price:
        raise EventBuildError(
            f"{event_type} of a subscription needs --price price_... (a plan's Stripe price)"
        )
    subscription = options.subscription or f"sub_{suffix_of(str(customer))}"
    item = f"si_{suffix_of(subscription)}"
    start, end = current_month(now_)
    if event_type == "invoice.paid":
        if options.upgrade_from:
            if options.old_amount is None:
                raise EventBuildError("an upgrade needs --old-amount (the old price's unit amount)")
            left = max(0.0, (end - now_) / (end - start))
            lines = [
                plan_line(
                    options.upgrade_from, now_, end, -round(options.old_amount * options.quantity * left),
                    unit_amount=options.old_amount, quantity=options.quantity, proration=True, item=item,
                    subscription=subscription, currency=options.currency,
                ),
                plan_line(
                    options.price, now_, end, round(options.amount * options.quantity * left),
                    unit_amount=options.amount, quantity=options.quantity, proration=True, item=item,
                    subscription=subscription, currency=options.currency,
                ),
            ]  # fmt: skip
            reason = "subscription_update"
        else:
            lines = [
                plan_line(
                    options.price, start, end, options.amount * options.quantity, unit_amount=options.amount,
                    quantity=options.quantity, item=item, subscription=subscription, currency=options.currency,
                )
            ]  # fmt: skip
            reason = "subscription_cycle"
        obj = invoice(customer, [], currency=options.currency, created=now_ - 60)
        obj.update(
            lines=_list(lines, f"/v1/invoices/{obj['id']}/lines"),
            amount_paid=max(0, sum(line["amount"] for line in lines)),
            subtotal=sum(line["amount"] for line in lines),
            billing_reason=reason,
            parent={"type": "subscription_details", "subscription_details": {"subscription": subscription}},
        )
        return event("invoice.paid", obj, options.event_id, now_)
    deleted = event_type == "customer.subscription.deleted"
    trial = (now_, now_ + options.trial_days * 86_400) if options.trial_days and not deleted else None
    obj = subscription_object(
        str(customer),
        options.price,
        subscription=subscription,
        item=item,
        status="canceled" if deleted else "trialing" if trial else "active",
        quantity=options.quantity,
        period=(start, end),
        trial=trial,
        ended_at=now_ if deleted else None,
        currency=options.currency,
    )
    return event(event_type, obj, options.event_id, now_)


# ---------------------------------------------------------------------------------------------- placeholders
def placeholders(value: Any, path: str = "") -> Iterator[str]:
    """Paths of values left over from the stripe-mock fixtures (``obj_123``, ``"currency"``, 1234567890...)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from placeholders(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from placeholders(item, f"{path}[{index}]")
    elif isinstance(value, str):
        leaf = path.rsplit(".", 1)[-1]
        if value == "obj_123" or value == leaf:
            yield f"{path}={value!r}"
    elif isinstance(value, int) and not isinstance(value, bool) and value in PLACEHOLDER_NUMBERS:
        yield f"{path}={value}"


# ---------------------------------------------------------------------------------------------- API Gateway
def signature_header(payload: str, secret: str, timestamp: int | None = None) -> str:
    """``t=<unix>,v1=<hmac>`` exactly as Stripe computes it (stripe-python's own test helper)."""
    import stripe  # imported when signing: the CLI's other commands start without it

    return str(stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp))


def signed_api_event(
    body_str: str,
    secret: str | Iterable[str] | None,
    base64: bool = False,
    timestamp: int | None = None,
    *,
    header: str | None = None,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> Json:
    """The API Gateway HTTP API (payload format 2.0) event for ``POST /v1/webhooks/stripe`` with ``body_str``
    signed by ``secret`` (several secrets: one ``v1`` each, as Stripe does during a rotation). ``header``
    overrides the computed Stripe-Signature; ``secret=None`` and no header sends none."""
    ts = timestamp if timestamp is not None else now()
    if header is None and secret is not None:
        secrets = [secret] if isinstance(secret, str) else list(secret)
        parts = [signature_header(body_str, s, ts).split(",", 1)[1] for s in secrets]
        header = ",".join([f"t={ts}", *parts])
    raw = body_str.encode("utf-8")
    event_headers = {
        "accept": "*/*; q=0.5, application/xml",
        "cache-control": "no-cache",
        "content-length": str(len(raw)),
        "content-type": "application/json; charset=utf-8",
        "host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
        "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "x-amzn-trace-id": "Root=1-6740f0c2-0123456789abcdef01234567",
        "x-forwarded-for": "3.18.12.63",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    if header is not None:
        event_headers["stripe-signature"] = header
    event_headers.update(headers or {})
    return {
        "version": "2.0",
        "routeKey": f"POST {ROUTE}",
        "rawPath": ROUTE,
        "rawQueryString": "",
        "headers": event_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "a1b2c3d4e5",
            "http": {
                "method": "POST",
                "path": ROUTE,
                "protocol": "HTTP/1.1",
                "sourceIp": "3.18.12.63",
                "userAgent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
            "requestId": request_id or f"{uuid.uuid4().hex[:14]}=",
            "routeKey": f"POST {ROUTE}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ts)),
            "timeEpoch": ts * 1000,
        },
        "isBase64Encoded": base64,
        "body": b64.b64encode(raw).decode("ascii") if base64 else body_str,
    }


def api_body(api_event: Json) -> str:
    """The raw body an API Gateway event carries (decoded when ``isBase64Encoded``)."""
    raw = api_event.get("body") or ""
    return b64.b64decode(raw).decode("utf-8") if api_event.get("isBase64Encoded") else raw


def resign(api_event: Json, secret: str, timestamp: int | None = None) -> Json:
    """A copy of ``api_event`` signed again with a fresh timestamp (stored samples are older than the
    300 s tolerance)."""
    fresh = copy.deepcopy(api_event)
    fresh["headers"]["stripe-signature"] = signature_header(api_body(api_event), secret, timestamp or now())
    return fresh


def stripe_event_of(api_event: Json) -> Json:
    return json.loads(api_body(api_event))


# ---------------------------------------------------------------------------------------------- samples
SAMPLE_CREATED = 1_795_000_000  # 2026-11-18T08:53:20Z; samples are re-signed before use
SAMPLE_CUSTOMER = "cus_RsmplAda1Lvlc"


def sample_events() -> dict[str, Json]:
    """One Stripe event of each handled type, about one customer's purchases (deterministic ids):

    - ``pi_a``: Checkout of pack ``starter`` (20.00 EUR + 20 % VAT), also announced by
      ``payment_intent.succeeded`` (grants once), then half refunded (12.00 of 24.00 EUR);
    - ``pi_b``: a SEPA Checkout (``payment_status`` unpaid at completion) that succeeded later;
    - ``pi_c``: a SEPA Checkout whose payment failed;
    - ``in_``/``pi_d``: an invoice for 2 x pack ``pro`` paid by ``pi_d``, disputed and the dispute won;
    - an automatic top-up's PaymentIntent declined (``payment_intent.payment_failed``).
    """
    ids = Ids(seed=20261118)
    t = SAMPLE_CREATED
    cus = SAMPLE_CUSTOMER
    pi_a, pi_b, pi_c, pi_d = ids("pi"), ids("pi"), ids("pi"), ids("pi")
    invoice_id = ids("in")
    session_a: dict[str, Any] = dict(
        payment_intent=pi_a, amount_subtotal=2000, amount_tax=400, created=t - 90, ids=ids
    )
    samples = {
        "checkout_session_completed": checkout_session_completed(
            cus, "starter", event_id=ids("evt"), event_created=t, **session_a
        ),
        # the SEPA Checkouts (unpaid at completion): the outcome of their payment arrives a day later
        **{
            f"checkout_session_async_payment_{outcome}": checkout_session_completed(
                cus,
                "starter",
                type=f"checkout.session.async_payment_{outcome}",
                event_id=ids("evt"),
                event_created=t + 86_400,
                payment_intent=intent,
                payment_status=payment_status,
                amount_subtotal=1900,
                created=t - 60,
                ids=ids,
            )
            for outcome, intent, payment_status in (("succeeded", pi_b, "paid"), ("failed", pi_c, "unpaid"))
        },
        "payment_intent_succeeded": payment_intent_succeeded(
            cus,
            2400,
            pack="starter",
            payment_intent=pi_a,
            created=t - 90,
            ids=ids,
            event_id=ids("evt"),
            event_created=t + 1,
        ),
        "invoice_paid": invoice_paid(
            cus,
            [("price_EUR_pro", 2, 19800)],
            payment_intent=pi_d,
            invoice_id=invoice_id,
            created=t - 30,
            ids=ids,
            event_id=ids("evt"),
            event_created=t + 2,
        ),
        "invoice_payment_paid": invoice_payment_paid(
            invoice_id, pi_d, 19800, created=t - 20, ids=ids, event_id=ids("evt"), event_created=t + 2
        ),
        "charge_refunded": charge_refunded(
            pi_a,
            2400,
            1200,
            customer=cus,
            created=t - 90,
            ids=ids,
            event_id=ids("evt"),
            event_created=t + 600,
        ),
        "charge_dispute_created": dispute_created(
            pi_d, amount=19800, created=t + 900, ids=ids, event_id=ids("evt"), event_created=t + 900
        ),
        "charge_dispute_closed": dispute_closed(
            pi_d, "won", amount=19800, created=t + 900, ids=ids, event_id=ids("evt"), event_created=t + 2_000
        ),
    }
    # an automatic top-up whose card was declined (settles the attempt; no ledger change)
    declined = payment_intent(
        cus,
        2000,
        pack="starter",
        metadata={"credits_customer": cus, "credits_topup": f"{cus}|usage:{cus}:req-topup"},
        latest_charge=None,
        status="requires_payment_method",
        created=t + 3_000,
        ids=ids,
    )
    declined["last_payment_error"] = {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "generic_decline",
        "message": "Your card was declined.",
    }
    samples["payment_intent_payment_failed"] = event(
        "payment_intent.payment_failed", declined, ids("evt"), t + 3_000, ids=ids
    )
    samples["charge_dispute_closed"]["data"]["object"]["id"] = samples["charge_dispute_created"]["data"][
        "object"
    ]["id"]
    samples["charge_dispute_closed"]["data"]["object"]["is_charge_refundable"] = False
    return samples


def write_samples(directory: Path = SAMPLE_DIR, secret: str = SAMPLE_SECRET) -> list[Path]:
    """Rewrite ``events/stripe_webhook/<event>.json``: API Gateway events signed with ``secret`` at the
    event's own ``created`` time (stale on purpose: re-sign with ``resign`` before sending them)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ev in sample_events().items():
        api = signed_api_event(body(ev), secret, timestamp=ev["created"], request_id=f"sample-{name}")
        path = directory / f"{name}.json"
        path.write_text(json.dumps(api, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def load_sample(name: str, directory: Path = SAMPLE_DIR) -> Json:
    return json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))


if __name__ == "__main__":  # python -m credits_dev.stripe_events
    for written_path in write_samples():
        print(written_path.relative_to(REPO_ROOT))
