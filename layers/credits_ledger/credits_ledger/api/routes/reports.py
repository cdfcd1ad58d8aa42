"""The money view (docs/money.md): ``GET /v1/reports/revenue`` (admin) and
``GET /v1/customers/{customer}/forecast`` (balance:read)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import Field

from credits_ledger.api.deps import caller, ledger, new_router
from credits_ledger.api.openapi import responses
from credits_ledger.api.params import CustomerId, UtcDay
from credits_ledger.api_models import ResponseView
from credits_ledger.auth import Scope
from credits_ledger.domain.errors import InvalidField
from credits_ledger.domain.money import ZERO, format_amount
from credits_ledger.domain.times import iso

if TYPE_CHECKING:
    from credits_ledger.dal.money import MoneyRepository

# The money view's modules (revenue, burn, their repository) load on the first report or forecast an instance
# serves, not in every cold start of the API: most instances only debit and read balances (docs/decisions.md,
# "Cold start").

router = new_router()

# A report reads every day item up to ``to`` whatever the range; the range itself is bounded so an answer
# stays small and a typo (year 20250) is a 422, not a long scan.
MAX_RANGE_DAYS = 3660


class RevenueLineView(ResponseView):
    currency: str = Field(description="ISO currency code, lower case as Stripe sends it")
    opening_deferred: str = Field(description="minor units deferred at the start of `from`")
    sold: str
    recognized: str
    breakage: str
    refunded: str
    closing_deferred: str = Field(description="opening_deferred + sold - recognized - breakage - refunded")


class RevenueReportView(ResponseView):
    data: list[RevenueLineView]


class BurnDay(ResponseView):
    day: str
    burn: str
    by_meter: dict[str, str]
    anomaly: bool = Field(description="credits.usage.anomaly was raised for this day")


class ForecastView(ResponseView):
    customer: str
    burn_per_day: str = Field(description="credits debited in the last window_days UTC days / window_days")
    runs_out_at: str | None = Field(description="now + available / burn_per_day; null when nothing burns")
    window_days: int
    available: str
    as_of: str
    days: list[BurnDay] = Field(description="the window's days, oldest first, debits by meter")


@cache
def money() -> MoneyRepository:
    from credits_ledger.dal.money import MoneyRepository

    return MoneyRepository()


@router.get(
    "/v1/reports/revenue",
    summary="Revenue report (admin): deferred, sold, recognized, breakage, refunded per currency",
    tags=["admin"],
    responses=responses(200, "one line per currency, in minor units", RevenueReportView, 422),
)
def revenue_report(
    start: Annotated[UtcDay, Query(alias="from", description="first UTC day, YYYY-MM-DD")],
    to: Annotated[UtcDay, Query(description="last UTC day, YYYY-MM-DD (inclusive)")],
) -> RevenueReportView:
    from credits_ledger.jobs.revenue import RevenueReport, line_view

    caller().require(Scope.ADMIN)
    if to < start:
        raise InvalidField("to", "is before from")
    if (to - start).days >= MAX_RANGE_DAYS:
        raise InvalidField("to", f"the range is longer than {MAX_RANGE_DAYS} days")
    lines = RevenueReport(money()).lines(start, to)
    return RevenueReportView(data=[RevenueLineView(**line_view(line)) for line in lines])


@router.get(
    "/v1/customers/<customer>/forecast",
    summary="Burn forecast: credits per day over the last 30 days and when available credits run out",
    tags=["balance"],
    responses=responses(200, "the forecast now", ForecastView),
)
def customer_forecast(customer: CustomerId) -> ForecastView:
    from credits_ledger.domain.burn import WINDOW_DAYS, forecast, window

    caller().require(Scope.BALANCE_READ, customer)
    now = datetime.now(UTC)
    balance = ledger().balance(customer)
    tracker = money().tracker(customer)
    result = forecast(tracker.daily(), balance.available, now)
    days = [
        BurnDay(
            day=day.isoformat(),
            burn=format_amount(sum(tracker.burn.get(day, {}).values(), ZERO)),
            by_meter={m: format_amount(v) for m, v in sorted(tracker.burn.get(day, {}).items())},
            anomaly=day in tracker.anomalies,
        )
        for day in window(now.date(), WINDOW_DAYS)
    ]
    return ForecastView(
        customer=customer,
        burn_per_day=format_amount(result.burn_per_day),
        runs_out_at=iso(result.runs_out_at) if result.runs_out_at is not None else None,
        window_days=result.window_days,
        available=format_amount(balance.available),
        as_of=iso(now),
        days=days,
    )
