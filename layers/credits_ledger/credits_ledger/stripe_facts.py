"""Stripe events -> payment and subscription facts.

Pure but for two reads that only some invoices need, passed in as ``StripeReads`` (credits_ledger/stripe_api.py
in AWS): the remaining lines of an invoice whose ``lines.has_more`` is true, and a price that a line names
only by id (its metadata, unit amount and interval). Without them (no ``STRIPE_API_KEY``) such an invoice is
``failed`` with the reason, never processed on half its lines.

Nothing a merchant or customer can put in an event mints credits: lines with quantity 0 or an amount of 0 or
less grant nothing, proration lines move credits only in the proportion of money (domain/subscriptions.py),
metadata out of range fails the event, events of the other Stripe mode or of a connected account are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from credits_ledger.domain import subscriptions as subs
from credits_ledger.domain.models import (
    MAX_IDENTIFIER_LENGTH,
    PATH_SEGMENT_CHARACTERS,
    Category,
    is_account_id,
    is_stripe_customer_id,
)
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
from credits_ledger.domain.subscriptions import (
    PoolGrant,
    PoolGrantFact,
    PoolLink,
    PoolRevocation,
    SubscriptionFact,
    SubscriptionSnapshot,
    Trial,
)
from credits_ledger.pricing import Pack, Plan, Pricing

MAX_VALID_DAYS = 36_500
MAX_PRIORITY = 1_000_000


class StripeReadFailed(Exception):
    """Stripe refused a read for good (a deleted price): the event is failed with this reason, kept for replay."""


class StripeReads(Protocol):
    """The Stripe API reads an event may need (a restricted read key is enough)."""

    def list_invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]: ...

    def retrieve_price(self, price_id: str) -> dict[str, Any]: ...


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
    subscription_items: tuple[SubscriptionFact, ...] = ()


Interpretation = Facts | Ignored | Unprocessable

HANDLED = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",  # settles a failed automatic top-up (topups.py); no ledger change
    "invoice.paid",
    "invoice_payment.paid",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
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
    return _addressable(str(account), obj)


def _addressable(account: str, obj: dict[str, Any]) -> str:
    """``account``, when it is an id the API can address (Stripe metadata holds up to 500 characters of
    anything); otherwise the event fails with the reason, kept for replay once the metadata is fixed."""
    if not is_account_id(account):
        raise _Reject(
            f"{obj.get('id')}: metadata.credits_customer is not an account id the API can address "
            f"({len(account)} characters; at most {MAX_IDENTIFIER_LENGTH}, only {PATH_SEGMENT_CHARACTERS})"
        )
    return account


def _invoice_account(invoice: dict[str, Any]) -> str:
    """An invoice's account: its own ``metadata.credits_customer``, else its subscription's, else its
    customer. Stripe copies a subscription's metadata to ``parent.subscription_details.metadata``, not to the
    invoice's; API versions before 2025-03-31 copy it to the invoice's top-level
    ``subscription_details.metadata``. A subscription naming an account grants its months to the account its
    snapshot and its cancellation are kept under, whatever the API version of its invoices."""
    if not (invoice.get("metadata") or {}).get("credits_customer"):
        for details in (
            (invoice.get("parent") or {}).get("subscription_details") or {},
            invoice.get("subscription_details") or {},
        ):
            named = (details.get("metadata") or {}).get("credits_customer")
            if named:
                return _addressable(str(named), invoice)
    return _account(invoice)


def _amount(value: Any, field: str) -> Decimal:
    try:
        amount = parse_amount(str(value))
    except InvalidAmount as exc:
        raise _Reject(f"metadata.{field} {exc}") from exc
    if amount <= 0:
        raise _Reject(f"metadata.{field} must be greater than 0")
    return amount


def _pack_lines(
    pack: Pack,
    quantity: int,
    line_id: str,
    priority: int | None,
    valid_days: int | None = None,
    category: Category | None = None,
) -> list[GrantLine]:
    """The pack's grant (and its bonus, always promotional); the payment's metadata may override the
    priority, validity and the pack grant's category (contract: optional for ``credits`` and ``credits_pack``)."""
    priority = priority if priority is not None else pack.priority
    valid_days = valid_days if valid_days is not None else pack.valid_days
    lines = [
        GrantLine(
            line_id, pack.credits * quantity, category or pack.category, priority, valid_days, pack=pack.name
        )
    ]
    if pack.bonus_credits:
        lines.append(
            GrantLine(
                f"{line_id}:bonus",
                pack.bonus_credits * quantity,
                Category.PROMOTIONAL,
                priority,
                valid_days,
                pack=pack.name,
            )
        )
    return lines


