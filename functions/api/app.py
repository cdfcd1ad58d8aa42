"""HTTP API of the credits ledger (CONTRACT.md section 3) behind API Gateway HTTP API (payload v2).

Routes are thin: Powertools validates the request against the pydantic models, the route checks the API
key's scope, calls one domain function and maps the answer; domain errors become HTTP errors in the
exception handlers below. Every response carries ``X-Request-Id`` (API Gateway's request id), which is
also the log correlation id.
"""

from __future__ import annotations

import binascii
import json
import uuid
from decimal import Decimal
from functools import cache
from http import HTTPStatus
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger.admin import grant_credits, void_grant
from credits_ledger.api_models import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    ApiKeyCreated,
    ApiKeyRequest,
    BalanceView,
    Cursor,
    ErrorBody,
    ErrorDetail,
    ErrorResponse,
    GrantList,
    GrantRequest,
    GrantView,
    Health,
    TransactionList,
    TransactionView,
    UsageBatchRequest,
    UsageBatchResponse,
    UsageRequest,
    UsageResponse,
)
from credits_ledger.auth import (
    ApiKeyNotFound,
    Forbidden,
    Principal,
    Scope,
    Unauthorized,
    bearer_token,
    customers_from,
    scopes_from,
)
from credits_ledger.dal.accounts import AccountRepository, InvalidCursor
from credits_ledger.dal.api_keys import ApiKeyRepository
from credits_ledger.domain.errors import (
    ConcurrencyConflict,
    GrantNotFound,
    IdempotencyMismatch,
    InsufficientCredits,
    InvalidGrant,
)
from credits_ledger.domain.models import GrantStatus
from credits_ledger.keys import KeyService
from credits_ledger.ledger import Ledger
from credits_ledger.observability import logger, tracer
from credits_ledger.settings import InvalidSettings, get_settings, put_settings
from credits_ledger.usage import InvalidUsage, answer, field_name, message_of, record_batch, record_usage

MAX_BODY_BYTES = 256 * 1024
CustomerId = Annotated[str, Path(min_length=1, max_length=255, description="account id (Stripe customer id)")]
StatusFilter = Literal["all", "active", "pending", "held", "depleted", "expired", "voided"]


class PayloadTooLarge(Exception):
    pass


def parse_json_body(body: str) -> Any:
    """JSON numbers become Decimal (never float); anything unparsable is a JSONDecodeError (400)."""
    if len(body.encode("utf-8", errors="surrogatepass")) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    try:
        return json.loads(body, parse_float=Decimal)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits, deep nesting
        raise json.JSONDecodeError("unparsable JSON", body, 0) from exc


app = APIGatewayHttpResolver(
    enable_validation=True,
    json_body_deserializer=parse_json_body,
    response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR,
)

