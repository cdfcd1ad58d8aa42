"""Reservation routes through the real API handler on moto: every route's success and failure paths."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration.test_api_support import Api, Reply

pytest_plugins = ["tests.integration.test_api_support"]

D = Decimal


def reserve(api: Api, key: str | None = None, **fields: Any) -> Reply:
    body = {"id": "job-1", "customer": "cus_A", "credits": "30", **fields}
    return api.call("reservation_create", body=body, **({"key": key} if key else {}))


def act(api: Api, action: str, rid: str = "job-1", body: Any = None, **overrides: Any) -> Reply:
    return api.call(
        f"reservation_{action}",
        path=f"/v1/reservations/{rid}/{action}",
        **({"body": body} if body is not None else {}),
        **overrides,
    )


def get(api: Api, rid: str = "job-1", **overrides: Any) -> Reply:
    return api.call("reservation_get", path=f"/v1/reservations/{rid}", **overrides)


def balance(api: Api, customer: str = "cus_A") -> dict[str, Any]:
    reply = api.balance(customer)
    assert reply.status == 200, reply.raw
    return dict(reply.body)


@pytest.fixture
def funded(api: Api) -> Api:
    assert api.grant("cus_A", "100").status == 201
    return api


def test_reserve_holds_credits_and_the_balance_shows_them_reserved(funded: Api) -> None:
    reply = reserve(funded, expires_in=7200, metadata={"job": "render"})
    assert reply.status == 201, reply.raw
    body = reply.body
    assert body["id"] == "job-1" and body["customer"] == "cus_A" and body["status"] == "active"
    assert body["credits"] == "30"
    assert [a["amount"] for a in body["allocations"]] == ["30"]
    assert body["expires_at"].endswith("Z")
    b = balance(funded)
    assert (b["available"], b["reserved"], b["ledger_balance"]) == ("70", "30", "100")
    # a usage debit cannot spend what is reserved
    assert funded.usage(quantity=71).status == 402
    assert funded.usage(id="evt_2", quantity=70).status == 201


def test_reserve_by_meter_is_priced_like_usage(funded: Api) -> None:
    reply = reserve(funded, credits=None, meter="storage_gb_hour", quantity="33")
    assert reply.status == 201, reply.raw
    assert reply.body["credits"] == "1.65"


def test_an_id_just_within_the_byte_limit_is_reserved(funded: Api) -> None:
    # 251 four-byte characters (1,004 bytes): the longest such id whose sweep key fits
    assert reserve(funded, id="\U00020000" * 251).status == 201  # a CJK ideograph: a letter of 4 bytes


@pytest.mark.parametrize("rid", ["job 42 (retry) [eu]", "t\u00e2che-7", "\u4f5c\u696d:1", "a%20b"])
def test_every_id_the_api_takes_is_reached_by_its_path(funded: Api, rid: str) -> None:
    assert reserve(funded, id=rid).status == 201
    reply = get(funded, rid)  # the path as API Gateway hands it over: decoded
    assert reply.status == 200 and reply.body["id"] == rid, reply.raw
    assert act(funded, "release", rid).status == 200


def test_reserve_replays_and_409s(funded: Api) -> None:
    first = reserve(funded)
    again = reserve(funded)
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.body == first.body
    other = reserve(funded, credits="31")
    assert other.status == 409 and other.error["code"] == "idempotency_mismatch"
    funded.grant("cus_B", "100")
    assert reserve(funded, customer="cus_B").status == 409  # ids are unique across accounts
    assert balance(funded)["reserved"] == "30"


def test_not_enough_available_is_402_and_holds_nothing(funded: Api) -> None:
    before = funded.ledger_snapshot("cus_A")
    reply = reserve(funded, credits="100.000001")
    assert reply.status == 402 and reply.error["code"] == "insufficient_credits"
    assert funded.ledger_snapshot("cus_A") == before
    assert get(funded).status == 404


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"credits": "0"}, "credits"),
        ({"credits": "-1"}, "credits"),
        ({"credits": "1.0000001"}, "credits"),
        ({"credits": None}, "body"),
        ({"meter": "api_call", "quantity": 2}, "body"),
        ({"credits": None, "meter": "nope", "quantity": 2}, "meter"),
        ({"expires_in": 59}, "expires_in"),
        ({"expires_in": 2_592_001}, "expires_in"),
        ({"expires_in": "600"}, "expires_in"),
        ({"id": ""}, "id"),
        # 252 characters, 1,008 bytes: its sweep key <epoch>#<id> would pass DynamoDB's 1,024-byte sort key
        ({"id": "\U00020000" * 252}, "id"),
        # an id that no route could reach by its path (an emoji, a slash), and such an account
        ({"id": "job \N{GRINNING FACE}"}, "id"),
        ({"id": "job/42"}, "id"),
        ({"customer": "org/42"}, "customer"),
    ],
)
def test_invalid_reservations_are_422_and_change_nothing(
    funded: Api, fields: dict[str, Any], field: str
) -> None:
    before = funded.ledger_snapshot("cus_A")
    body = {"id": "job-1", "customer": "cus_A", "credits": "30", **fields}
    reply = funded.call("reservation_create", body={k: v for k, v in body.items() if v is not None})
    assert reply.status == 422, reply.raw
    assert reply.error["code"] == "invalid_request"
    assert field in reply.fields() or field == "body", reply.fields()
    assert funded.ledger_snapshot("cus_A") == before


def test_capture_debits_what_was_used_releases_the_rest_and_answers_once(funded: Api) -> None:
    reserve(funded, credits="60")
    reply = act(funded, "capture", body={"credits": "25"})
    assert reply.status == 200, reply.raw
    assert reply.body == {
        "id": "job-1",
        "status": "captured",
        "captured": "25",
        "released": "35",
        "balance": "75",
    }
    again = act(funded, "capture", body={"credits": "50"})
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.body == reply.body
    b = balance(funded)
    assert (b["available"], b["reserved"], b["ledger_balance"]) == ("75", "0", "75")
    types = [e["type"] for e in funded.transactions("cus_A").body["data"]]
    assert types[:3] == ["unreserve", "debit", "reserve"]
    view = get(funded).body
    assert (view["status"], view["captured"], view["released"], view["held"]) == ("captured", "25", "35", "0")


def test_capture_defaults_to_everything_and_empty_body_works(funded: Api) -> None:
    reserve(funded, credits="60")
    reply = act(funded, "capture", body={})
    assert reply.status == 200, reply.raw
    assert (reply.body["captured"], reply.body["released"]) == ("60", "0")


def test_capture_above_the_reservation_is_422_unless_overrun(funded: Api) -> None:
    reserve(funded, credits="60")
    before = funded.ledger_snapshot("cus_A")
    refused = act(funded, "capture", body={"credits": "61"})
    assert refused.status == 422 and refused.fields() == ["credits"]
    assert act(funded, "capture", body={"credits": "101", "allow_overrun": True}).status == 402
    assert funded.ledger_snapshot("cus_A") == before
    ok = act(funded, "capture", body={"credits": "100", "allow_overrun": True})
    assert ok.status == 200 and ok.body["captured"] == "100" and ok.body["balance"] == "0"
    assert act(funded, "capture", body={"credits": "-1"}).status == 422
    assert act(funded, "capture", body={"allow_overrun": "yes"}).status == 422


def test_release_gives_everything_back_and_conflicting_ends_are_refused(funded: Api) -> None:
    reserve(funded, credits="60")
    reply = act(funded, "release")
    assert reply.status == 200
    assert reply.body == {"id": "job-1", "status": "released", "released": "60"}
    again = act(funded, "release")
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true"
    capture = act(funded, "capture", body={})
    assert capture.status == 422 and "released" in capture.error["message"]
    assert balance(funded)["available"] == "100"
    reserve(funded, id="job-2")
    act(funded, "capture", "job-2", body={})
    assert act(funded, "release", "job-2").status == 422


def test_extend_and_get(funded: Api) -> None:
    reserve(funded, expires_in=600)
    reply = act(funded, "extend", body={"expires_in": 86_400})
    assert reply.status == 200, reply.raw
    assert reply.body["status"] == "active" and reply.body["held"] == "30"
    assert get(funded).body["expires_at"] == reply.body["expires_at"]
    # at most 30 days after the reservation was created, extensions included
    too_late = act(funded, "extend", body={"expires_in": 2_592_000})
    assert too_late.status == 422 and too_late.fields() == ["expires_in"]
    assert act(funded, "extend", body={"expires_in": 2_591_000}).status == 200
    assert act(funded, "extend", body={"expires_in": 10}).status == 422
    assert act(funded, "extend", body={}).status == 422
    act(funded, "release")
    assert act(funded, "extend", body={"expires_in": 600}).status == 422


def test_unknown_reservations_are_404(funded: Api) -> None:
    for action in ("capture", "release", "extend"):
        reply = act(funded, action, rid="nope", body={"expires_in": 600} if action == "extend" else {})
        assert reply.status == 404 and reply.error["code"] == "not_found", action
    assert get(funded, rid="nope").status == 404


def test_scopes_and_account_limits_apply(funded: Api) -> None:
    reserve(funded)
    reader = funded.issue_key(["balance:read"])
    writer_b = funded.issue_key(["usage:write"], customers=["cus_B"])
    writer_a = funded.issue_key(["usage:write", "balance:read"], customers=["cus_A"])
    assert reserve(funded, key=reader, id="job-r").status == 403
    assert reserve(funded, key=writer_b, id="job-b").status == 403
    assert act(funded, "capture", body={}, key=writer_b).status == 403
    assert act(funded, "release", key=reader).status == 403
    assert get(funded, key=reader).status == 200
    assert get(funded, key=writer_b).status == 403
    assert act(funded, "capture", body={"credits": "1"}, key=writer_a).status == 200


def test_open_reservations_of_an_account(funded: Api) -> None:
    reserve(funded, id="a", credits="10", expires_in=600)
    reserve(funded, id="b", credits="20", expires_in=60)
    act(funded, "release", "a")
    reply = funded.call("reservations_list", path="/v1/customers/cus_A/reservations")
    assert reply.status == 200
    assert [(r["id"], r["status"], r["held"]) for r in reply.body["data"]] == [("b", "active", "20")]


def test_capture_without_a_body_captures_everything(funded: Api) -> None:
    reserve(funded, credits="60")
    event = funded.event("reservation_capture", path="/v1/reservations/job-1/capture")
    event.pop("body", None)
    reply = funded.invoke(event)
    assert reply.status == 200, reply.raw
    assert (reply.body["captured"], reply.body["released"]) == ("60", "0")
