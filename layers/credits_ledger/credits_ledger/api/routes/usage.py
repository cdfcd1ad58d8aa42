"""Usage reported by client apps: ``POST /v1/usage`` and ``POST /v1/usage/batch``."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response

from credits_ledger.api.deps import caller, ledger, new_router, replayable
from credits_ledger.api.openapi import REPLAY, responses
from credits_ledger.api_models import UsageBatchRequest, UsageBatchResponse, UsageRequest, UsageResponse
from credits_ledger.auth import Scope
from credits_ledger.usage import answer, record_batch, record_usage

router = new_router()


@router.post(
    "/v1/usage",
    summary="Report usage: debit it now",
    tags=["usage"],
    responses=responses(201, "debited" + REPLAY, UsageResponse, 402, 409),
)
def post_usage(body: UsageRequest) -> Response[UsageResponse]:
    caller().require(Scope.USAGE_WRITE, body.customer)
    outcome = record_usage(ledger(), body)
    return replayable(answer(outcome.entry), outcome.replayed)


@router.post(
    "/v1/usage/batch",
    summary="Report up to 100 usage events",
    tags=["usage"],
    responses=responses(200, "one result per event, in input order", UsageBatchResponse),
)
def post_usage_batch(body: UsageBatchRequest) -> UsageBatchResponse:
    principal = caller()
    principal.require(Scope.USAGE_WRITE)
    results = record_batch(
        ledger(), body.events, lambda customer: principal.require(Scope.USAGE_WRITE, customer)
    )
    return UsageBatchResponse(results=results)
