"""Admin grants: ``POST /v1/customers/{customer}/grants`` and ``POST /v1/grants/{grant}/void``."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path

from credits_ledger.api.deps import caller, ledger, new_router, replayable
from credits_ledger.api.openapi import REPLAY, responses
from credits_ledger.api.params import CustomerId
from credits_ledger.api_models import GrantRequest, GrantView
from credits_ledger.auth import Scope
from credits_ledger.grants import grant_credits, void_grant

router = new_router()


@router.post(
    "/v1/customers/<customer>/grants",
    summary="Grant credits (admin)",
    tags=["admin"],
    responses=responses(201, "granted" + REPLAY, GrantView, 409),
)
def create_grant(customer: CustomerId, body: GrantRequest) -> Response[GrantView]:
    principal = caller()
    principal.require(Scope.ADMIN, customer)
    result = grant_credits(ledger(), customer, body, granted_by=principal.key_id)
    return replayable(GrantView.of(result.grant), result.replayed)


@router.post(
    "/v1/grants/<grant>/void",
    summary="Void what remains of a grant (admin)",
    tags=["admin"],
    responses=responses(200, "the grant after the void", GrantView, 404),
)
def void(grant: Annotated[str, Path(min_length=1, max_length=255)]) -> GrantView:
    principal = caller()
    principal.require(Scope.ADMIN)
    return GrantView.of(void_grant(ledger(), grant, voided_by=principal.key_id))