def _priority(metadata: dict[str, Any]) -> int | None:
    raw = metadata.get("credits_priority")
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    if not text.isdigit() or int(text) > MAX_PRIORITY:
        raise _Reject(f"metadata.credits_priority must be a whole number from 0 to {MAX_PRIORITY:,}")
    return int(text)


def _valid_days(metadata: dict[str, Any]) -> int | None:
    raw = metadata.get("credits_valid_days")
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_VALID_DAYS:
        raise _Reject(
            f"metadata.credits_valid_days must be a whole number of days from 1 to {MAX_VALID_DAYS:,}"
        )
    return int(text)


MAX_PACK_QUANTITY = 1000


def _metadata_lines(obj: dict[str, Any], pricing: Pricing, line_id: str) -> list[GrantLine] | None:
    metadata = obj.get("metadata") or {}
    priority = _priority(metadata)
    if metadata.get("credits_pack"):
        pack = pricing.packs.get(metadata["credits_pack"])
        if pack is None:
            raise _Reject(f"unknown pack {metadata['credits_pack']!r} in metadata.credits_pack")
        # credits_quantity: packs bought at once (automatic top-ups with auto_topup.quantity > 1)
        quantity = str(metadata.get("credits_quantity") or "1")
        if not quantity.isdigit() or not 1 <= int(quantity) <= MAX_PACK_QUANTITY:
            raise _Reject(f"metadata.credits_quantity must be a whole number from 1 to {MAX_PACK_QUANTITY}")
        return _pack_lines(pack, int(quantity), line_id, priority, _valid_days(metadata), _category(metadata))
    if metadata.get("credits"):
        credits = _amount(metadata["credits"], "credits")
        return [
            GrantLine(line_id, credits, _category(metadata) or Category.PAID, priority, _valid_days(metadata))
        ]
    return None


def _category(metadata: dict[str, Any]) -> Category | None:
    raw = metadata.get("credits_category")
    if raw is None or raw == "":
        return None
    try:
        return Category(raw)
    except ValueError as exc:
        raise _Reject("metadata.credits_category must be paid or promotional") from exc


def _with_cost(lines: list[GrantLine], total_minor: int, currency: str | None) -> tuple[GrantLine, ...]:
    costs = split_cost(total_minor, [(line.line_id, line.credits) for line in lines])
    return tuple(replace(line, cost_amount=costs[line.line_id], currency=currency) for line in lines)


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
    links: list[tuple[str, Fact]] = []
    invoice = _id(obj.get("invoice"))
    if invoice:
        # Checkout with invoice creation: the session's payment and the invoice's are one payment, whichever
        # of checkout.session.completed and invoice.paid comes first (granted once).
        links = [(invoice, Link(invoice, key)), (key, Link(invoice, key))]
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
    return Facts((*links, (key, purchase)))


