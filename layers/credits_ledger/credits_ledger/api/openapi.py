"""The OpenAPI document: each route's responses (its answer and every error status it may give, described
from the error catalogue), and the document generated from the resolver (committed as docs/openapi.json)."""

from __future__ import annotations

import json
from typing import Any

from credits_ledger.api.errors import STATUS_DESCRIPTIONS
from credits_ledger.api_models import ErrorResponse

# 404: any route answers it for a path it cannot resolve (an undecodable or unknown path parameter).
COMMON_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 500)
REPLAY = " (200 with Idempotent-Replayed: true when the same id and body were sent before)"


def responses(status: int, description: str, model: type[Any] | None, *errors: int) -> dict[int, Any]:
    """OpenAPI responses of a route: its success answer and every error it may give."""
    success: dict[str, Any] = {"description": description}
    if model is not None:
        success["content"] = {"application/json": {"model": model}}
    described: dict[int, Any] = {status: success}
    if status == 201 and REPLAY in description:
        described[200] = {**success, "description": "the first answer again (Idempotent-Replayed: true)"}
    for code in sorted({*COMMON_ERRORS, *errors}):
        described[code] = {
            "description": STATUS_DESCRIPTIONS[code],
            "content": {"application/json": {"model": ErrorResponse}},
        }
    return described


def openapi_spec(app: Any) -> str:
    """The OpenAPI document generated from the routes and models of ``app``."""
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    generated = app.get_openapi_json_schema(
        title="Credits API",
        version="1.0.0",
        description="Credits ledger HTTP API (docs/api.md). Amounts are exact decimals sent as "
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
                    "description": STATUS_DESCRIPTIONS[int(code)],
                    "content": {"application/json": {"schema": error_schema}},
                }
            no_body = operation["responses"].get("204")
            if no_body is not None:
                no_body.pop("content", None)  # 204 has no body (Powertools describes a JSON null)
            if path == "/health":
                operation["security"] = []
                operation["responses"].pop("422")
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        spec["components"]["schemas"].pop(unused, None)
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
