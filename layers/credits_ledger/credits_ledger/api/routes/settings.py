"""Account settings (admin): ``PUT`` and ``GET /v1/customers/{customer}/settings``."""

from __future__ import annotations

from typing import Any

from credits_ledger.api.deps import caller, new_router
from credits_ledger.api.openapi import responses
from credits_ledger.api.params import CustomerId
from credits_ledger.auth import Scope
from credits_ledger.settings import get_settings, put_settings

router = new_router()


@router.put(
    "/v1/customers/<customer>/settings",
    summary="Account settings (admin): the low-balance alert threshold",
    tags=["admin"],
    responses=responses(200, "the settings as stored", None, 422),
)
def put_customer_settings(customer: CustomerId) -> dict[str, Any]:
    caller().require(Scope.ADMIN, customer)
    return put_settings(customer, router.current_event.json_body)


@router.get(
    "/v1/customers/<customer>/settings",
    summary="Account settings (admin)",
    tags=["admin"],
    responses=responses(200, "the settings (defaults when never set)", None),
)
def get_customer_settings(customer: CustomerId) -> dict[str, Any]:
    caller().require(Scope.ADMIN, customer)
    return get_settings(customer)