def _payment_intent(event: dict[str, Any], obj: dict[str, Any], pricing: Pricing) -> Interpretation:
    facts: list[tuple[str, Fact]] = []
    charge = _id(obj.get("latest_charge"))
    if charge:  # lets a dispute that names only the charge find this payment
        facts += [(obj["id"], Link(obj["id"], charge)), (charge, Link(obj["id"], charge))]
    invoice = _id(obj.get("invoice"))  # API versions before 2025-03-31 name the invoice the intent pays
    if invoice:  # one payment with it: credits metadata here and pack lines there grant once
        facts += [(invoice, Link(invoice, obj["id"])), (obj["id"], Link(invoice, obj["id"]))]
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


def _line_price(line: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The line's price id, and the price object when the line carries it (older API versions, or expanded)."""
    price = line.get("price")
    if price is None:
        details = (line.get("pricing") or {}).get("price_details") or {}
        price = details.get("price")
    return _id(price), price if isinstance(price, dict) else None


def _subscription_details(line: dict[str, Any]) -> dict[str, Any]:
    parent = line.get("parent") or {}
    return parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}


def _is_proration(line: dict[str, Any]) -> bool:
    return bool(_subscription_details(line).get("proration") or line.get("proration"))


def _period(line: dict[str, Any]) -> tuple[datetime, datetime]:
    period = line.get("period") or {}
    return (
        datetime.fromtimestamp(int(period["start"]), tz=UTC),
        datetime.fromtimestamp(int(period["end"]), tz=UTC),
    )


def _quantity(line: dict[str, Any]) -> int:
    quantity = line.get("quantity")
    return 1 if quantity is None else int(quantity)  # an explicit 0 stays 0: it buys nothing


class _Prices:
    """Prices a line names only by id, retrieved at most once per event (the client caches across events)."""

    def __init__(self, reads: StripeReads | None) -> None:
        self._reads = reads
        self._seen: dict[str, dict[str, Any]] = {}

    @property
    def available(self) -> bool:
        return self._reads is not None

    def get(self, price_id: str, why: str) -> dict[str, Any]:
        if self._reads is None:
            raise _Reject(f"price {price_id}: {why} needs the Stripe API (set STRIPE_API_KEY), then replay")
        if price_id not in self._seen:
            self._seen[price_id] = self._reads.retrieve_price(price_id)
        return self._seen[price_id]


def _unit_amount(
    line: dict[str, Any], price: dict[str, Any] | None, price_id: str, prices: _Prices
) -> Decimal:
    """The price's unit amount: the line's ``pricing.unit_amount_decimal``, an embedded price's
    ``unit_amount``, else the price retrieved through the Stripe API."""
    for candidate in (
        (line.get("pricing") or {}).get("unit_amount_decimal"),
        (price or {}).get("unit_amount_decimal"),
        (price or {}).get("unit_amount"),
    ):
        if candidate is not None:
            return Decimal(str(candidate))
    retrieved = prices.get(price_id, "the unit amount of a proration")
    value = retrieved.get("unit_amount_decimal", retrieved.get("unit_amount"))
    if value is None:
        raise _Reject(f"price {price_id} has no unit amount (tiered prices cannot be prorated into credits)")
    return Decimal(str(value))


def _interval(
    line: dict[str, Any], price: dict[str, Any] | None, price_id: str, prices: _Prices
) -> tuple[str, int | None]:
    """The billing interval of the line's price: ``recurring.interval`` and ``interval_count``."""
    for recurring in ((price or {}).get("recurring"), line.get("plan")):
        if isinstance(recurring, dict) and recurring.get("interval"):
            interval, count = recurring.get("interval"), recurring.get("interval_count")
            if subs.interval_months(interval, count) is not None:
                return str(interval), count
    retrieved = prices.get(price_id, "the billing interval of a proration")
    recurring = retrieved.get("recurring") or {}
    interval, count = recurring.get("interval"), recurring.get("interval_count")
    if subs.interval_months(interval, count) is None:
        raise _Reject(f"price {price_id} is not a recurring price: it cannot be prorated into credits")
    return str(interval), count


@dataclass(frozen=True)
class _PlanLine:
    lines: tuple[GrantLine, ...]
    facts: tuple[SubscriptionFact, ...]


