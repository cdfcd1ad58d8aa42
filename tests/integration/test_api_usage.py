"""POST /v1/usage through the handler: debits now, replays, mismatches, 402 and per-field validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.test_api_support import NO_KEY, Api

pytest_plugins = ["tests.integration.test_api_support"]


def test_usage_debits_quantity_times_rate_now(api: Api) -> None:
    # Given an account with 100 credits
    grant = api.grant("cus_NffrFeUfNV2Hib", "100").body
    # When the sample usage event (3 api calls) is reported
    reply = api.call("usage")
    # Then 3 credits are debited from that grant and the answer says what is left
    assert reply.status == 201
    assert reply.body == {
        "id": "evt_0001",
        "customer": "cus_NffrFeUfNV2Hib",
        "meter": "api_call",
        "quantity": "3",
        "credits": "3",
        "balance": "97",
        "status": "debited",
        "allocations": [{"grant_id": grant["id"], "amount": "3"}],
    }
    assert "idempotent-replayed" not in reply.headers
    assert api.available("cus_NffrFeUfNV2Hib") == "97"


def test_replay_returns_the_first_answer_and_debits_once(api: Api) -> None:
    # Given a usage event that was debited
    api.grant("cus_A", "10")
    first = api.usage(id="evt_r", quantity=4)
    # When the same id and body arrive again
    again = api.usage(id="evt_r", quantity=4)
    # Then the first answer comes back with 200 and the replay header, and nothing is debited twice
    assert first.status == 201
    assert again.status == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.body == first.body
    assert api.available("cus_A") == "6"
    assert len(api.transactions("cus_A").body["data"]) == 2


def test_replay_is_recognised_however_the_quantity_is_spelled(api: Api) -> None:
    api.grant("cus_A", "10")
    assert api.usage(id="evt_s", quantity="2.50").status == 201
    again = api.usage(id="evt_s", quantity=2.5)
    assert again.status == 200
    assert again.body["quantity"] == "2.5"
    assert api.available("cus_A") == "7.5"


@pytest.mark.parametrize(
    "change",
    [{"quantity": 5}, {"meter": "storage_gb_hour"}, {"metadata": {"k": "v"}}],
    ids=["quantity", "meter", "metadata"],
)
def test_same_id_with_another_body_is_409_and_debits_nothing(api: Api, change: dict[str, Any]) -> None:
    # Given a debited usage event and credits on both accounts
    api.grant("cus_A", "50")
    api.grant("cus_B", "50")
    assert api.usage(id="evt_m", quantity=4).status == 201
    before = api.ledger_snapshot("cus_A", "cus_B")
    # When the same id comes for the same customer with another body
    reply = api.usage(id="evt_m", **{"quantity": 4, **change})
    # Then 409 and no balance moves
    assert reply.status == 409
    assert reply.error["code"] == "idempotency_mismatch"
    assert api.ledger_snapshot("cus_A", "cus_B") == before


def test_the_same_id_for_another_customer_is_another_event(api: Api) -> None:
    # Given a key limited to cus_A that used the id evt_shared first (it could guess cus_B's next id)
    api.grant("cus_A", "50")
    api.grant("cus_B", "50")
    claimer = api.issue_key(["usage:write"], customers=["cus_A"])
    assert api.usage(key=claimer, id="evt_shared", customer="cus_A", quantity=4).status == 201
    # When cus_B's application reports its own event with that id, other body included
    first = api.usage(id="evt_shared", customer="cus_B", quantity=7)
    again = api.usage(id="evt_shared", customer="cus_B", quantity=7)
    # Then it is debited from cus_B (never 409), replays answer cus_B's event, and cus_A is untouched
    assert first.status == 201, first.body
    assert first.body["customer"] == "cus_B" and first.body["credits"] == "7"
    assert again.status == 200 and again.body == first.body
    assert api.available("cus_A") == "46"
    assert api.available("cus_B") == "43"
    assert api.usage(key=claimer, id="evt_shared", customer="cus_A", quantity=4).status == 200
    assert api.transactions("cus_B").body["data"][0]["reference"] == "evt_shared"


def test_not_enough_credits_is_402_and_nothing_is_debited(api: Api) -> None:
    # Given 2 credits
    api.grant("cus_A", "2")
    before = api.ledger_snapshot("cus_A")
    # When 3 are used
    reply = api.usage(quantity=3)
    # Then 402 and the account is as it was
    assert reply.status == 402
    assert reply.error["code"] == "insufficient_credits"
    assert api.ledger_snapshot("cus_A") == before
    assert api.available("cus_A") == "2"


def test_usage_for_an_account_that_never_had_credits_is_402(api: Api) -> None:
    reply = api.usage(customer="cus_never")
    assert reply.status == 402
    assert reply.error["code"] == "insufficient_credits"


def test_a_rejected_402_can_be_retried_with_the_same_id_after_a_top_up(api: Api) -> None:
    assert api.usage(id="evt_t", quantity=3).status == 402
    api.grant("cus_A", "5")
    assert api.usage(id="evt_t", quantity=3).status == 201
    assert api.available("cus_A") == "2"


def test_computed_debit_is_rounded_up_to_six_digits(api: Api) -> None:
    # 0.00001 GB-hours x 0.05 = 0.0000005 credits -> 0.000001
    api.grant("cus_A", "1")
    reply = api.usage(meter="storage_gb_hour", quantity="0.00001")
    assert reply.status == 201
    assert reply.body["credits"] == "0.000001"
    assert reply.body["balance"] == "0.999999"


def test_json_numbers_are_exact_decimals(api: Api) -> None:
    # 0.1 + 0.2 as floats is 0.30000000000000004; as decimals it is 0.3
    api.grant("cus_A", "1")
    api.usage(id="a", quantity=0.1)
    api.usage(id="b", quantity=0.2)
    assert api.available("cus_A") == "0.7"


def test_timestamp_and_metadata_are_recorded_on_the_ledger_entry(api: Api) -> None:
    api.grant("cus_A", "10")
    when = datetime.now(UTC) - timedelta(hours=2)
    reply = api.usage(id="evt_ts", timestamp=when.isoformat(), metadata={"endpoint": "/search"})
    assert reply.status == 201
    entry = api.transactions("cus_A").body["data"][0]
    assert entry["id"] == "usage:cus_A:evt_ts"
    assert entry["reference"] == "evt_ts"
    assert entry["metadata"]["endpoint"] == "/search"
    assert entry["metadata"]["timestamp"] == when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert entry["metadata"]["meter"] == "api_call"


def _ago(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).isoformat()


INVALID = [
    ({"meter": "gpu_second"}, "meter"),
    ({"quantity": 0}, "quantity"),
    ({"quantity": -1}, "quantity"),
    ({"quantity": "0"}, "quantity"),
    ({"quantity": "1.0000001"}, "quantity"),
    ({"quantity": 1.0000001}, "quantity"),
    ({"quantity": "abc"}, "quantity"),
    ({"quantity": True}, "quantity"),
    ({"quantity": "NaN"}, "quantity"),
    ({"quantity": "1e3"}, "quantity"),
    ({"quantity": 10**20}, "quantity"),
    ({"timestamp": _ago(timedelta(days=-1))}, "timestamp"),  # (computed at collection: keep it far ahead)
    ({"timestamp": _ago(timedelta(days=36))}, "timestamp"),
    ({"timestamp": "2024-05-01T12:00:00"}, "timestamp"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": 1716557826}, "timestamp"),
    ({"timestamp": "0001-01-01T00:00:00+01:00"}, "timestamp"),  # before datetime's range once in UTC
    ({"timestamp": "9999-12-31T23:59:59-01:00"}, "timestamp"),  # after it
    ({"id": ""}, "id"),
    ({"id": 42}, "id"),
    ({"customer": None}, "customer"),
    ({"customer": "org/42"}, "customer"),  # an account id is a path segment of the API
    ({"customer": "team \N{GRINNING FACE}"}, "customer"),
    ({"metadata": {"meter": "x"}}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("change", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_invalid_usage_is_422_naming_the_field_and_changes_nothing(
    api: Api, change: dict[str, Any], field: str
) -> None:
    # Given an account with credits
    api.grant("cus_A", "100")
    before = api.ledger_snapshot("cus_A")
    # When an invalid usage event arrives
    reply = api.usage(**change)
    # Then 422 invalid_request names the field, and nothing is debited
    assert reply.status == 422, reply.raw
    assert reply.error["code"] == "invalid_request"
    assert field in reply.fields()
    assert api.ledger_snapshot("cus_A") == before


def test_missing_fields_are_each_named(api: Api) -> None:
    reply = api.call("usage", body={"quantity": 1})
    assert reply.status == 422
    assert {"id", "customer", "meter"} <= set(reply.fields())


def test_timestamp_within_the_window_is_accepted(api: Api) -> None:
    api.grant("cus_A", "10")
    assert api.usage(id="e1", timestamp=_ago(timedelta(days=34))).status == 201
    assert api.usage(id="e2", timestamp=_ago(timedelta(minutes=-4))).status == 201
    assert api.usage(id="e3", timestamp="2099-01-01T00:00:00+02:00").status == 422


def test_usage_needs_a_key(api: Api) -> None:
    api.grant("cus_A", "10")
    reply = api.call("usage", key=NO_KEY)
    assert reply.status == 401
    assert reply.error["code"] == "unauthorized"
    assert reply.headers["www-authenticate"] == "Bearer"
    assert api.available("cus_A") == "10"


def test_an_invalid_body_without_a_key_is_401_not_422(api: Api) -> None:
    reply = api.call("usage", key=NO_KEY, body={"quantity": -1})
    assert reply.status == 401
