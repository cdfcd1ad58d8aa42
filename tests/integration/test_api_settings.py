"""PUT/GET /v1/customers/{customer}/settings: the per-account low-balance threshold (admin only)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_api_support import Api

pytest_plugins = ["tests.integration.test_api_support"]

PATH = "/v1/customers/cus_A/settings"


def put(api: Api, body: Any, key: str | None = None, path: str = PATH) -> Any:
    overrides: dict[str, Any] = {"body": body, "path": path}
    if key is not None:
        overrides["key"] = key
    return api.call("settings_put", **overrides)


def test_sample_put_stores_the_threshold(api: Api) -> None:
    # When the sample settings event is sent
    reply = api.call("settings_put")
    # Then the threshold is stored and read back
    assert reply.status == 200, reply.raw
    assert reply.body["low_balance_threshold"] == "250"
    assert reply.body["effective_low_balance_threshold"] == "250"
    again = api.call("settings_get")
    assert again.status == 200
    assert again.body["low_balance_threshold"] == "250"


def test_never_set_reads_the_pricing_default_and_null_resets_it(api: Api) -> None:
    # Given an account that never had settings
    fresh = api.call("settings_get", path=PATH)
    assert fresh.status == 200
    assert fresh.body["low_balance_threshold"] is None
    default = fresh.body["effective_low_balance_threshold"]
    # When a threshold is set, then reset with null
    assert put(api, {"low_balance_threshold": "12.5"}).body["effective_low_balance_threshold"] == "12.5"
    reset = put(api, {"low_balance_threshold": None})
    # Then the default applies again
    assert reset.status == 200
    assert (reset.body["low_balance_threshold"], reset.body["effective_low_balance_threshold"]) == (
        None,
        default,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"low_balance_threshold": "-1"}, "low_balance_threshold"),
        ({"low_balance_threshold": "0.0000001"}, "low_balance_threshold"),
        ({"low_balance_threshold": "abc"}, "low_balance_threshold"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_settings_are_422_naming_the_field(api: Api, body: Any, field: str) -> None:
    # When invalid settings are sent
    reply = put(api, body)
    # Then 422 names the field and nothing is stored
    assert reply.status == 422, reply.raw
    assert reply.error["code"] == "invalid_request"
    assert field in reply.fields()
    assert api.call("settings_get", path=PATH).body["low_balance_threshold"] is None


def test_settings_need_an_admin_key_for_that_account(api: Api) -> None:
    # Given a key without the admin scope
    reader = api.issue_key(["balance:read", "usage:write"])
    # When it tries to change settings / Then 403 and nothing changes
    reply = put(api, {"low_balance_threshold": "5"}, key=reader)
    assert reply.status == 403
    assert reply.error["code"] == "forbidden"
    assert api.call("settings_get", path=PATH).body["low_balance_threshold"] is None
    # And without any key it is 401
    assert put(api, {"low_balance_threshold": "5"}, key="ck_nope_nope").status == 401


def test_a_body_that_is_not_an_object_is_400(api: Api) -> None:
    # the settings route validates its body like every route: not a JSON object is a bad request
    reply = put(api, ["not", "an", "object"])
    assert reply.status == 400, reply.raw
    assert reply.error["code"] == "invalid_request"
    assert api.call("settings_get", path=PATH).body["low_balance_threshold"] is None