def _plan_line(
    line: dict[str, Any],
    plan: Plan,
    price: dict[str, Any] | None,
    price_id: str,
    account: str,
    invoice: dict[str, Any],
    prices: _Prices,
) -> _PlanLine:
    """A plan price's line: a paid period (one grant per month), or a proration (granted or revoked in the
    proportion of money)."""
    amount, quantity = int(line.get("amount") or 0), _quantity(line)
    if quantity <= 0 or amount == 0:
        return _PlanLine((), ())
    details = _subscription_details(line)
    item = _id(details.get("subscription_item")) or _id(line.get("subscription_item")) or line["id"]
    subscription = (
        _id(details.get("subscription"))
        or _id(line.get("subscription"))
        or _id(((invoice.get("parent") or {}).get("subscription_details") or {}).get("subscription"))
        or _id(invoice.get("subscription"))
    )
    start, end = _period(line)
    slots = subs.months_of(start, end)
    if not slots:
        raise _Reject(f"line {line['id']}: period ends before it starts")
    pool = subs.pool_key(item, end)
    links: tuple[SubscriptionFact, ...] = (PoolLink(subscription, account, pool),) if subscription else ()
    if _is_proration(line):
        interval, count = _interval(line, price, price_id, prices)
        credits = subs.proration_credits(
            amount,
            _unit_amount(line, price, price_id, prices),
            quantity,
            plan.credits,
            subs.interval_months(interval, count) or 0,
            subs.time_shares(start, end, interval, count),
        )
        if credits <= 0:
            return _PlanLine((), ())
        if amount < 0:
            return _PlanLine(
                (), (*links, PoolRevocation(pool, account, subscription, line["id"], credits, plan.name))
            )
        shares = subs.split_evenly(credits, len(slots))
        keys = [subs.proration_key(line["id"], slot.index) for slot in slots]
    else:
        if amount < 0:
            return _PlanLine((), ())  # a negative line that is not a proration is not a plan period
        shares = [plan.credits * quantity] * len(slots)
        keys = [subs.month_key(item, start, slot.index) for slot in slots]
    grant_lines = []
    facts: list[SubscriptionFact] = list(links)
    for slot, credits, key in zip(slots, shares, keys, strict=True):
        if credits <= 0:
            continue
        grant_id = subs.grant_id_for(key, slot.start)
        grant_lines.append(
            GrantLine(
                f"{line['id']}:m{slot.index}",
                credits,
                plan.category,
                plan.priority,
                effective_at=slot.start,
                expires_at=slot.end,
                entry_key=key,
                grant_id=grant_id,
                plan=plan.name,
                subscription=subscription,
            )
        )
        facts.append(
            PoolGrantFact(
                pool, account, subscription, PoolGrant(grant_id, credits, slot.start, slot.end, plan.name)
            )
        )
    return _PlanLine(_with_cost(grant_lines, _line_cost(line), invoice.get("currency")), tuple(facts))


def _line_cost(line: dict[str, Any]) -> int:
    """What a line's buyer paid for it before tax, in minor units: its ``amount`` (before discounts) less
    the discounts applied to it (``pretax_credit_amounts`` of type discount on current API versions, which
    also lists credit-balance amounts that are still money paid; ``discount_amounts`` on older ones) and less
    any tax included in the price (``taxes`` with ``tax_behavior`` inclusive; ``tax_amounts`` with
    ``inclusive`` on older versions). Never below zero."""
    cost = int(line.get("amount") or 0)
    pretax = line.get("pretax_credit_amounts")
    if isinstance(pretax, list):
        cost -= sum(int(c.get("amount") or 0) for c in pretax if c.get("type") == "discount")
    else:
        cost -= sum(int(d.get("amount") or 0) for d in line.get("discount_amounts") or [])
    taxes = line.get("taxes")
    if isinstance(taxes, list):
        cost -= sum(int(t.get("amount") or 0) for t in taxes if t.get("tax_behavior") == "inclusive")
    else:
        cost -= sum(int(t.get("amount") or 0) for t in line.get("tax_amounts") or [] if t.get("inclusive"))
    return max(cost, 0)


