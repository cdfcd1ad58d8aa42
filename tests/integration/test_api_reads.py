"""Balance, grants and transactions through the handler: shapes, filters, pagination, scopes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_api_support import Api
from tools.gen_openapi import SPEC

pytest_plugins = ["tests.integration.test_api_support"]


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def test_an_account_that_never_had_credits_reads_as_zero(api: Api) -> None:
    reply = api.call("balance")
    assert reply.status == 200
    body = reply.body
    assert body["customer"] == "cus_NffrFeUfNV2Hib"
    assert (body["available"], body["ledger_balance"], body["held"], body["pending"]) == ("0", "0", "0", "0")
    assert body["by_category"] == {"paid": "0", "promotional": "0"}
    assert body["next_expiry"] is None
    assert body["as_of"].endswith("Z")


def test_balance_splits_available_by_category_and_shows_held_pending_and_next_expiry(api: Api) -> None:
    # Given a paid grant expiring in 10 days, a promotional one, a pending one and a held one
    soon = _iso(timedelta(days=10))
    api.grant("cus_A", "100", category="paid", expires_at=soon)
    api.grant("cus_A", "25.5", category="promotional")
    api.grant("cus_A", "7", effective_at=_iso(timedelta(days=1)))
    held = api.grant("cus_A", "3").body["id"]
    api.ledger().hold(held, key=f"hold:{held}")
    # When the balance is read
    body = api.balance("cus_A").body
    # Then available is what can be spent now, split by category; the rest is held or pending
    assert body["available"] == "125.5"
    assert body["by_category"] == {"paid": "100", "promotional": "25.5"}
    assert body["ledger_balance"] == "135.5"
    assert body["held"] == "3"
    assert body["pending"] == "7"
    assert body["next_expiry"]["amount"] == "100"
    assert body["next_expiry"]["at"] == datetime.fromisoformat(soon).astimezone(UTC).isoformat().replace(
        "+00:00", "Z"
    )


def test_grants_list_filters_by_status(api: Api) -> None:
    active = api.grant("cus_A", "5").body["id"]
    voided = api.grant("cus_A", "6").body["id"]
    assert api.call("grant_void", path=f"/v1/grants/{voided}/void").status == 200
    # Default: all
    everything = api.grants("cus_A").body
    assert [g["id"] for g in everything["data"]] == [active, voided]
    assert everything["has_more"] is False and everything["next_cursor"] is None
    # One status
    assert [g["id"] for g in api.grants("cus_A", status="voided").body["data"]] == [voided]
    assert [g["id"] for g in api.grants("cus_A", status="active").body["data"]] == [active]


def test_sample_grants_list_event(api: Api) -> None:
    api.grant("cus_NffrFeUfNV2Hib", "5")
    reply = api.call("grants_list")
    assert reply.status == 200
    assert [g["status"] for g in reply.body["data"]] == ["active"]


def test_grants_pages_with_an_opaque_cursor(api: Api) -> None:
    ids = [api.grant("cus_A", str(n + 1)).body["id"] for n in range(3)]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = api.grants("cus_A", **query).body
        seen += [g["id"] for g in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert seen == ids


def test_transactions_newest_first_with_pagination(api: Api) -> None:
    # Given a grant and three debits
    api.grant("cus_A", "10")
    for n in range(3):
        api.usage(id=f"t{n}", quantity=n + 1)
    # When the ledger is read two entries at a time
    first = api.transactions("cus_A", limit="2").body
    second = api.transactions("cus_A", limit="2", cursor=first["next_cursor"]).body
    # Then entries come newest first with running balances, and the pages join up
    entries = first["data"] + second["data"]
    assert [e["id"] for e in entries] == [
        "usage:cus_A:t2",
        "usage:cus_A:t1",
        "usage:cus_A:t0",
        entries[3]["id"],
    ]
    assert entries[3]["type"] == "grant" and entries[3]["id"].startswith("grant:")
    assert [e["amount"] for e in entries] == ["-3", "-2", "-1", "10"]
    assert [e["balance_after"] for e in entries] == ["4", "7", "9", "10"]
    assert first["has_more"] is True
    assert entries[0]["allocations"][0]["amount"] == "3"
    assert entries[0]["created_at"].endswith("Z")
    assert "fingerprint" not in entries[0]


def test_sample_transactions_event(api: Api) -> None:
    api.grant("cus_NffrFeUfNV2Hib", "5")
    reply = api.call("transactions")
    assert reply.status == 200
    assert [e["type"] for e in reply.body["data"]] == ["grant"]


@pytest.mark.parametrize(
    ("route", "query", "field"),
    [
        ("transactions", {"limit": "101"}, "limit"),
        ("transactions", {"limit": "0"}, "limit"),
        ("transactions", {"limit": "ten"}, "limit"),
        ("grants", {"limit": "101"}, "limit"),
        ("grants", {"status": "spent"}, "status"),
    ],
)
def test_bad_query_parameters_are_422_naming_them(
    api: Api, route: str, query: dict[str, str], field: str
) -> None:
    reply = getattr(api, route)("cus_A", **query)
    assert reply.status == 422
    assert reply.error["code"] == "invalid_request"
    assert reply.fields() == [field]


@pytest.mark.parametrize("cursor", ["garbage!", "eyJhIjogMX0=", "W10="])
@pytest.mark.parametrize("route", ["transactions", "grants"])
def test_a_cursor_this_api_did_not_return_is_400_naming_cursor(api: Api, route: str, cursor: str) -> None:
    reply = getattr(api, route)("cus_A", cursor=cursor)
    assert reply.status == 400
    assert reply.error["code"] == "invalid_request"
    assert reply.fields() == ["cursor"]


def test_a_cursor_of_another_account_is_400(api: Api) -> None:
    for n in range(3):
        api.grant("cus_A", str(n + 1))
    cursor = api.transactions("cus_A", limit="1").body["next_cursor"]
    reply = api.transactions("cus_B", cursor=cursor)
    assert reply.status == 400
    assert reply.fields() == ["cursor"]


@pytest.mark.parametrize("route", ["balance", "grants", "transactions"])
def test_a_key_limited_to_accounts_cannot_read_others(api: Api, route: str) -> None:
    api.grant("cus_B", "5")
    key = api.issue_key(["balance:read"], customers=["cus_A"])
    assert getattr(api, route)("cus_A", key=key).status == 200
    denied = getattr(api, route)("cus_B", key=key)
    assert denied.status == 403
    assert denied.error["code"] == "forbidden"


@pytest.mark.parametrize("route", ["balance", "grants", "transactions"])
def test_reading_needs_balance_read(api: Api, route: str) -> None:
    key = api.issue_key(["usage:write"])
    assert getattr(api, route)("cus_A", key=key).status == 403


@pytest.mark.parametrize("path", ["/v1/customers/{customer}/grants", "/v1/customers/{customer}/transactions"])
def test_the_cursor_format_is_stated_and_every_cursor_the_api_returns_fits_it(api: Api, path: str) -> None:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    [cursor] = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "cursor"]
    pattern = (
        cursor["schema"]["anyOf"][0]["pattern"]
        if "anyOf" in cursor["schema"]
        else cursor["schema"]["pattern"]
    )
    for n in range(3):
        assert api.grant("cus_cursor", "1", id=f"g{n}").status == 201
    reply = api.call(
        "grants_list" if path.endswith("grants") else "transactions",
        path=path.replace("{customer}", "cus_cursor"),
        query={"limit": "1"},
    )
    assert reply.status == 200 and reply.body["has_more"], reply.raw
    assert re.fullmatch(pattern, reply.body["next_cursor"])
    outside = api.call(
        "grants_list" if path.endswith("grants") else "transactions",
        path=path.replace("{customer}", "cus_cursor"),
        query={"cursor": "not*a*cursor"},
    )
    assert outside.status == 400 and outside.fields() == ["cursor"], outside.raw
