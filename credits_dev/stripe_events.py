"""Realistic, signed Stripe webhook events for development (``credits stripe send``), built from Stripe's own
example objects (``credits_dev/fixtures``, MIT, see the README there) with the placeholders replaced.

    options = EventOptions(customer="cus_123", credits="500", amount=1000, currency="eur")
    event = build_event("checkout.session.completed", options)
    body = serialize(event)                               # the exact bytes to POST
    header = sign(body, "whsec_...")                      # Stripe-Signature: t=...,v1=...

Related objects share one suffix: payment intent ``pi_X`` -> charge ``ch_X`` -> dispute ``dp_X``, so a refund
or dispute sent later with ``--payment-intent pi_X`` names the same payment as the purchase.
"""

from __future__ import annotations

import copy
import json
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"

PURCHASE_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "payment_intent.succeeded",
    "invoice.paid",
)
CHARGE_TYPES = ("charge.refunded", "charge.dispute.created", "charge.dispute.closed")
SUPPORTED_TYPES = PURCHASE_TYPES + CHARGE_TYPES
_ALPHABET = string.ascii_letters + string.digits


class EventBuildError(ValueError):
    """The options cannot make this event (the message says which option is missing or wrong)."""


def stripe_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ALPHABET) for _ in range(length))}"


def suffix_of(object_id: str) -> str:
    return object_id.split("_", 1)[1] if "_" in object_id else object_id


@dataclass
class EventOptions:
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
    price: str | None = None  # invoice.paid: a Stripe price id of a pack
    quantity: int = 1
    event_id: str | None = None
    created: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def ids(self) -> tuple[str, str]:
        """(payment intent, charge) ids, related by suffix; generated when not given."""
        if self.payment_intent is None:
            self.payment_intent = f"pi_{suffix_of(self.charge)}" if self.charge else stripe_id("pi")
        if self.charge is None:
            self.charge = f"ch_{suffix_of(self.payment_intent)}"
        return self.payment_intent, self.charge