_ERROR_STATUSES = {
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
_COMMON_ERRORS = (400, 401, 403, 413, 415, 422, 429, 500)
REPLAY = " (200 with Idempotent-Replayed: true when the same id and body were sent before)"


def _responses(status: int, description: str, model: type[Any] | None, *errors: int) -> dict[int, Any]:
    """OpenAPI responses of a route: its success answer and every error it may give."""
    success: dict[str, Any] = {"description": description}
    if model is not None:
        success["content"] = {"application/json": {"model": model}}
    responses: dict[int, Any] = {status: success}
    for code in sorted({*_COMMON_ERRORS, *errors}):
        responses[code] = {
            "description": _ERROR_STATUSES[code],
            "content": {"application/json": {"model": ErrorResponse}},
        }
    return responses


# ---- dependencies, created on first use ------------------------------------------------------------------
@cache
def ledger() -> Ledger:
    return Ledger(AccountRepository())


@cache
def key_service() -> KeyService:
    return KeyService(ApiKeyRepository())


def caller() -> Principal:
    """The verified API key of this request; Unauthorized (401) otherwise."""
    return key_service().verify(bearer_token(app.current_event.headers.get("authorization")))


def _replayable(body: Any, replayed: bool) -> Response[Any]:
    if replayed:
        return Response(HTTPStatus.OK, content_types.APPLICATION_JSON, body, {"Idempotent-Replayed": "true"})
    return Response(HTTPStatus.CREATED, content_types.APPLICATION_JSON, body)


# ---- routes ----------------------------------------------------------------------------------------------
@app.get(
    "/health",
    summary="Liveness",
    tags=["health"],
    responses={200: {"description": "up", "content": {"application/json": {"model": Health}}}},
)
def health() -> Health:
    return Health()


@app.post(
    "/v1/usage",
    summary="Report usage: debit it now",
    tags=["usage"],
    responses=_responses(201, "debited" + REPLAY, UsageResponse, 402, 409),
)
def post_usage(body: UsageRequest) -> Response[UsageResponse]:
    caller().require(Scope.USAGE_WRITE, body.customer)
    outcome = record_usage(ledger(), body)
    return _replayable(answer(outcome.entry), outcome.replayed)


@app.post(
    "/v1/usage/batch",
    summary="Report up to 100 usage events",
    tags=["usage"],
    responses=_responses(200, "one result per event, in input order", UsageBatchResponse),
)
def post_usage_batch(body: UsageBatchRequest) -> UsageBatchResponse:
    principal = caller()
    principal.require(Scope.USAGE_WRITE)
    results = record_batch(
        ledger(), body.events, lambda customer: principal.require(Scope.USAGE_WRITE, customer)
    )
    return UsageBatchResponse(results=results)


@app.get(
    "/v1/customers/<customer>/balance",
    summary="Balance",
    tags=["balance"],
    responses=_responses(200, "the balance now", BalanceView),
)
def get_balance(customer: CustomerId) -> BalanceView:
    caller().require(Scope.BALANCE_READ, customer)
    return BalanceView.of(ledger().balance(customer))


@app.get(
    "/v1/customers/<customer>/grants",
    summary="List grants",
    tags=["balance"],
    responses=_responses(200, "a page of grants, oldest first", GrantList),
)
def list_grants(
    customer: CustomerId,
    status: Annotated[StatusFilter, Query(description="one status, or all")] = "all",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query(max_length=2048, description="next_cursor of the previous page")] = None,
) -> GrantList:
    caller().require(Scope.BALANCE_READ, customer)
    page = ledger().grants(customer, limit, cursor, None if status == "all" else GrantStatus(status))
    return GrantList(
        data=[GrantView.of(g) for g in page.items],
        has_more=page.next_cursor is not None,
        next_cursor=page.next_cursor,
    )


@app.get(
    "/v1/customers/<customer>/transactions",
    summary="Ledger entries, newest first",
    tags=["balance"],
    responses=_responses(200, "a page of ledger entries, newest first", TransactionList),
)
def list_transactions(
    customer: CustomerId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query(max_length=2048, description="next_cursor of the previous page")] = None,
) -> TransactionList:
    caller().require(Scope.BALANCE_READ, customer)
    page = ledger().transactions(customer, limit, cursor)
    return TransactionList(
        data=[TransactionView.of(e) for e in page.items],
        has_more=page.next_cursor is not None,
        next_cursor=page.next_cursor,
    )


@app.post(
    "/v1/customers/<customer>/grants",
    summary="Grant credits (admin)",
    tags=["admin"],
    responses=_responses(201, "granted" + REPLAY, GrantView, 409),
)
def create_grant(customer: CustomerId, body: GrantRequest) -> Response[GrantView]:
    principal = caller()
    principal.require(Scope.ADMIN, customer)
    result = grant_credits(ledger(), customer, body, granted_by=principal.key_id)
    return _replayable(GrantView.of(result.grant), result.replayed)


@app.post(
    "/v1/grants/<grant>/void",
    summary="Void what remains of a grant (admin)",
    tags=["admin"],
    responses=_responses(200, "the grant after the void", GrantView, 404),
)
def void(grant: Annotated[str, Path(min_length=1, max_length=255)]) -> GrantView:
    principal = caller()
    principal.require(Scope.ADMIN)
    return GrantView.of(void_grant(ledger(), grant, voided_by=principal.key_id))