def _invoice_lines(obj: dict[str, Any], reads: StripeReads | None) -> list[dict[str, Any]]:
    lines = obj.get("lines") or {}
    if not lines.get("has_more"):
        return list(lines.get("data") or [])
    if reads is None:
        raise _Reject(
            f"invoice {obj['id']} has more lines than the event carries (lines.has_more): listing them needs "
            "the Stripe API (set STRIPE_API_KEY), then replay"
        )
    return reads.list_invoice_lines(obj["id"])


def _invoice(
    event: dict[str, Any], obj: dict[str, Any], pricing: Pricing, reads: StripeReads | None
) -> Interpretation:
    facts: list[tuple[str, Fact]] = []
    intent = _id(obj.get("payment_intent"))
    for payment in (obj.get("payments") or {}).get("data") or []:
        intent = intent or _id((payment.get("payment") or {}).get("payment_intent"))
    if intent:
        facts += [(obj["id"], Link(obj["id"], intent)), (intent, Link(obj["id"], intent))]
    prices = _Prices(reads)
    grant_lines: list[GrantLine] = []
    subscription_facts: list[SubscriptionFact] = []
    for line in _invoice_lines(obj, reads):
        price_id, price = _line_price(line)
        quantity, amount = _quantity(line), int(line.get("amount") or 0)
        plan = pricing.plan_for_price(price_id) if price_id else None
        if plan is not None:
            planned = _plan_line(line, plan, price, price_id or "", _invoice_account(obj), obj, prices)
            grant_lines += planned.lines
            subscription_facts += planned.facts
            continue
        if quantity <= 0 or amount <= 0 or _is_proration(line):
            continue  # buys nothing: a zero quantity or amount, a credit, or a proration of a non-plan price
        line_metadata = line.get("metadata") or {}
        pack = pricing.pack_for_price(price_id) if price_id else None
        if pack is not None:
            lines = _pack_lines(pack, quantity, line["id"], None)
        elif line_metadata.get("credits"):
            lines = [GrantLine(line["id"], _amount(line_metadata["credits"], "credits"))]
        else:
            price_metadata = (price or {}).get("metadata")
            if price_metadata is None and price_id and prices.available:
                price_metadata = prices.get(price_id, "the price's metadata").get("metadata")
            if not (price_metadata or {}).get("credits"):
                continue
            lines = [GrantLine(line["id"], _amount(price_metadata["credits"], "credits") * quantity)]  # type: ignore[index]
        grant_lines += _with_cost(lines, _line_cost(line), obj.get("currency"))
    if grant_lines:
        purchase = Purchase(
            _invoice_account(obj),
            tuple(grant_lines),
            _paid_at(event),
            "stripe_invoice",
            obj["id"],
            charged=int(obj.get("amount_paid") or 0),
        )
        facts.append((obj["id"], purchase))
    if facts or subscription_facts:
        return Facts(tuple(facts), tuple(subscription_facts))
    return Ignored("invoice without credit lines")


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


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _subscription(event: dict[str, Any], obj: dict[str, Any], pricing: Pricing) -> Interpretation:
    """``customer.subscription.*``: the subscription view, its trial and its end (a cancellation)."""
    plan: Plan | None = None
    item: dict[str, Any] = {}
    for candidate in (obj.get("items") or {}).get("data") or []:
        price_id = _id(candidate.get("price")) or _id(candidate.get("plan"))
        plan = pricing.plan_for_price(price_id) if price_id else None
        if plan is not None:
            item = candidate
            break
    if plan is None:
        return Ignored("subscription without a plan price")
    quantity = _quantity(item)
    status = str(obj.get("status") or "")
    ended = event.get("type") == "customer.subscription.deleted" or status in (
        "canceled",
        "incomplete_expired",
    )
    ended_at = _ts(obj.get("ended_at")) or _ts(obj.get("canceled_at")) or _paid_at(event) if ended else None
    trial = None
    trial_start, trial_end = _ts(obj.get("trial_start")), _ts(obj.get("trial_end"))
    if plan.trial_credits > 0 and quantity > 0 and trial_end is not None and status == "trialing":
        start = trial_start or _paid_at(event)
        if trial_end > start:
            trial = Trial(start, trial_end, plan.trial_credits * quantity)
    snapshot = SubscriptionSnapshot(
        subscription=obj["id"],
        account_id=_account(obj),
        as_of=_paid_at(event),
        status=status,
        plan=plan.name,
        subscription_item=_id(item.get("id")),
        quantity=quantity,
        period_start=_ts(item.get("current_period_start") or obj.get("current_period_start")),
        period_end=_ts(item.get("current_period_end") or obj.get("current_period_end")),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        ended_at=ended_at,
        on_cancel=plan.on_cancel,
        trial=trial,
    )
    return Facts((), (snapshot,))


