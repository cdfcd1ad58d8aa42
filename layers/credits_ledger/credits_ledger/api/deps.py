"""What every route needs: the request body parser, the ledger and key service (created on first use, reused
while the Lambda instance lives), the verified caller, and the response that is the answer or its replay."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from credits_ledger.api.errors import MAX_BODY_BYTES, BodyNotAnObject, PayloadTooLarge
from credits_ledger.api_keys import KeyService
from credits_ledger.auth import Principal, bearer_token
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.api_keys import ApiKeyRepository
from credits_ledger.ledger import Ledger

if TYPE_CHECKING:
    from credits_ledger.reservations import Reservations


def parse_json_body(body: str) -> Any:
    """JSON numbers become Decimal (never float); anything unparsable is a JSONDecodeError (400), and a body
    that is not a JSON object is BodyNotAnObject (400)."""
    if len(body.encode("utf-8", errors="surrogatepass")) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    try:
        parsed = json.loads(body, parse_float=Decimal)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits, deep nesting
        raise json.JSONDecodeError("unparsable JSON", body, 0) from exc
    if not isinstance(parsed, dict):
        # Powertools would otherwise let an optional body that is an array or a scalar through as absent.
        raise BodyNotAnObject()
    return parsed


def new_router() -> APIGatewayHttpRouter:
    """A Router for one area's routes (``credits_ledger.api.routes``); typed, unlike Powertools' constructor."""
    return APIGatewayHttpRouter()  # type: ignore[no-untyped-call]


@cache
def ledger() -> Ledger:
    return Ledger(AccountRepository())


@cache
def key_service() -> KeyService:
    return KeyService(ApiKeyRepository())


@cache
def reservations() -> Reservations:
    # loaded with the first reservation request: most instances only debit and read (docs/decisions.md)
    from credits_ledger.reservations import Reservations

    return Reservations.over(AccountRepository())


def reset() -> None:
    """Forget the cached dependencies (tests bind them to fresh tables and settings)."""
    ledger.cache_clear()
    key_service.cache_clear()
    reservations.cache_clear()


def caller() -> Principal:
    """The verified API key of the current request; Unauthorized (401) otherwise."""
    headers = BaseRouter.current_event.headers
    return key_service().verify(bearer_token(headers.get("authorization")))


def replayable(body: Any, replayed: bool, first: HTTPStatus = HTTPStatus.CREATED) -> Response[Any]:
    """``first`` (201 unless said) with the answer, or 200 with the first answer and
    ``Idempotent-Replayed: true``."""
    if replayed:
        return Response(HTTPStatus.OK, content_types.APPLICATION_JSON, body, {"Idempotent-Replayed": "true"})
    return Response(first, content_types.APPLICATION_JSON, body)


def json_bodies_only(event: Any) -> Any:
    """The API reads JSON only. Powertools would parse form bodies itself (a multipart type without a boundary
    even fails with a 500), so any other declared Content-Type is handed to it as one it refuses, which the
    error catalogue answers 415. A media type is case-insensitive (``Application/JSON`` is JSON), Powertools'
    check is not: JSON's is handed on in lower case, its parameters (a charset) kept."""
    headers = event.get("headers") if isinstance(event, dict) else None
    if not isinstance(headers, dict):
        return event
    for name, value in headers.items():
        if name.lower() == "content-type" and isinstance(value, str) and value.strip():
            media, separator, parameters = value.partition(";")
            if media.strip().lower() == content_types.APPLICATION_JSON:
                headers[name] = content_types.APPLICATION_JSON + separator + parameters
            else:
                headers[name] = "application/x-unsupported"
    return event
