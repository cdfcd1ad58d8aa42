"""HTTP API of the credits ledger (docs/api.md) behind API Gateway HTTP API (payload v2).

This module only assembles the resolver: the route modules (``credits_ledger.api.routes``, one Router per
area; a new area adds its router to ``ROUTERS`` there), the one error catalogue
(``credits_ledger.api.errors``) and the entry point. Every response carries ``X-Request-Id`` (API Gateway's
request id), which is also the log correlation id.
"""

from __future__ import annotations

import json
import uuid
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger import environment, retry
from credits_ledger.api import errors
from credits_ledger.api.deps import caller, json_bodies_only, parse_json_body
from credits_ledger.api.openapi import openapi_spec as _openapi_spec
from credits_ledger.api.routes import ROUTERS
from credits_ledger.observability import logger, tracer

# Inside Lambda a missing or malformed setting fails the init phase (credits_ledger/environment.py).
environment.at_start_up(environment.ApiEnvironment)

app = APIGatewayHttpResolver(
    enable_validation=True,
    json_body_deserializer=parse_json_body,
    response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR,
)
for router in ROUTERS:
    app.include_router(router)


def request_id() -> str:
    return str(app.context.get("request_id") or "")


errors.register(app, authenticate=caller, request_id=request_id)


def openapi_spec() -> str:
    """The OpenAPI document of this resolver (committed as docs/openapi.json)."""
    return _openapi_spec(app)


def _request_id(event: dict[str, Any]) -> str:
    context = event.get("requestContext") if isinstance(event, dict) else None
    found = context.get("requestId") if isinstance(context, dict) else None
    return found if isinstance(found, str) and found else str(uuid.uuid4())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
# The response stays out of the trace: a new API key's answer carries the key, shown to its caller only.
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rid = _request_id(event)
    logger.set_correlation_id(rid)
    app.append_context(request_id=rid)
    try:
        # a debit that keeps losing races answers 429 before Lambda's Timeout would cut it off
        with retry.answering_by(context):
            response = app.resolve(json_bodies_only(event), context)
    except Exception:  # an error inside an error handler: still the contract's 500
        logger.exception("unhandled error while handling an error", extra={"request_id": rid})
        body = {"error": {"code": "internal", "message": f"internal error; request id {rid}"}}
        response = {
            "statusCode": 500,
            "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": json.dumps(body),
            "isBase64Encoded": False,
        }
    response["statusCode"] = int(response["statusCode"])
    headers = response.setdefault("headers", {})
    headers["X-Request-Id"] = rid
    headers.setdefault("Cache-Control", "no-store")
    return response
