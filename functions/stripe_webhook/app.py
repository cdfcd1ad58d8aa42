"""POST /v1/webhooks/stripe: verify the signature on the raw body, then let the ledger apply the event.

2xx for every verified event (ignored types and events we cannot act on included, those are recorded);
400 for a bad signature (or a body that is not what it says it is); 5xx when processing failed so that Stripe
retries.

The function serves one route that API Gateway alone routes to it, and needs the raw body, so it reads the
HTTP API (payload 2.0) event itself instead of through Powertools' event resolver: the resolver and the
event classes it loads were a tenth of the function's cold start (docs/decisions.md, "Cold start").
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from functools import cache
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger import environment, retry
from credits_ledger.bus import BusEvent, Publisher, default_bus
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.dal.topups import TopupRepository
from credits_ledger.ledger import Ledger
from credits_ledger.observability import logger, metrics, tracer
from credits_ledger.pricing import load_pricing
from credits_ledger.stripe_api import webhook_reads
from credits_ledger.stripe_signature import InvalidSignature, verified_event, webhook_secrets
from credits_ledger.topups import settle_from_event
from credits_ledger.webhooks import StripeWebhookProcessor

# Inside Lambda a missing or malformed setting fails the init phase (credits_ledger/environment.py).
environment.at_start_up(environment.WebhookEnvironment)


@cache
def topups() -> TopupRepository:
    return TopupRepository()


@cache
def bus() -> Publisher:
    return default_bus()


class TopupEvents:
    """The bus, made only when a top-up settles (most webhooks publish nothing)."""

    def publish(self, events: Sequence[BusEvent]) -> None:
        bus().publish(events)


@cache
def processor() -> StripeWebhookProcessor:
    # STRIPE_MODE (template parameter StripeMode): events of the other mode are acknowledged and ignored.
    mode = os.environ.get("STRIPE_MODE", "test")
    return StripeWebhookProcessor(
        Ledger(AccountRepository()),
        PaymentRepository(),
        load_pricing(),
        stripe_reads=webhook_reads(),  # only when STRIPE_API_KEY(_PARAMETER) is set
        mode=mode,
    )


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    """A request header by its name in any case (API Gateway lowercases them; a local caller may not)."""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


def _raw_body(event: Mapping[str, Any]) -> str:
    """The body as Stripe signed it: decoded when API Gateway passed it base64-encoded."""
    body = event.get("body") or ""
    if not isinstance(body, str):
        raise InvalidSignature("the request body is not text")
    if not event.get("isBase64Encoded"):
        return body
    try:
        return base64.b64decode(body, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidSignature("the request body is not base64-encoded UTF-8") from exc


def _request_id(event: Mapping[str, Any]) -> str:
    context = event.get("requestContext")
    found = context.get("requestId") if isinstance(context, Mapping) else None
    return found if isinstance(found, str) else ""


def _answer(status: HTTPStatus, body: dict[str, object], request_id: str) -> dict[str, Any]:
    return {
        "statusCode": int(status),
        "headers": {"Content-Type": "application/json", "X-Request-Id": request_id},
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def handle_delivery(event: Mapping[str, Any]) -> tuple[HTTPStatus, dict[str, object]]:
    """Verify one delivery and apply its event: (status, JSON body). A bad signature is InvalidSignature."""
    payload = _raw_body(event)
    headers = event.get("headers")
    signature = _header(headers, "stripe-signature") if isinstance(headers, Mapping) else None
    stripe_event = verified_event(payload, signature, webhook_secrets())
    logger.append_keys(stripe_event_id=stripe_event["id"], stripe_event_type=stripe_event.get("type"))
    result = processor().process(stripe_event, payload)
    if result.status != "failed":  # an automatic top-up's PaymentIntent settles its attempt (topups.py)
        settle_from_event(stripe_event, topups(), TopupEvents(), mode=os.environ.get("STRIPE_MODE", "test"))
    metrics.add_metric(name=f"StripeEvent_{result.status}", unit=MetricUnit.Count, value=1)
    if result.status == "failed":
        logger.error(
            "Stripe event recorded as failed; replay it after fixing the cause", reason=result.reason
        )
    return HTTPStatus.OK, {"received": True, "status": result.status}


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    request_id = _request_id(event) if isinstance(event, Mapping) else ""
    try:
        # a write that keeps losing races fails (5xx: Stripe sends it again) before Lambda's Timeout cuts it off
        with retry.answering_by(context):
            status, body = handle_delivery(event if isinstance(event, Mapping) else {})
    except InvalidSignature as exc:
        logger.warning("rejected Stripe webhook", reason=str(exc))  # never log the body
        status, body = HTTPStatus.BAD_REQUEST, {"error": {"code": "invalid_request", "message": str(exc)}}
    except Exception:
        logger.exception("Stripe event processing failed; Stripe will retry")
        metrics.add_metric(name="StripeEventProcessingErrors", unit=MetricUnit.Count, value=1)
        message = "processing failed; retry later"
        status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": {"code": "internal", "message": message}}
    return _answer(status, body, request_id)