@app.put(
    "/v1/customers/<customer>/settings",
    summary="Account settings (admin): the low-balance alert threshold",
    tags=["admin"],
    responses=_responses(200, "the settings as stored", None, 422),
)
def put_customer_settings(customer: CustomerId) -> dict[str, Any]:
    caller().require(Scope.ADMIN, customer)
    return put_settings(customer, app.current_event.json_body)


@app.get(
    "/v1/customers/<customer>/settings",
    summary="Account settings (admin)",
    tags=["admin"],
    responses=_responses(200, "the settings (defaults when never set)", None),
)
def get_customer_settings(customer: CustomerId) -> dict[str, Any]:
    caller().require(Scope.ADMIN, customer)
    return get_settings(customer)


@app.post(
    "/v1/api-keys",
    summary="Create an API key (admin)",
    tags=["admin"],
    responses=_responses(201, "the new key, shown only here", ApiKeyCreated),
)
def create_api_key(body: ApiKeyRequest) -> Response[ApiKeyCreated]:
    caller().require_unrestricted_admin()
    issued = key_service().issue(scopes_from(body.scopes), customers_from(body.customers), body.name)
    return Response(
        HTTPStatus.CREATED, content_types.APPLICATION_JSON, ApiKeyCreated.of(issued.record, issued.key)
    )


@app.delete(
    "/v1/api-keys/<id>",
    summary="Revoke an API key (admin)",
    tags=["admin"],
    responses=_responses(204, "revoked", None, 404),
)
def revoke_api_key(id: Annotated[str, Path(min_length=1, max_length=64)]) -> Response[None]:  # noqa: A002
    caller().require_unrestricted_admin()
    key_service().revoke(id)
    return Response(HTTPStatus.NO_CONTENT)


# ---- errors ----------------------------------------------------------------------------------------------
def error(
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details)).model_dump(mode="json")
    return Response(status, content_types.APPLICATION_JSON, body, headers)


def request_id() -> str:
    return str(app.context.get("request_id") or "")


@app.exception_handler(Unauthorized)
def unauthorized(exc: Unauthorized) -> Response[Any]:
    return error(401, "unauthorized", exc.message, headers={"WWW-Authenticate": "Bearer"})


@app.exception_handler(Forbidden)
def forbidden(exc: Forbidden) -> Response[Any]:
    return error(403, "forbidden", exc.message)


@app.exception_handler(InsufficientCredits)
def insufficient(exc: InsufficientCredits) -> Response[Any]:
    return error(402, "insufficient_credits", "not enough credits available; nothing was debited")


@app.exception_handler(IdempotencyMismatch)
def mismatch(exc: IdempotencyMismatch) -> Response[Any]:
    return error(409, "idempotency_mismatch", "this id was already used with a different request")


@app.exception_handler([GrantNotFound, ApiKeyNotFound, NotFoundError])
def not_found(exc: Exception) -> Response[Any]:
    what = {GrantNotFound: "grant", ApiKeyNotFound: "API key"}.get(type(exc), "route")
    return error(404, "not_found", f"no such {what}")


@app.exception_handler([InvalidGrant, InvalidUsage, InvalidSettings])
def invalid_field(exc: InvalidGrant | InvalidUsage | InvalidSettings) -> Response[Any]:
    return error(
        422,
        "invalid_request",
        f"{exc.field}: {exc.message}",
        [ErrorDetail(field=exc.field, message=exc.message)],
    )


@app.exception_handler(InvalidCursor)
def invalid_cursor(exc: InvalidCursor) -> Response[Any]:
    message = "is not a cursor this API returned for this list"
    return error(400, "invalid_request", f"cursor {message}", [ErrorDetail(field="cursor", message=message)])


