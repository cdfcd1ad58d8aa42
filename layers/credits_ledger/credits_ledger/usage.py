"""Usage reported by client apps, turned into ledger debits: meter pricing -> DebitRequest, the request
fingerprint for idempotency, and the usage answer rebuilt from the ledger entry (so a replay says exactly
what the first answer said).

The entry key is (customer, id) (``idempotency.usage_key``): usage ids are scoped to the account, so the same
id sent for another customer is another event, never an idempotency mismatch. Entry metadata keeps meter, quantity, the usage timestamp and (the
Ledger adds it) ``available_after``, which is everything the answer needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from credits_ledger.api.errors import error_body, field_name, message_of
from credits_ledger.api_models import (
    AllocationView,
    ErrorBody,
    ErrorDetail,
    UsageBatchResult,
    UsageRequest,
    UsageResponse,
)
from credits_ledger.auth import Forbidden
from credits_ledger.domain import idempotency
from credits_ledger.domain.errors import ConcurrencyConflict, InvalidField, WriteRejected
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.domain.money import format_amount, round_up
from credits_ledger.domain.overage import OVERAGE_METADATA_KEY
from credits_ledger.domain.times import iso
from credits_ledger.ledger import DebitRequest, DebitResult, Ledger, Outcome
from credits_ledger.observability import logger
from credits_ledger.pricing import Pricing, load_pricing


class InvalidUsage(InvalidField):
    """A usage event the pricing cannot price (unknown meter)."""


def entry_key(event: UsageRequest) -> str:
    return idempotency.usage_key(event.customer, event.id)


def fingerprint(event: UsageRequest) -> str:
    """The canonical validated request's fingerprint: equal requests, however spelled, share it."""
    canonical: dict[str, Any] = {
        "customer": event.customer,
        "meter": event.meter,
        "quantity": format_amount(event.quantity),
        "metadata": sorted((event.metadata or {}).items()),
    }
    if event.timestamp is not None:
        canonical["timestamp"] = iso(event.timestamp)
    return idempotency.fingerprint(canonical)


def debit_request(event: UsageRequest, pricing: Pricing) -> DebitRequest:
    meter = pricing.meters.get(event.meter)
    if meter is None:
        known = ", ".join(sorted(pricing.meters)) or "none"
        raise InvalidUsage("meter", f"unknown meter {event.meter!r} (known: {known})")
    metadata = dict(event.metadata or {})
    metadata.update(meter=event.meter, quantity=format_amount(event.quantity))
    if event.timestamp is not None:
        metadata["timestamp"] = iso(event.timestamp)
    return DebitRequest(
        key=entry_key(event),
        amount=round_up(event.quantity * meter.credits_per_unit),
        fingerprint=fingerprint(event),
        reference=event.id,
        metadata=metadata,
        allow_overage=True,
    )


def usage_id_of(entry: LedgerEntry) -> str:
    """Usage entries carry the client's id as their reference (the key also names the customer)."""
    return entry.reference or ""


def answer(entry: LedgerEntry) -> UsageResponse:
    """The usage answer, from the ledger entry alone (first answer and replays alike). With overage, ``credits``
    is still the whole priced amount: what the allocations took plus the overage."""
    overage = entry.metadata.get(OVERAGE_METADATA_KEY)
    credits = -entry.amount + (Decimal(overage) if overage else 0)
    return UsageResponse(
        id=usage_id_of(entry),
        customer=entry.account_id,
        meter=entry.metadata.get("meter", ""),
        quantity=entry.metadata.get("quantity", ""),
        credits=format_amount(credits),
        balance=entry.metadata.get("available_after", ""),
        allocations=[
            AllocationView(grant_id=a.grant_id, amount=format_amount(a.amount)) for a in entry.allocations
        ],
        overage=overage,
    )


def record_usage(ledger: Ledger, event: UsageRequest, pricing: Pricing | None = None) -> Outcome:
    """Debit one usage event now; raises InsufficientCredits / IdempotencyMismatch / InvalidUsage."""
    return ledger.debit(event.customer, debit_request(event, pricing or load_pricing()))


# ---- batches ---------------------------------------------------------------------------------------------
def validation_details(exc: ValidationError) -> list[ErrorDetail]:
    """Each failed field by its dotted location, with pydantic's message (no input echoed)."""
    return [
        ErrorDetail(field=field_name(error["loc"]), message=message_of(error))
        for error in exc.errors(include_url=False, include_input=False)
    ]


@dataclass(frozen=True)
class _Judged:
    index: int
    usage_id: str | None
    event: UsageRequest | None = None
    request: DebitRequest | None = None
    error: ErrorBody | None = None


def _judge(index: int, raw: Any, authorize: Callable[[str], None], pricing: Pricing) -> _Judged:
    usage_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    try:
        event = UsageRequest.model_validate(raw)
        authorize(event.customer)
        return _Judged(index, usage_id, event, debit_request(event, pricing))
    except ValidationError as exc:
        details = validation_details(exc)
        return _Judged(
            index,
            usage_id,
            error=ErrorBody(code="invalid_request", message="the event is invalid", details=details),
        )
    except (Forbidden, InvalidUsage) as exc:
        return _Judged(index, usage_id, error=error_body(exc))


def _result(judged: _Judged, outcome: DebitResult | None) -> UsageBatchResult:
    if judged.error is not None:
        return UsageBatchResult(id=judged.usage_id, status="rejected", error=judged.error)
    assert outcome is not None
    if outcome.error is not None:
        return UsageBatchResult(id=judged.usage_id, status="rejected", error=error_body(outcome.error))
    assert outcome.outcome is not None
    return UsageBatchResult(id=judged.usage_id, status="replayed" if outcome.outcome.replayed else "debited")


def record_batch(
    ledger: Ledger,
    raw_events: Sequence[Any],
    authorize: Callable[[str], None],
    pricing: Pricing | None = None,
) -> list[UsageBatchResult]:
    """Judge each event alone; debit the valid ones with one ``debit_many`` per customer (the account's items
    are written once per chunk of 40), and report results in input order."""
    prices = pricing or load_pricing()
    judged = [_judge(i, raw, authorize, prices) for i, raw in enumerate(raw_events)]
    by_customer: dict[str, list[_Judged]] = {}
    for item in judged:
        if item.event is not None:
            by_customer.setdefault(item.event.customer, []).append(item)
    outcomes: dict[int, DebitResult] = {}
    for customer, items in by_customer.items():
        requests = [item.request for item in items if item.request is not None]
        try:
            results = ledger.debit_many(customer, requests)
        except ConcurrencyConflict as exc:
            results = [DebitResult(request, error=exc) for request in requests]
        for result in results:
            if isinstance(result.error, WriteRejected):
                # failure=write_rejected feeds the WriteRejected metric filter and alarm (template.yaml)
                logger.error(
                    "write rejected by DynamoDB; not retried",
                    failure="write_rejected",
                    customer=customer,
                    usage_key=result.request.key,
                    error=str(result.error),
                )
        for item, result in zip(items, results, strict=True):
            outcomes[item.index] = result
    return [_result(item, outcomes.get(item.index)) for item in judged]
