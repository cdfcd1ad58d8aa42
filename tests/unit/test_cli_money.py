"""The money commands of the ``credits`` CLI against a fake API: ``report revenue`` (table, CSV, JSON),
``forecast``, and the burn forecast under ``balance``."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_cli import BALANCE, FakeApi, api, base, run

__all__ = ["api"]  # test_cli's fake API fixture, which the tests here take (exported: it is used by name)

REPORT = {
    "data": [
        {
            "currency": "eur",
            "opening_deferred": "10000000",
            "sold": "0",
            "recognized": "2500250",
            "breakage": "0",
            "refunded": "2083333",
            "closing_deferred": "5416417",
        }
    ]
}
FORECAST = {
    "customer": "cus_1",
    "burn_per_day": "2",
    "runs_out_at": "2027-01-10T12:00:00.123456Z",
    "window_days": 30,
    "available": "380",
    "as_of": "2026-11-29T12:00:00.000000Z",
    "days": [
        {"day": "2026-11-28", "burn": "20", "by_meter": {"api_call": "20"}, "anomaly": False},
        {"day": "2026-11-29", "burn": "40", "by_meter": {"api_call": "10", "storage": "30"}, "anomaly": True},
    ],
}


def test_report_revenue_as_a_table_csv_and_json(api: FakeApi) -> None:
    api.on("GET", "/v1/reports/revenue", 200, REPORT)
    code, out, _ = run([*base(api), "report", "revenue", "--from", "2026-11-01", "--to", "2026-11-30"])
    assert code == 0
    assert api.requests[0]["path"] == "/v1/reports/revenue?from=2026-11-01&to=2026-11-30"
    lines = out.splitlines()
    assert lines[1].split() == list(REPORT["data"][0])  # the header row, in the contract's order
    assert lines[3].split() == ["eur", "10000000", "0", "2500250", "0", "2083333", "5416417"]
    code, out, _ = run(
        [*base(api), "report", "revenue", "--from", "2026-11-01", "--to", "2026-11-30", "--format", "csv"]
    )
    assert out.splitlines() == [
        "from,to,currency,opening_deferred,sold,recognized,breakage,refunded,closing_deferred",
        "2026-11-01,2026-11-30,eur,10000000,0,2500250,0,2083333,5416417",
    ]
    code, out, _ = run(
        [*base(api), "--json", "report", "revenue", "--from", "2026-11-01", "--to", "2026-11-30"]
    )
    assert json.loads(out) == REPORT


def test_report_revenue_refuses_a_day_that_is_not_one(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run([*base(api), "report", "revenue", "--from", "2026-13-01", "--to", "2026-11-30"])
    assert code == 2 and "not a day" in capsys.readouterr().err and not api.requests


def test_balance_shows_the_burn_forecast_and_forecast_shows_the_days(api: FakeApi) -> None:
    api.on("GET", "/v1/customers/cus_1/balance", 200, BALANCE)
    api.on("GET", "/v1/customers/cus_1/forecast", 200, FORECAST)
    code, out, _ = run([*base(api), "balance", "cus_1"])
    assert code == 0
    assert "burn per day    2 (last 30 days)" in out and "runs out at     2027-01-10T12:00:00Z" in out
    code, out, _ = run([*base(api), "forecast", "cus_1"])
    rows = [line.split() for line in out.splitlines()]
    assert ["2026-11-28", "20", "###############", "api_call", "20"] in rows
    assert ["2026-11-29", "40", "#" * 30, "!", "api_call", "10,", "storage", "30"] in rows
    assert "credits.usage.anomaly" in out


def test_balance_without_a_forecast_route_still_shows_the_balance(api: FakeApi) -> None:
    api.on("GET", "/v1/customers/cus_1/balance", 200, BALANCE)
    code, out, _ = run([*base(api), "balance", "cus_1"])
    assert code == 0 and "available       380" in out and "burn" not in out
