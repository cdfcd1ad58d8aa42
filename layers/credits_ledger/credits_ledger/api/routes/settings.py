"""Account settings (admin): ``PUT`` and ``GET /v1/customers/{customer}/settings``: low-balance threshold,
overage policy, automatic top-up. The body is validated against ``SettingsRequest`` before the route runs:
malformed or too deeply nested JSON is 400, a wrong or out-of-range field 422 naming it (api/errors.py)."""

from __future__ import annotations

from credits_ledger.account_settings import SettingsRequest, SettingsResponse, get_settings, put_settings
from credits_ledger.api.deps import caller, new_router
from credits_ledger.api.openapi import responses
from credits_ledger.api.params import CustomerId
from credits_ledger.auth import Scope

router = new_router()


@router.put(
    "/v1/customers/<customer>/settings",
    summary="Account settings (admin): low-balance threshold, overage policy, automatic top-up",
    tags=["admin"],
    responses=responses(200, "the settings as stored", SettingsResponse, 422),
)
def put_customer_settings(customer: CustomerId, body: SettingsRequest) -> SettingsResponse:
    caller().require(Scope.ADMIN, customer)
    return SettingsResponse.model_validate(put_settings(customer, body))


@router.get(
    "/v1/customers/<customer>/settings",
    summary="Account settings (admin)",
    tags=["admin"],
    responses=responses(200, "the settings (defaults when never set)", SettingsResponse),
)
def get_customer_settings(customer: CustomerId) -> SettingsResponse:
    caller().require(Scope.ADMIN, customer)
    return SettingsResponse.model_validate(get_settings(customer))
