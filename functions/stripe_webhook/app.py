"""POST /v1/webhooks/stripe: verify the signature on the raw body, then let the ledger apply the event.

2xx for every verified event (ignored types and events we cannot act on included, those are recorded);
400 for a bad signature; 5xx when processing failed so that Stripe retries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from http import HTTPStatus

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
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

app = APIGatewayHttpResolver()


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


def _json(status: HTTPStatus, body: dict[str, object]) -> Response:
    request_id = app.current_event.request_context.request_id
    return Response(status, content_types.APPLICATION_JSON, body, headers={"X-Request-Id": request_id})


@app.post("/v1/webhooks/stripe")
def stripe_webhook() -> Response:
    payload = app.current_event.decoded_body or ""
    event = verified_event(payload, app.current_event.headers.get("stripe-signature"), webhook_secrets())
    logger.append_keys(stripe_event_id=event["id"], stripe_event_type=event.get("type"))
    result = processor().process(event, payload)
    if result.status != "failed":  # an automatic top-up's PaymentIntent settles its attempt (topups.py)
        settle_from_event(event, topups(), TopupEvents(), mode=os.environ.get("STRIPE_MODE", "test"))
    metrics.add_metric(name=f"StripeEvent_{result.status}", unit=MetricUnit.Count, value=1)
    if result.status == "failed":
        logger.error(
            "Stripe event recorded as failed; replay it after fixing the cause", reason=result.reason
        )
    return _json(HTTPStatus.OK, {"received": True, "status": result.status})


@app.exception_handler(InvalidSignature)
def invalid_signature(exc: InvalidSignature) -> Response:
    logger.warning("rejected Stripe webhook", reason=str(exc))  # never log the body
    return _json(HTTPStatus.BAD_REQUEST, {"error": {"code": "invalid_request", "message": str(exc)}})


@app.exception_handler(Exception)
def processing_failed(exc: Exception) -> Response:
    logger.exception("Stripe event processing failed; Stripe will retry")
    metrics.add_metric(name="StripeEventProcessingErrors", unit=MetricUnit.Count, value=1)
    message = "processing failed; retry later"
    return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": {"code": "internal", "message": message}})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    # a write that keeps losing races fails (5xx: Stripe sends it again) before Lambda's Timeout cuts it off
    with retry.answering_by(context):
        return app.resolve(event, context)
