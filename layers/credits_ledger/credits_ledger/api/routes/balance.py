"""Reads of one account: balance, grants and ledger entries (scope ``balance:read``)."""

from __future__ import annotations

from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.openapi.params import Query

from credits_ledger.api.deps import caller, ledger, new_router
from credits_ledger.api.openapi import responses
from credits_ledger.api.params import CustomerId
from credits_ledger.api_models import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    BalanceView,
    Cursor,
    GrantList,
    GrantView,
    TransactionList,
    TransactionView,
)
from credits_ledger.auth import Scope
from credits_ledger.domain.models import GrantStatus

router = new_router()

StatusFilter = Literal["all", "active", "pending", "held", "depleted", "expired", "voided"]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
PageCursor = Annotated[
    Cursor,
    Query(
        max_length=2048,
        description="next_cursor of the previous page, as returned (opaque URL-safe base64); any other is 400",
    ),
]


@router.get(
    "/v1/customers/<customer>/balance",
    summary="Balance",
    tags=["balance"],
    responses=responses(200, "the balance now", BalanceView),
)
def get_balance(customer: CustomerId) -> BalanceView:
    caller().require(Scope.BALANCE_READ, customer)
    return BalanceView.of(ledger().balance(customer))


@router.get(
    "/v1/customers/<customer>/grants",
    summary="List grants",
    tags=["balance"],
    responses=responses(200, "a page of grants, oldest first", GrantList),
)
def list_grants(
    customer: CustomerId,
    status: Annotated[StatusFilter, Query(description="one status, or all")] = "all",
    limit: PageSize = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
) -> GrantList:
    caller().require(Scope.BALANCE_READ, customer)
    page = ledger().grants(customer, limit, cursor, None if status == "all" else GrantStatus(status))
    return GrantList(
        data=[GrantView.of(g) for g in page.items],
        has_more=page.next_cursor is not None,
        next_cursor=page.next_cursor,
    )


@router.get(
    "/v1/customers/<customer>/transactions",
    summary="Ledger entries, newest first",
    tags=["balance"],
    responses=responses(200, "a page of ledger entries, newest first", TransactionList),
)
def list_transactions(
    customer: CustomerId, limit: PageSize = DEFAULT_PAGE_SIZE, cursor: PageCursor = None
) -> TransactionList:
    caller().require(Scope.BALANCE_READ, customer)
    page = ledger().transactions(customer, limit, cursor)
    return TransactionList(
        data=[TransactionView.of(e) for e in page.items],
        has_more=page.next_cursor is not None,
        next_cursor=page.next_cursor,
    )
