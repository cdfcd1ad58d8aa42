"""Admin grants (idempotent with an id) and voids through the handler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.test_api_support import Api

pytest_plugins = ["tests.integration.test_api_support"]


def test_sample_grant_creates_a_promotional_admin_grant(api: Api) -> None:
    # When the sample admin grant is posted
    reply = api.call("grant_create")
    # Then the grant is created with what was asked and the admin defaults
    assert reply.status == 201
    grant = reply.body
    assert grant["id"].startswith("gr_")
    assert grant["customer"] == "cus_NffrFeUfNV2Hib"
    assert (grant["amount"], grant["remaining"]) == ("500", "500")
    assert (grant["category"], grant["priority"], grant["status"]) == ("promotional", 10, "active")
    assert grant["source"] == {"type": "admin", "id": "promo-2024-05-welcome"}
    assert grant["cost_basis"] == {"amount": "0", "currency": None}
    assert grant["reason"] == "welcome bonus"
    assert grant["expires_at"] is None
    assert grant["effective_at"].endswith("Z") and grant["created_at"].endswith("Z")
    assert grant["metadata"] == {"granted_by": "bootstrap"}
    assert api.available("cus_NffrFeUfNV2Hib") == "500"


def test_grant_defaults_are_promotional_priority_50(api: Api) -> None:
    grant = api.grant("cus_A", "5").body
    assert (grant["category"], grant["priority"], grant["source"]["id"]) == ("promotional", 50, None)


def test_grant_with_an_id_is_idempotent(api: Api) -> None:
    first = api.grant("cus_A", "5", id="g-1", reason="sorry")
    again = api.grant("cus_A", "5", id="g-1", reason="sorry")
    assert (first.status, again.status) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.body == first.body
    assert api.available("cus_A") == "5"


def test_grants_without_an_id_are_each_new(api: Api) -> None:
    api.grant("cus_A", "5")
    api.grant("cus_A", "5")
    assert api.available("cus_A") == "10"


@pytest.mark.parametrize("change", [{"amount": "6"}, {"reason": "other"}, {"customer": "cus_B"}])
def test_same_grant_id_with_another_body_is_409(api: Api, change: dict[str, Any]) -> None:
    api.grant("cus_A", "5", id="g-2", reason="sorry")
    body = {"amount": "5", "id": "g-2", "reason": "sorry", **change}
    customer = body.pop("customer", "cus_A")
    reply = api.grant(customer, **body)
    assert reply.status == 409
    assert reply.error["code"] == "idempotency_mismatch"
    assert api.available("cus_A") == "5"
    assert api.available("cus_B") == "0"


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "-5"}, "amount"),
        ({"amount": "1.1234567"}, "amount"),
        ({"priority": -1}, "priority"),
        ({"priority": "1"}, "priority"),
        ({"category": "gift"}, "category"),
        ({"expires_at": _iso(timedelta(days=-1))}, "expires_at"),
        ({"effective_at": _iso(timedelta(days=3)), "expires_at": _iso(timedelta(days=2))}, "expires_at"),
        ({"expires_at": "2030-01-01"}, "expires_at"),
        ({"expires_at": "9999-12-31T23:59:59-01:00"}, "expires_at"),  # leaves datetime's range in UTC
        ({"expires_at": "3000-01-01T00:00:00Z"}, "expires_at"),  # past the expiry index key's range
        ({"effective_at": "0001-01-01T00:00:00+01:00"}, "effective_at"),
        ({"effective_at": "1969-12-31T23:59:59Z"}, "effective_at"),  # before the epoch
    ],
)
def test_invalid_grants_are_422_naming_the_field(api: Api, fields: dict[str, Any], field: str) -> None:
    reply = api.grant("cus_A", **{"amount": "5", **fields})
    assert reply.status == 422, reply.raw
    assert reply.error["code"] == "invalid_request"
    assert field in reply.fields()
    assert api.available("cus_A") == "0"


def test_void_takes_what_remains_and_returns_the_grant(api: Api) -> None:
    # Given a grant of 10 of which 4 were spent
    grant = api.grant("cus_A", "10").body["id"]
    api.usage(quantity=4)
    # When it is voided
    reply = api.call("grant_void", path=f"/v1/grants/{grant}/void")
    # Then it is voided with nothing left, and the account lost the 6
    assert reply.status == 200
    assert (reply.body["id"], reply.body["status"], reply.body["remaining"]) == (grant, "voided", "0")
    assert api.available("cus_A") == "0"
    assert api.transactions("cus_A").body["data"][0]["amount"] == "-6"
    # And voiding it again changes nothing
    again = api.call("grant_void", path=f"/v1/grants/{grant}/void")
    assert again.status == 200 and again.body["status"] == "voided"
    assert len(api.transactions("cus_A").body["data"]) == 3


def test_voiding_a_depleted_grant_returns_it_as_it_is(api: Api) -> None:
    grant = api.grant("cus_A", "2").body["id"]
    api.usage(quantity=2)
    reply = api.call("grant_void", path=f"/v1/grants/{grant}/void")
    assert reply.status == 200
    assert reply.body["status"] == "depleted"


def test_voiding_an_unknown_grant_is_404(api: Api) -> None:
    reply = api.call("grant_void")
    assert reply.status == 404
    assert reply.error["code"] == "not_found"


@pytest.mark.parametrize("scopes", [["usage:write", "balance:read"]])
def test_admin_routes_need_the_admin_scope(api: Api, scopes: list[str]) -> None:
    grant = api.grant("cus_A", "5").body["id"]
    key = api.issue_key(scopes)
    assert api.grant("cus_A", "5", key=key).status == 403
    assert api.call("grant_void", key=key, path=f"/v1/grants/{grant}/void").status == 403
    assert api.available("cus_A") == "5"