def _foreign(event: dict[str, Any], mode: str) -> str | None:
    """Why an event is not this deployment's business: the other Stripe mode, or a connected account."""
    if event.get("account"):
        return f"event of connected account {event['account']}"
    if bool(event.get("livemode")) != (mode == "live"):
        return f"{'live' if event.get('livemode') else 'test'} mode event; this deployment is {mode} mode"
    return None


PAYMENT_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "payment_intent.succeeded",
        "invoice.paid",
    }
)


@dataclass(frozen=True)
class CustomerLink:
    """A Stripe customer paid for an account that is not that customer (``metadata.credits_customer``)."""

    account_id: str
    customer: str
    paid_at: datetime


def customer_link(event: dict[str, Any]) -> CustomerLink | None:
    """Who to bill for the account a payment event names: overage and top-ups go to the Stripe customer."""
    if event.get("type") not in PAYMENT_EVENTS:
        return None
    obj = (event.get("data") or {}).get("object") or {}
    account = (obj.get("metadata") or {}).get("credits_customer")
    customer = _id(obj.get("customer"))
    if (
        not account
        or not is_account_id(str(account))
        or not customer
        or not is_stripe_customer_id(customer)
        or is_stripe_customer_id(str(account))
    ):
        return None  # an account that is a Stripe customer is billed as itself
    return CustomerLink(str(account), customer, _paid_at(event))


def interpret(
    event: dict[str, Any], pricing: Pricing, reads: StripeReads | None = None, mode: str = "test"
) -> Interpretation:
    """What a verified Stripe event means for the ledger."""
    event_type = event.get("type", "")
    foreign = _foreign(event, mode)
    if foreign is not None:
        return Ignored(foreign)
    obj = (event.get("data") or {}).get("object") or {}
    try:
        if event_type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return _checkout(event, obj, pricing)
        if event_type == "payment_intent.succeeded":
            return _payment_intent(event, obj, pricing)
        if event_type == "invoice.paid":
            return _invoice(event, obj, pricing, reads)
        if event_type == "invoice_payment.paid":
            return _invoice_payment(obj)
        if event_type == "charge.refunded":
            return _refund(obj)
        if event_type in ("charge.dispute.created", "charge.dispute.closed"):
            return _dispute(event_type, obj)
        if event_type.startswith("customer.subscription."):
            return _subscription(event, obj, pricing)
    except _Reject as exc:
        return Unprocessable(exc.reason)
    except StripeReadFailed as exc:
        return Unprocessable(str(exc))
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        return Unprocessable(f"malformed {event_type} object: {exc.__class__.__name__} {exc}")
    return Ignored(f"event type {event_type} does not change credits")