def load_fixture(name: str) -> dict[str, Any]:
    with open(FIXTURES / f"{name}.json", encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _credits_metadata(options: EventOptions, required: bool = True) -> dict[str, str]:
    metadata = dict(options.metadata)
    if options.credits is not None:
        metadata["credits"] = str(options.credits)
    if options.pack is not None:
        metadata["credits_pack"] = options.pack
    if options.valid_days is not None:
        metadata["credits_valid_days"] = str(options.valid_days)
    if options.category is not None:
        metadata["credits_category"] = options.category
    if options.account is not None:
        metadata["credits_customer"] = options.account
    if required and "credits" not in metadata and "credits_pack" not in metadata:
        raise EventBuildError("say what the payment buys: --credits N or --pack NAME")
    return metadata


def _require_customer(options: EventOptions) -> str:
    if not options.customer and not options.account:
        raise EventBuildError("a purchase needs --customer cus_... (the account that receives the credits)")
    return options.customer or ""


# ---- objects ---------------------------------------------------------------------------------------------
def checkout_session(options: EventOptions, now: int) -> dict[str, Any]:
    customer = _require_customer(options)
    intent, _ = options.ids()
    session = load_fixture("checkout.session")
    session_id = f"cs_test_{''.join(secrets.choice(_ALPHABET) for _ in range(58))}"
    session.update(
        id=session_id,
        amount_subtotal=options.amount,
        amount_total=options.amount,
        created=now - 60,
        currency=options.currency,
        customer=customer or None,
        customer_creation=None,
        customer_email=None,
        expires_at=now - 60 + 86400,
        metadata=_credits_metadata(options),
        mode="payment",
        payment_intent=intent,
        payment_status="paid",
        status="complete",
        url=None,
        shipping_cost=None,
        shipping_address_collection=None,
        shipping_options=[],
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        currency_conversion=None,
        custom_text={
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        collected_information={"shipping_details": None, "business_name": None, "individual_name": None},
        payment_method_configuration_details={"id": stripe_id("pmc", 24), "parent": None},
        after_expiration=None,
        managed_payments={"enabled": False},
    )
    session["customer_details"] = {
        **session["customer_details"],
        "email": "jenny.rosen@example.com",
        "name": "Jenny Rosen",
        "address": {**session["customer_details"]["address"], "country": "DE"},
    }
    session["invoice_creation"] = {**session["invoice_creation"], "enabled": False}
    return session


def payment_intent(options: EventOptions, now: int) -> dict[str, Any]:
    customer = _require_customer(options)
    intent_id, charge_id = options.ids()
    intent = load_fixture("payment_intent")
    intent.update(
        id=intent_id,
        amount=options.amount,
        amount_received=options.amount,
        canceled_at=None,
        client_secret=f"{intent_id}_secret_{''.join(secrets.choice(_ALPHABET) for _ in range(25))}",
        created=now - 5,
        currency=options.currency,
        customer=customer or None,
        description="Credits top-up",
        last_payment_error=None,
        latest_charge=charge_id,
        metadata=_credits_metadata(options),
        next_action=None,
        payment_method=stripe_id("pm", 24),
        payment_method_configuration_details=None,
        processing=None,
        status="succeeded",
        transfer_data=None,
        managed_payments={"enabled": False},
    )
    return intent


def charge(options: EventOptions, now: int) -> dict[str, Any]:
    intent_id, charge_id = options.ids()
    refunded = options.amount if options.amount_refunded is None else options.amount_refunded
    if not 0 <= refunded <= options.amount:
        raise EventBuildError("--amount-refunded must be between 0 and --amount (the charge's amount)")
    obj = load_fixture("charge")
    refund = load_fixture("refund")
    refund.update(
        id=stripe_id("re"),
        amount=refunded,
        charge=charge_id,
        payment_intent=intent_id,
        created=now,
        currency=options.currency,
        balance_transaction=stripe_id("txn"),
        customer=options.customer,
        reason="requested_by_customer",
    )
    obj.update(
        id=charge_id,
        amount=options.amount,
        amount_captured=options.amount,
        amount_refunded=refunded,
        balance_transaction=stripe_id("txn"),
        captured=True,
        created=now - 3600,
        currency=options.currency,
        customer=options.customer,
        description="Credits purchase",
        payment_intent=intent_id,
        payment_method=stripe_id("pm", 24),
        receipt_url=f"https://pay.stripe.com/receipts/payment/{secrets.token_urlsafe(48)}",
        refunded=refunded == options.amount,
        refunds={
            "object": "list",
            "data": [refund] if refunded else [],
            "has_more": False,
            "total_count": 1 if refunded else 0,
            "url": f"/v1/charges/{charge_id}/refunds",
        },
        source=None,
        transfer_data=None,
        outcome={
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 32,
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
    )
    obj["billing_details"] = {**obj["billing_details"], "email": "jenny.rosen@example.com"}
    obj["payment_method_details"]["card"]["wallet"] = None
    obj["payment_method_details"]["card"]["overcapture"] = {
        "maximum_amount_capturable": options.amount,
        "status": "unavailable",
    }
    return obj


def dispute(options: EventOptions, now: int, closed: bool) -> dict[str, Any]:
    intent_id, charge_id = options.ids()
    status = "needs_response"
    if closed:
        if options.status not in ("won", "lost"):
            raise EventBuildError("charge.dispute.closed needs --status won or --status lost")
        status = options.status
    obj = load_fixture("dispute")
    obj.update(
        id=options.dispute or f"dp_{suffix_of(intent_id)}",
        amount=options.amount,
        charge=charge_id,
        created=now - (86400 if closed else 0),
        currency=options.currency,
        payment_intent=intent_id,
        reason="fraudulent",
        status=status,
        is_charge_refundable=False,
        enhanced_eligibility_types=[],
    )
    obj["evidence_details"] = {
        **obj["evidence_details"],
        "due_by": now + 7 * 86400,
        "enhanced_eligibility": {},
    }
    obj["payment_method_details"] = {
        "card": {
            "brand": "visa",
            "case_type": "chargeback",
            "network_reason_code": "10.4",
            "network": "visa",
        },
        "type": "card",
    }
    return obj


def invoice(options: EventOptions, now: int) -> dict[str, Any]:
    customer = _require_customer(options)
    if not options.price and not options.credits:
        raise EventBuildError("invoice.paid needs --price price_... (a pack's Stripe price) or --credits N")
    intent_id, _ = options.ids()
    obj = load_fixture("invoice")
    invoice_id = stripe_id("in")
    template_line = obj["lines"]["data"][0]
    line = copy.deepcopy(template_line)
    line.update(
        id=stripe_id("il"),
        amount=options.amount,
        currency=options.currency,
        description=f"{options.quantity} x credits",
        invoice=invoice_id,
        metadata={"credits": str(options.credits)} if options.credits and not options.price else {},
        period={"end": now, "start": now},
        quantity=options.quantity,
        subtotal=options.amount,
        pricing={
            "type": "price_details",
            "unit_amount_decimal": str(options.amount // max(options.quantity, 1)),
            "price_details": {
                "price": options.price or stripe_id("price", 24),
                "product": stripe_id("prod", 14),
            },
        },
        parent={
            "type": "invoice_item_details",
            "subscription_item_details": None,
            "invoice_item_details": {
                "invoice_item": stripe_id("ii", 24),
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
        },
    )
    obj.update(
        id=invoice_id,
        amount_due=options.amount,
        amount_paid=options.amount,
        amount_remaining=0,
        created=now - 60,
        currency=options.currency,
        customer=customer or None,
        lines={
            "object": "list",
            "data": [line],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        metadata=_credits_metadata(options, required=False) if options.account else {},
        paid=True,
        status="paid",
        subtotal=options.amount,
        total=options.amount,
        parent=None,
        payments={
            "object": "list",
            "has_more": False,
            "url": "/v1/invoice_payments",
            "data": [
                {
                    "id": stripe_id("inpay"),
                    "object": "invoice_payment",
                    "invoice": invoice_id,
                    "is_default": True,
                    "status": "paid",
                    "amount_paid": options.amount,
                    "currency": options.currency,
                    "payment": {"type": "payment_intent", "payment_intent": intent_id},
                }
            ],
        },
    )
    for key in ("status_transitions",):
        if isinstance(obj.get(key), dict):
            obj[key] = {**obj[key], "paid_at": now, "finalized_at": now - 60}
    return obj


# ---- events ----------------------------------------------------------------------------------------------
_PLACEHOLDER_TIME = 1234567890
_PLACEHOLDER_STRINGS = {
    "obj_123",
    "message",
    "name",
    "type",
    "status",
    "flow",
    "client_secret",
    "invoice",
    "invoice_item",
    "subscription",
    "subscription_item",
    "quote",
    "invoice_line_items",
}


def scrub(value: Any, now: int, currency: str) -> Any:
    """Replace what is left of stripe-mock's placeholders (after the builders set the fields that matter):
    timestamp 1234567890 -> now, ``"currency": "currency"`` -> the currency, placeholder strings -> null."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "currency" and item == "currency":
                out[key] = currency
            elif key == "object" or key == "type":
                out[key] = item if item != "type" else None
            else:
                out[key] = scrub(item, now, currency)
        return out
    if isinstance(value, list):
        return [scrub(item, now, currency) for item in value]
    if value == _PLACEHOLDER_TIME and isinstance(value, int):
        return now
    if isinstance(value, str) and value in _PLACEHOLDER_STRINGS:
        return None
    return value


def build_event(event_type: str, options: EventOptions) -> dict[str, Any]:
    """A Stripe ``event`` of ``event_type`` as Stripe would deliver it to a webhook endpoint."""
    now = options.created or int(time.time())
    if event_type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        obj = checkout_session(options, now)
    elif event_type == "payment_intent.succeeded":
        obj = payment_intent(options, now)
    elif event_type == "invoice.paid":
        obj = invoice(options, now)
    elif event_type == "charge.refunded":
        obj = charge(options, now)
    elif event_type == "charge.dispute.created":
        obj = dispute(options, now, closed=False)
    elif event_type == "charge.dispute.closed":
        obj = dispute(options, now, closed=True)
    else:
        raise EventBuildError(
            f"unsupported event type {event_type!r}; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    import stripe

    obj = scrub(obj, now, options.currency)
    envelope = load_fixture("event")
    envelope.update(
        id=options.event_id or stripe_id("evt"),
        api_version=stripe.api_version,
        created=now,
        data={"object": obj},
        livemode=False,
        pending_webhooks=1,
        request={"id": None, "idempotency_key": None}
        if event_type.startswith(("checkout.", "invoice.", "charge.dispute"))
        else {"id": stripe_id("req", 14), "idempotency_key": str(uuid.uuid4())},
        type=event_type,
    )
    return envelope


def serialize(event: dict[str, Any]) -> str:
    """The body as Stripe sends it (pretty-printed JSON, 2 spaces)."""
    return json.dumps(event, indent=2)


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``payload`` (stripe-python's own signer)."""
    import stripe

    return str(stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp))