@app.exception_handler(ConcurrencyConflict)
def conflict(exc: ConcurrencyConflict) -> Response[Any]:
    logger.warning("concurrency conflict", extra={"error": str(exc)})
    return error(
        429, "rate_limited", "too many concurrent writes on this account; retry", headers={"Retry-After": "1"}
    )


@app.exception_handler(PayloadTooLarge)
def too_large(exc: PayloadTooLarge) -> Response[Any]:
    return error(413, "payload_too_large", f"the body is larger than {MAX_BODY_BYTES // 1024} KB")


@app.exception_handler(RequestUnsupportedContentType)
def unsupported_type(exc: RequestUnsupportedContentType) -> Response[Any]:
    return error(415, "invalid_request", "Content-Type must be application/json")


def _unauthenticated() -> Response[Any] | None:
    """Validation runs before the route: check the key first, so callers without one learn nothing more."""
    try:
        caller()
    except Unauthorized as denied:
        return unauthorized(denied)
    return None


def _bad_body(message: str) -> Response[Any]:
    return _unauthenticated() or error(
        400, "invalid_request", f"the body {message}", [ErrorDetail(field="body", message=message)]
    )


@app.exception_handler([UnicodeDecodeError, binascii.Error])
def undecodable(exc: ValueError) -> Response[Any]:
    # Raised by Powertools while decoding the body (base64, then UTF-8), before any route code runs.
    return _bad_body("is not valid base64-encoded UTF-8")


@app.exception_handler(RequestValidationError)
def invalid_request(exc: RequestValidationError) -> Response[Any]:
    denied = _unauthenticated()
    if denied is not None:
        return denied
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _bad_body("is not valid JSON")
    details = [ErrorDetail(field=_field(e.get("loc", ())), message=message_of(e)) for e in errors]
    # A cursor is opaque: one the API did not hand out is a bad request (400), not an invalid field (422).
    status = 400 if any(d.field == "cursor" for d in details) else 422
    return error(
        status,
        "invalid_request",
        f"{details[0].field}: {details[0].message}" if details else "invalid",
        details,
    )


def _field(loc: Any) -> str:
    parts = list(loc)
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return field_name(parts)


@app.exception_handler([ResponseValidationError, Exception])
def internal(exc: Exception) -> Response[Any]:
    logger.exception("unhandled error", extra={"request_id": request_id()})
    return internal_error()


def internal_error() -> Response[Any]:
    return error(500, "internal", f"internal error; request id {request_id()}")


# ---- OpenAPI ---------------------------------------------------------------------------------------------
def openapi_spec() -> str:
    """The OpenAPI document generated from the routes and models (committed as docs/openapi.json)."""
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    generated = app.get_openapi_json_schema(
        title="Credits API",
        version="1.0.0",
        description="Credits ledger HTTP API (CONTRACT.md section 3). Amounts are exact decimals sent as "
        'strings; times are UTC ISO 8601. Errors: {"error": {"code", "message", "details"?}}; every '
        "response carries X-Request-Id.",
        security_schemes={"apiKey": HTTPBearer(bearerFormat="ck_<key id>_<secret>")},
        security=[{"apiKey": []}],
    )
    spec = json.loads(generated)
    # Powertools documents its own 422/500 shapes; ours are the contract's error object.
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for code in ("422", "500"):
                operation["responses"][code] = {
                    "description": _ERROR_STATUSES[int(code)],
                    "content": {"application/json": {"schema": error_schema}},
                }
            if path == "/health":
                operation["security"] = []
                operation["responses"].pop("422")
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        spec["components"]["schemas"].pop(unused, None)
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ---- entry point -----------------------------------------------------------------------------------------
def _request_id(event: dict[str, Any]) -> str:
    context = event.get("requestContext") if isinstance(event, dict) else None
    found = context.get("requestId") if isinstance(context, dict) else None
    return found if isinstance(found, str) and found else str(uuid.uuid4())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rid = _request_id(event)
    logger.set_correlation_id(rid)
    app.append_context(request_id=rid)
    try:
        response = app.resolve(event, context)
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
