"""Stripe events -> payment facts. Pure: everything needed is in the event and the pricing file (the webhook
path never calls the Stripe API)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from credits_ledger.domain.models import Category
from credits_ledger.domain.money import InvalidAmount, parse_amount
from credits_ledger.domain.payments import (
    Dispute,
    DisputeStatus,
    Fact,
    GrantLine,
    Link,
    Purchase,
    Refund,
    split_cost,
)
from credits_ledger.pricing import Pack, Pricing


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Unprocessable:
    """A verified event we cannot act on until config or data is fixed (unknown pack, no account...)."""

    reason: str


@dataclass(frozen=True)
class Facts:
    items: tuple[tuple[str, Fact], ...]  # (payment key the fact belongs to, fact)


Interpretation = Facts | Ignored | Unprocessable

HANDLED = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "invoice.paid",
    "invoice_payment.paid",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
)


class _Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _id(value: Any) -> str | None:
    """Stripe fields are ids or, when expanded, objects with an id."""
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) and value else None


def _account(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    account = metadata.get("credits_customer") or _id(obj.get("customer"))
    if not account:
        raise _Reject(f"{obj.get('id')}: no account (neither metadata.credits_customer nor customer)")
    return str(account)


def _amount(value: Any, field: str) -> Decimal:
    try:
        amount = parse_amount(str(value))
    except InvalidAmount as exc:
        raise _Reject(f"metadata.{field} {exc}") from exc
    if amount <= 0:
        raise _Reject(f"metadata.{field} must be greater than 0")
    return amount


def _pack_lines(pack: Pack, quantity: int, line_id: str, priority: int | None) -> list[GrantLine]:
    lines = [
        GrantLine(
            line_id,
            pack.credits * quantity,
            pack.category,
            priority if priority is not None else pack.priority,
            pack.valid_days,
            pack=pack.name,
        )
    ]
    if pack.bonus_credits:
        lines.append(
            GrantLine(
                f"{line_id}:bonus",
                pack.bonus_credits * quantity,
                Category.PROMOTIONAL,
                priority if priority is not None else pack.priority,
                pack.valid_days,
                pack=pack.name,
            )
        )
    return lines


def _metadata_lines(obj: dict[str, Any], pricing: Pricing, line_id: str) -> list[GrantLine] | None:
    metadata = obj.get("metadata") or {}
    priority = (
        int(metadata["credits_priority"]) if str(metadata.get("credits_priority", "")).isdigit() else None
    )
    if metadata.get("credits_pack"):
        pack = pricing.packs.get(metadata["credits_pack"])
        if pack is None:
            raise _Reject(f"unknown pack {metadata['credits_pack']!r} in metadata.credits_pack")
        return _pack_lines(pack, 1, line_id, priority)
    if metadata.get("credits"):
        try:
            category = Category(metadata.get("credits_category", "paid"))
        except ValueError as exc:
            raise _Reject("metadata.credits_category must be paid or promotional") from exc
        days = metadata.get("credits_valid_days")
        if days is not None and not str(days).isdigit():
            raise _Reject("metadata.credits_valid_days must be a whole number of days")
        return [
            GrantLine(
                line_id,
                _amount(metadata["credits"], "credits"),
                category,
                priority,
                int(days) if days else None,
            )
        ]
    return None


def _with_cost(lines: list[GrantLine], total_minor: int, currency: str | None) -> tuple[GrantLine, ...]:
    costs = split_cost(total_minor, [(line.line_id, line.credits) for line in lines])
    return tuple(
        GrantLine(
            line.line_id,
            line.credits,
            line.category,
            line.priority,
            line.valid_days,
            costs[line.line_id],
            currency,
            line.pack,
        )
        for line in lines
    )


def _paid_at(event: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(event.get("created") or 0), tz=UTC)


def _checkout(event: dict[str, Any], obj: dict[str, Any], pricing: Pricing) -> Interpretation:
    if obj.get("mode") != "payment":
        return Ignored(f"checkout session mode {obj.get('mode')!r}")
    if obj.get("payment_status") != "paid":
        return Ignored("checkout session not paid yet: waiting for async_payment_succeeded")
    lines = _metadata_lines(obj, pricing, "session")
    if lines is None:
        return Ignored("checkout session without credits metadata")
    key = _id(obj.get("payment_intent")) or obj["id"]
    subtotal = obj.get("amount_subtotal")  # before tax; amount_total includes it
    cost: int = int(subtotal if subtotal is not None else obj.get("amount_total") or 0)
    purchase = Purchase(
        _account(obj),
        _with_cost(lines, cost, obj.get("currency")),
        _paid_at(event),
        "stripe_checkout_session",
        obj["id"],
        charged=int(obj.get("amount_total") or cost),
    )
    return Facts(((key, purchase),))


def _payment_intent(event: dict[str, Any], obj: dict[str, Any], pricing: Pricing) -> Interpretation:
    facts: list[tuple[str, Fact]] = []
    charge = _id(obj.get("latest_charge"))
    if charge:  # lets a dispute that names only the charge find this payment
        facts += [(obj["id"], Link(obj["id"], charge)), (charge, Link(obj["id"], charge))]
    lines = _metadata_lines(obj, pricing, "payment")
    if lines is not None:
        cost = obj.get("amount_received") or obj.get("amount") or 0
        purchase = Purchase(
            _account(obj),
            _with_cost(lines, int(cost), obj.get("currency")),
            _paid_at(event),
            "stripe_payment_intent",
            obj["id"],
            charged=int(cost),
        )
        facts.append((obj["id"], purchase))
    return Facts(tuple(facts)) if facts else Ignored("payment intent without credits metadata")


def _line_price(line: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    price = line.get("price")
    if price is None:
        details = (line.get("pricing") or {}).get("price_details") or {}
        price = details.get("price")
    return _id(price), (price.get("metadata") or {}) if isinstance(price, dict) else {}


def _invoice(event: dict[str, Any], obj: dict[str, Any], pricing: Pricing) -> Interpretation:
    facts: list[tuple[str, Fact]] = []
    intent = _id(obj.get("payment_intent"))
    for payment in (obj.get("payments") or {}).get("data") or []:
        intent = intent or _id((payment.get("payment") or {}).get("payment_intent"))
    if intent:
        facts += [(obj["id"], Link(obj["id"], intent)), (intent, Link(obj["id"], intent))]
    grant_lines: list[GrantLine] = []
    for line in (obj.get("lines") or {}).get("data") or []:
        price_id, price_metadata = _line_price(line)
        quantity = int(line.get("quantity") or 1)
        line_metadata = line.get("metadata") or {}
        pack = pricing.pack_for_price(price_id) if price_id else None
        if pack is not None:
            lines = _pack_lines(pack, quantity, line["id"], None)
        elif line_metadata.get("credits"):
            lines = [GrantLine(line["id"], _amount(line_metadata["credits"], "credits"))]
        elif price_metadata.get("credits"):
            lines = [GrantLine(line["id"], _amount(price_metadata["credits"], "credits") * quantity)]
        else:
            continue
        grant_lines += _with_cost(lines, int(line.get("amount") or 0), obj.get("currency"))
    if grant_lines:
        purchase = Purchase(
            _account(obj),
            tuple(grant_lines),
            _paid_at(event),
            "stripe_invoice",
            obj["id"],
            charged=int(obj.get("amount_paid") or 0),
        )
        facts.append((obj["id"], purchase))
    return Facts(tuple(facts)) if facts else Ignored("invoice without credit lines")


def _invoice_payment(obj: dict[str, Any]) -> Interpretation:
    invoice = _id(obj.get("invoice"))
    intent = _id((obj.get("payment") or {}).get("payment_intent"))
    if not invoice or not intent:
        return Ignored("invoice payment not made by a payment intent")
    return Facts(((invoice, Link(invoice, intent)), (intent, Link(invoice, intent))))


def _refund(obj: dict[str, Any]) -> Interpretation:
    intent = _id(obj.get("payment_intent"))
    key = intent or obj["id"]
    facts: list[tuple[str, Fact]] = [
        (key, Refund(obj["id"], int(obj["amount"]), int(obj["amount_refunded"])))
    ]
    if intent:
        facts += [(intent, Link(intent, obj["id"])), (obj["id"], Link(intent, obj["id"]))]
    invoice = _id(obj.get("invoice"))
    if invoice and intent:
        facts += [(invoice, Link(invoice, intent)), (intent, Link(invoice, intent))]
    return Facts(tuple(facts))


def _dispute(event_type: str, obj: dict[str, Any]) -> Interpretation:
    key = _id(obj.get("payment_intent")) or _id(obj.get("charge"))
    if key is None:
        return Unprocessable(f"dispute {obj.get('id')} names neither a payment intent nor a charge")
    if event_type == "charge.dispute.created":
        status = DisputeStatus.OPEN
    elif obj.get("status") == "lost":
        status = DisputeStatus.LOST
    else:  # won, or warning_closed (an inquiry that never became a chargeback)
        status = DisputeStatus.WON
    return Facts(((key, Dispute(obj["id"], status)),))


def interpret(event: dict[str, Any], pricing: Pricing) -> Interpretation:
    """What a verified Stripe event means for the ledger."""
    event_type = event.get("type", "")
    obj = (event.get("data") or {}).get("object") or {}
    try:
        if event_type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return _checkout(event, obj, pricing)
        if event_type == "payment_intent.succeeded":
            return _payment_intent(event, obj, pricing)
        if event_type == "invoice.paid":
            return _invoice(event, obj, pricing)
        if event_type == "invoice_payment.paid":
            return _invoice_payment(obj)
        if event_type == "charge.refunded":
            return _refund(obj)
        if event_type in ("charge.dispute.created", "charge.dispute.closed"):
            return _dispute(event_type, obj)
    except _Reject as exc:
        return Unprocessable(exc.reason)
    except (KeyError, TypeError, ValueError) as exc:
        return Unprocessable(f"malformed {event_type} object: {exc.__class__.__name__} {exc}")
    return Ignored(f"event type {event_type} does not change credits")
