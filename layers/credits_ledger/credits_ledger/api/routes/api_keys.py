"""API keys (unrestricted admin only): ``POST /v1/api-keys`` and ``DELETE /v1/api-keys/{id}``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Path

from credits_ledger.api.deps import caller, key_service, new_router
from credits_ledger.api.openapi import responses
from credits_ledger.api_models import ApiKeyCreated, ApiKeyRequest
from credits_ledger.auth import customers_from, scopes_from

router = new_router()


@router.post(
    "/v1/api-keys",
    summary="Create an API key (admin)",
    tags=["admin"],
    responses=responses(201, "the new key, shown only here", ApiKeyCreated),
)
def create_api_key(body: ApiKeyRequest) -> Response[ApiKeyCreated]:
    caller().require_unrestricted_admin()
    issued = key_service().issue(scopes_from(body.scopes), customers_from(body.customers), body.name)
    return Response(
        HTTPStatus.CREATED, content_types.APPLICATION_JSON, ApiKeyCreated.of(issued.record, issued.key)
    )


@router.delete(
    "/v1/api-keys/<id>",
    summary="Revoke an API key (admin)",
    tags=["admin"],
    responses=responses(204, "revoked", None, 404),
)
def revoke_api_key(id: Annotated[str, Path(min_length=1, max_length=64)]) -> Response[None]:
    caller().require_unrestricted_admin()
    key_service().revoke(id)
    return Response(HTTPStatus.NO_CONTENT)
