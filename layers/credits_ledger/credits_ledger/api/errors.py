"""The one error catalogue of the HTTP API: every named error -> status, code and message, in one table.

Routes raise domain errors and never build error responses; ``register`` installs one exception handler per
catalogue row on the resolver, and usage batches report the very same code and message per event
(``error_body``). A new domain error gets its HTTP meaning by a row here (or by subclassing a class that has
one: ``NotFound`` -> 404, ``InvalidField`` -> 422 naming the field).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)

from credits_ledger.api_models import ErrorBody, ErrorDetail, ErrorResponse
from credits_ledger.auth import Forbidden, Unauthorized
from credits_ledger.domain.errors import (
    ConcurrencyConflict,
    IdempotencyMismatch,
    InsufficientCredits,
    InvalidCursor,
    InvalidField,
    NotFound,
    WriteRejected,
)
from credits_ledger.domain.overage import OverageLimitReached
from credits_ledger.observability import logger

MAX_BODY_BYTES = 256 * 1024


class PayloadTooLarge(Exception):
    """The request body is larger than ``MAX_BODY_BYTES`` (HTTP 413)."""


class BodyNotAnObject(Exception):
    """The request body is JSON but not an object: every body of this API is one (HTTP 400)."""


@dataclass(frozen=True)
class HttpError:
    """What one named error becomes on the wire."""

    status: int
    code: str
    message: Callable[[Any], str]
    details: Callable[[Any], list[ErrorDetail] | None] = lambda _exc: None
    headers: dict[str, str] = field(default_factory=dict)


def _fixed(text: str) -> Callable[[Any], str]:
    return lambda _exc: text


def _field_details(exc: InvalidField) -> list[ErrorDetail]:
    return [ErrorDetail(field=exc.field, message=exc.message)]


_CURSOR_MESSAGE = "is not a cursor this API returned for this list"

# Most specific first is not needed: lookup walks the raised class's MRO and takes the first row it finds.
CATALOGUE: dict[type[Exception], HttpError] = {
    Unauthorized: HttpError(
        401, "unauthorized", lambda exc: exc.message, headers={"WWW-Authenticate": "Bearer"}
    ),
    Forbidden: HttpError(403, "forbidden", lambda exc: exc.message),
    InsufficientCredits: HttpError(
        402, "insufficient_credits", _fixed("not enough credits available; nothing was debited")
    ),
    OverageLimitReached: HttpError(
        402,
        "insufficient_credits",
        _fixed("not enough credits available and this month's overage limit is reached; nothing was debited"),
    ),
    IdempotencyMismatch: HttpError(
        409, "idempotency_mismatch", _fixed("this id was already used with a different request")
    ),
    NotFound: HttpError(404, "not_found", lambda exc: f"no such {exc.what}"),
    NotFoundError: HttpError(404, "not_found", _fixed("no such route")),
    InvalidField: HttpError(
        422, "invalid_request", lambda exc: f"{exc.field}: {exc.message}", details=_field_details
    ),
    InvalidCursor: HttpError(
        400,
        "invalid_request",
        _fixed(f"cursor {_CURSOR_MESSAGE}"),
        details=lambda _exc: [ErrorDetail(field="cursor", message=_CURSOR_MESSAGE)],
    ),
    ConcurrencyConflict: HttpError(
        429,
        "rate_limited",
        _fixed("too many concurrent writes on this account; retry"),
        headers={"Retry-After": "1"},
    ),
    WriteRejected: HttpError(
        500,
        "internal",
        _fixed("the ledger could not store this write; retrying will not help (operators are alerted)"),
    ),
    BodyNotAnObject: HttpError(
        400,
        "invalid_request",
        _fixed("the body must be a JSON object"),
        details=lambda _exc: [ErrorDetail(field="body", message="must be a JSON object")],
    ),
    PayloadTooLarge: HttpError(
        413, "payload_too_large", _fixed(f"the body is larger than {MAX_BODY_BYTES // 1024} KB")
    ),
    RequestUnsupportedContentType: HttpError(
        415, "invalid_request", _fixed("Content-Type must be application/json")
    ),
}

# What each status means, for the OpenAPI document (api/openapi.py).
STATUS_DESCRIPTIONS = {
    400: "malformed request or cursor (invalid_request)",
    401: "missing, wrong or revoked API key (unauthorized)",
    402: "not enough credits; nothing was debited (insufficient_credits)",
    403: "the key lacks the scope or may not touch this account (forbidden)",
    404: "no such resource (not_found)",
    409: "this id was used before with another body (idempotency_mismatch)",
    413: "body larger than 256 KB (payload_too_large)",
    415: "Content-Type is not application/json (invalid_request)",
    422: "invalid field (invalid_request); details name each field",
    429: "too many concurrent writes on the account (rate_limited); retry after Retry-After seconds",
    500: "internal error; the message and X-Request-Id carry the request id (internal)",
}


def lookup(exc: BaseException) -> HttpError | None:
    for cls in type(exc).__mro__:
        found = CATALOGUE.get(cls)
        if found is not None:
            return found
    return None


def error_body(exc: BaseException) -> ErrorBody:
    """The catalogue's error object for ``exc`` (a batch result carries exactly what a single request would)."""
    entry = lookup(exc)
    if entry is None:
        return ErrorBody(code="invalid_request", message="the event was rejected")
    return ErrorBody(code=entry.code, message=entry.message(exc), details=entry.details(exc))


