"""Settings for overage and automatic top-ups through the API, the settings route's resistance to hostile
bodies, and overage on POST /v1/usage (policy, monthly limit, replay, batch)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from credits_ledger.pricing import load_pricing
from tests.integration.test_api_support import Api
from tests.support.billing import STARTER_PRICING

pytest_plugins = ["tests.integration.test_api_support"]

PATH = "/v1/customers/cus_A/settings"
PRICING_WITH_PACK = (
    STARTER_PRICING
    + """
[packs.unsold]
credits = "10"
"""
)


def put(api: Api, body: Any = None, raw_body: str | None = None) -> Any:
    overrides: dict[str, Any] = {"path": PATH}
    if raw_body is not None:
        overrides["raw_body"] = raw_body
    else:
        overrides["body"] = body
    return api.call("settings_put", **overrides)


@pytest.fixture
def with_packs(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    pricing = tmp_path / "packs.toml"
    pricing.write_text(PRICING_WITH_PACK, encoding="utf-8")
    monkeypatch.setenv("CREDITS_PRICING_FILE", str(pricing))
    load_pricing.cache_clear()
    return api


def test_overage_and_auto_topup_are_stored_and_read_back(with_packs: Api) -> None:
    api = with_packs
    body = {
        "low_balance_threshold": 10,
        "overage": {"policy": "allow", "limit": "500.5"},
        "auto_topup": {
            "enabled": True,
            "threshold": "100",
            "pack": "starter",
            "quantity": 2,
            "monthly_limit": 3,
        },
    }
    reply = put(api, body)
    assert reply.status == 200, reply.raw
    expected_overage = {"policy": "allow", "limit": "500.5"}
    expected_topup = {
        "enabled": True,
        "threshold": "100",
        "pack": "starter",
        "quantity": 2,
        "monthly_limit": 3,
    }
    assert (reply.body["overage"], reply.body["auto_topup"]) == (expected_overage, expected_topup)
    again = api.call("settings_get", path=PATH).body
    assert (again["overage"], again["auto_topup"]) == (expected_overage, expected_topup)
    # PUT replaces the document: what is left out is back to its default
    reset = put(api, {}).body
    assert reset["overage"] == {"policy": "reject", "limit": None} and reset["auto_topup"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"overage": {"policy": "sometimes"}}, "overage.policy"),
        ({"overage": {"policy": "allow", "limit": "-1"}}, "overage.limit"),
        ({"overage": {"policy": "allow", "cap": 1}}, "overage.cap"),
        ({"overage": "allow"}, "overage"),
        ({"auto_topup": {"enabled": True, "threshold": "5"}}, "auto_topup.pack"),
        ({"auto_topup": {"enabled": "yes", "threshold": "5", "pack": "starter"}}, "auto_topup.enabled"),
        ({"auto_topup": {"enabled": True, "threshold": "5", "pack": "nope"}}, "auto_topup.pack"),
        ({"auto_topup": {"enabled": True, "threshold": "5", "pack": "unsold"}}, "auto_topup.pack"),
        (
            {"auto_topup": {"enabled": True, "threshold": "5", "pack": "starter", "quantity": 0}},
            "auto_topup.quantity",
        ),
        (
            {"auto_topup": {"enabled": True, "threshold": "5", "pack": "starter", "monthly_limit": "2"}},
            "auto_topup.monthly_limit",
        ),
    ],
)
def test_invalid_overage_and_topup_settings_are_422(with_packs: Api, body: Any, field: str) -> None:
    reply = put(with_packs, body)
    assert reply.status == 422, reply.raw
    assert reply.error["code"] == "invalid_request"
    assert field in reply.fields()
    stored = with_packs.call("settings_get", path=PATH).body
    assert stored["overage"]["policy"] == "reject" and stored["auto_topup"] is None


@pytest.mark.parametrize(
    "raw_body",
    [
        '{"low_balance_threshold": ',  # truncated
        "{'low_balance_threshold': 5}",  # not JSON
        "[" * 5000 + "]" * 5000,  # deeply nested
        '{"overage": ' + '{"policy": ' * 3000 + '"allow"' + "}" * 3000 + "}",
        '{"low_balance_threshold": ' + "9" * 5000 + "}",  # a 5,000-digit number
        '{"overage": {"policy": "allow", "limit": ' + "1" * 5000 + ".5}}",
        '{"low_balance_threshold": 1e999999}',
        "\ud800",
    ],
)
def test_hostile_bodies_are_4xx_and_change_nothing(api: Api, raw_body: str) -> None:
    reply = put(api, raw_body=raw_body)
    assert 400 <= reply.status < 500, reply.raw
    assert reply.error["code"] == "invalid_request"
    stored = api.call("settings_get", path=PATH).body
    assert stored["low_balance_threshold"] is None and stored["overage"]["policy"] == "reject"


# ---- overage on POST /v1/usage ---------------------------------------------------------------------------
def allow_overage(api: Api, limit: str | None = None) -> None:
    overage: dict[str, Any] = {"policy": "allow"}
    if limit is not None:
        overage["limit"] = limit
    assert put(api, {"overage": overage}).status == 200


def test_reject_is_the_default(api: Api) -> None:
    assert api.grant("cus_A", "10").status == 201
    reply = api.usage(id="u1", quantity=15)
    assert reply.status == 402
    assert api.available("cus_A") == "10"


def test_allow_takes_what_is_there_and_records_the_rest(api: Api) -> None:
    assert api.grant("cus_A", "10").status == 201
    allow_overage(api)
    reply = api.usage(id="u1", quantity=15)
    assert reply.status == 201, reply.raw
    assert (reply.body["credits"], reply.body["overage"], reply.body["balance"]) == ("15", "5", "0")
    assert sum(Decimal(a["amount"]) for a in reply.body["allocations"]) == Decimal(10)
    assert api.available("cus_A") == "0"
    # a replay answers the same and adds nothing
    replay = api.usage(id="u1", quantity=15)
    assert replay.status == 200 and replay.body == reply.body
    # with nothing left, the whole debit is overage; the ledger entry takes 0 and the balance stays 0
    empty = api.usage(id="u2", quantity=3)
    assert (empty.status, empty.body["overage"], empty.body["allocations"]) == (201, "3", [])
    entries = api.transactions("cus_A").body["data"]
    assert [(e["type"], e["amount"], e["balance_after"]) for e in entries[:2]] == [
        ("debit", "0", "0"),
        ("debit", "-10", "0"),
    ]
    # a debit that is covered carries no overage field
    assert api.grant("cus_A", "5").status == 201
    covered = api.usage(id="u3", quantity=2)
    assert covered.status == 201 and "overage" not in covered.body


def test_the_monthly_limit_is_a_402_past_it(api: Api) -> None:
    allow_overage(api, limit="10")
    assert api.usage(id="u1", quantity=4).body["overage"] == "4"
    assert api.usage(id="u2", quantity=6).body["overage"] == "6"  # the limit itself is allowed
    refused = api.usage(id="u3", quantity="0.5")
    assert refused.status == 402, refused.raw
    assert refused.error["code"] == "insufficient_credits"
    assert "overage limit" in refused.error["message"]
    # the refused debit changed nothing: the month's overage is still at the limit
    assert api.usage(id="u4", quantity="0.000001").status == 402
    assert [e["amount"] for e in api.transactions("cus_A").body["data"]] == ["0", "0"]


def test_batch_events_go_into_overage_one_by_one(api: Api) -> None:
    assert api.grant("cus_A", "5").status == 201
    allow_overage(api, limit="8")
    events = [{"id": f"b{i}", "customer": "cus_A", "meter": "api_call", "quantity": 4} for i in range(4)]
    reply = api.call("usage_batch", body={"events": events})
    assert reply.status == 200, reply.raw
    # 5 available: b0 covered, b1 takes 1 + 3 overage, b2 4 overage (7), b3 would make 11 > 8
    assert [r["status"] for r in reply.body["results"]] == ["debited", "debited", "debited", "rejected"]
    assert reply.body["results"][3]["error"]["code"] == "insufficient_credits"
    assert api.available("cus_A") == "0"


def test_client_metadata_cannot_claim_overage(api: Api) -> None:
    assert api.grant("cus_A", "10").status == 201
    reply = api.usage(id="u1", quantity=1, metadata={"overage": "1000"})
    assert reply.status == 422
