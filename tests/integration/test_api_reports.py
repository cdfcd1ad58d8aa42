"""GET /v1/reports/revenue and GET /v1/customers/{customer}/forecast through the handler: shapes, the
aggregate and tracker they read, scopes, and bad ranges as 422 that change nothing."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_ledger.dal.money import MoneyRepository
from credits_ledger.domain.burn import Tracker
from credits_ledger.domain.revenue import Totals
from tests.integration.test_api_support import Api

pytest_plugins = ["tests.integration.test_api_support"]

D = Decimal


def seed_days(client: Any) -> MoneyRepository:
    """Day totals as the stream would have written them (two accounts -> two buckets of one day)."""
    money = MoneyRepository(client, "CreditsTable")
    money.record(Tracker("cus_1", version=1), 0, {(date(2026, 10, 31), "eur"): Totals(sold=D(10_000))})
    money.record(
        Tracker("cus_1", version=2),
        1,
        {(date(2026, 11, 2), "eur"): Totals(recognized=D(2500), breakage=D(100))},
    )
    money.record(
        Tracker("cus_2", version=1),
        0,
        {
            (date(2026, 11, 2), "eur"): Totals(sold=D(500), refunded=D(50)),
            (date(2026, 11, 3), "usd"): Totals(sold=D(999)),
        },
    )
    return money


def test_revenue_report_per_currency_from_the_daily_aggregate(api: Api, moto_tables: Any) -> None:
    seed_days(moto_tables.client)
    reply = api.call("revenue_report", query={"from": "2026-11-01", "to": "2026-11-30"})
    assert reply.status == 200, reply.raw
    assert reply.body == {
        "data": [
            {
                "currency": "eur",
                "opening_deferred": "10000",
                "sold": "500",
                "recognized": "2500",
                "breakage": "100",
                "refunded": "50",
                "closing_deferred": "7850",
            },
            {
                "currency": "usd",
                "opening_deferred": "0",
                "sold": "999",
                "recognized": "0",
                "breakage": "0",
                "refunded": "0",
                "closing_deferred": "999",
            },
        ]
    }
    # a range before anything happened has no line
    empty = api.call("revenue_report", query={"from": "2020-01-01", "to": "2020-01-31"})
    assert empty.body == {"data": []}


@pytest.mark.parametrize(
    "query",
    [
        {"from": "2026-11-30", "to": "2026-11-01"},
        {"from": "2026-11-01"},
        {"from": "yesterday", "to": "2026-11-01"},
        {"from": "2000-01-01", "to": "2026-11-01"},
        # days are YYYY-MM-DD only: not unix seconds (pydantic's lax dates read "0" as 1970-01-01), not times
        {"from": "0", "to": "86400"},
        {"from": "1767225600", "to": "2026-01-31"},
        {"from": "2026-01-01T00:00:00", "to": "2026-01-31"},
        {"from": "2026-01-01", "to": "2026-02-30"},
        {"from": "2026-1-01", "to": "2026-01-31"},
        {"from": "+02026-01-01", "to": "2026-01-31"},
    ],
)
def test_a_bad_range_is_422(api: Api, query: dict[str, str]) -> None:
    reply = api.call("revenue_report", query=query)
    assert reply.status == 422, reply.raw
    assert reply.error["code"] == "invalid_request"


def test_a_day_that_is_not_yyyy_mm_dd_is_named(api: Api) -> None:
    reply = api.call("revenue_report", query={"from": "2026-01-01", "to": "1767225600"})
    assert reply.status == 422, reply.raw
    assert "YYYY-MM-DD" in json.dumps(reply.error)


def test_the_revenue_report_is_for_unrestricted_admins(api: Api) -> None:
    reader = api.issue_key(["balance:read"])
    assert api.call("revenue_report", key=reader).status == 403


def test_forecast_from_thirty_days_of_burn(api: Api, moto_tables: Any) -> None:
    api.grant("cus_F", "1000")
    today = datetime.now(UTC).date()
    burn = {
        today: {"api_call": D(10)},
        today - timedelta(days=3): {"api_call": D(20), "storage_gb_hour": D(30)},
        today - timedelta(days=40): {"api_call": D(10_000)},  # outside the window
    }
    money = MoneyRepository(moto_tables.client, "CreditsTable")
    money.record(Tracker("cus_F", burn=burn, version=1, anomalies=frozenset({today})), 0, {})
    reply = api.call("forecast", path="/v1/customers/cus_F/forecast")
    assert reply.status == 200, reply.raw
    body = reply.body
    assert (body["customer"], body["burn_per_day"], body["window_days"], body["available"]) == (
        "cus_F",
        "2",  # 60 credits over 30 days
        30,
        "1000",
    )
    runs_out = datetime.fromisoformat(body["runs_out_at"].replace("Z", "+00:00"))
    as_of = datetime.fromisoformat(body["as_of"].replace("Z", "+00:00"))
    assert runs_out - as_of == timedelta(days=500)
    assert len(body["days"]) == 30 and body["days"][-1]["day"] == today.isoformat()
    assert body["days"][-1] == {
        "day": today.isoformat(),
        "burn": "10",
        "by_meter": {"api_call": "10"},
        "anomaly": True,
    }
    three = body["days"][-4]
    assert (three["burn"], three["by_meter"], three["anomaly"]) == (
        "50",
        {"api_call": "20", "storage_gb_hour": "30"},
        False,
    )


def test_forecast_of_an_account_that_never_burned_runs_out_never(api: Api) -> None:
    body = api.call("forecast", path="/v1/customers/cus_new/forecast").body
    assert (body["burn_per_day"], body["runs_out_at"], body["available"]) == ("0", None, "0")


def test_forecast_needs_access_to_the_customer(api: Api) -> None:
    other = api.issue_key(["balance:read"], customers=["cus_other"])
    assert api.call("forecast", key=other, path="/v1/customers/cus_F/forecast").status == 403