def error(
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details)).model_dump(mode="json")
    return Response(status, content_types.APPLICATION_JSON, body, headers)


def response_for(exc: BaseException) -> Response[Any]:
    entry = lookup(exc)
    assert entry is not None, f"{type(exc).__name__} has no catalogue row"
    if isinstance(exc, ConcurrencyConflict):
        logger.warning("concurrency conflict", extra={"error": str(exc)})
    if isinstance(exc, WriteRejected):
        # failure=write_rejected feeds the WriteRejected metric filter and alarm (template.yaml)
        logger.error(
            "write rejected by DynamoDB; not retried", extra={"failure": "write_rejected", "error": str(exc)}
        )
    body = error_body(exc)
    return error(entry.status, body.code, body.message, body.details, dict(entry.headers) or None)


def field_name(loc: Any) -> str:
    """A pydantic error location as a dotted field name, without the ``body``/``query``/... prefix."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(str(part) for part in parts) or "body"


def message_of(error: Any) -> str:
    message = str(error.get("msg", "is invalid"))
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def register(app: Any, authenticate: Callable[[], object], request_id: Callable[[], str]) -> None:
    """Install the catalogue on ``app``. ``authenticate`` raises Unauthorized for a request without a valid
    key: validation runs before the route, so callers without a key learn nothing more than 401."""

    for exc_class in CATALOGUE:
        app.exception_handler(exc_class)(response_for)

    def unauthenticated() -> Response[Any] | None:
        try:
            authenticate()
        except Unauthorized as denied:
            return response_for(denied)
        return None

    def bad_body(message: str) -> Response[Any]:
        return unauthenticated() or error(
            400, "invalid_request", f"the body {message}", [ErrorDetail(field="body", message=message)]
        )

    def undecodable(exc: ValueError) -> Response[Any]:
        # Raised by Powertools while decoding the body (base64, then UTF-8), before any route code runs.
        return bad_body("is not valid base64-encoded UTF-8")

    def invalid_request(exc: RequestValidationError) -> Response[Any]:
        denied = unauthenticated()
        if denied is not None:
            return denied
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return bad_body("is not valid JSON")
        details = [ErrorDetail(field=field_name(e.get("loc", ())), message=message_of(e)) for e in errors]
        # A cursor is opaque: one the API did not hand out is a bad request (400), not an invalid field (422).
        status = 400 if any(d.field == "cursor" for d in details) else 422
        summary = f"{details[0].field}: {details[0].message}" if details else "invalid"
        return error(status, "invalid_request", summary, details)

    def internal(exc: Exception) -> Response[Any]:
        logger.exception("unhandled error", extra={"request_id": request_id()})
        return internal_error(request_id())

    app.exception_handler([UnicodeDecodeError, binascii.Error])(undecodable)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.exception_handler([ResponseValidationError, Exception])(internal)


def internal_error(request_id: str) -> Response[Any]:
    return error(500, "internal", f"internal error; request id {request_id}")
