"""Fuzzing the request path: random and half-valid bodies, query strings and keys through the handler.
Whatever arrives: never a 5xx, always the contract's error shape, and a rejected request moves no credit."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_api_support import ADMIN_KEY, NO_KEY, Api

pytest_plugins = ["tests.integration.test_api_support"]

CUSTOMERS = ["cus_A", "cus_B"]
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
amounts = st.one_of(
    st.integers(min_value=-(10**22), max_value=10**22),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=-5, max_value=5, places=8).map(str),
    st.floats(),
    st.sampled_from(["1", "0.5", "3", "1e400", "-0", "0.0000001", " 1", "1_000", "", "Infinity"]),
    json_values,
)
times = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["2024-01-01T00:00:00Z", "now", "", "2024-02-30T00:00:00Z", "9999-12-31T23:59:59+14:00"]),
    json_values,
)
ids = st.one_of(st.text(min_size=0, max_size=300), st.sampled_from(["e1", "e2", "e3"]), json_values)
usage_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "customer": st.one_of(st.sampled_from(CUSTOMERS + ["cus_C"]), st.text(max_size=10), json_values),
        "meter": st.one_of(st.sampled_from(["api_call", "storage_gb_hour", "nope"]), json_values),
        "quantity": amounts,
        "timestamp": times,
        "metadata": st.one_of(
            st.dictionaries(st.text(max_size=45), st.text(max_size=20), max_size=4), json_values
        ),
        "unexpected": json_values,
    },
)
# Mostly valid events (one field at a time may be odd), so debits, replays, 402 and 409 happen too.
near_valid_usage = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["n1", "n2", "n3", "n4"]),
        "customer": st.sampled_from(CUSTOMERS),
        "meter": st.sampled_from(["api_call", "storage_gb_hour"]),
        "quantity": st.one_of(st.sampled_from(["1", "2", "0.5", "5000"]), amounts),
    },
    optional={
        "timestamp": times,
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    },
)
grant_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "amount": amounts,
        "category": st.one_of(st.sampled_from(["paid", "promotional", "gift"]), json_values),
        "priority": st.one_of(st.integers(-5, 10**7), json_values),
        "effective_at": times,
        "expires_at": times,
        "reason": st.one_of(st.text(max_size=600), json_values),
    },
)
bodies = st.one_of(
    near_valid_usage.map(json.dumps),
    usage_bodies.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=50),
    st.builds(
        lambda events: json.dumps({"events": events}), st.lists(usage_bodies | near_valid_usage, max_size=5)
    ),
)
queries = st.dictionaries(
    st.sampled_from(["limit", "cursor", "status", "other"]),
    st.one_of(
        st.text(max_size=30), st.integers(-5, 200).map(str), st.sampled_from(["all", "active", "W10="])
    ),
    max_size=3,
)
keys = st.sampled_from(["admin", "scoped", "none", "garbage"])


def _setup(api: Api, state: dict[str, Any]) -> None:
    if state:
        return
    for customer in CUSTOMERS:
        assert api.grant(customer, "1000").status == 201
    state["scoped"] = api.issue_key(["usage:write", "balance:read"], customers=["cus_A"])


def _key(state: dict[str, Any], which: str) -> Any:
    return {"admin": ADMIN_KEY, "scoped": state.get("scoped"), "none": NO_KEY, "garbage": "ck_0_x"}[which]


def _check(api: Api, event: dict[str, Any], state: dict[str, Any]) -> None:
    before = api.ledger_snapshot(*CUSTOMERS)
    reply = api.invoke(event)
    assert reply.status < 500, (event, reply.raw)
    assert reply.headers["x-request-id"] == event["requestContext"]["requestId"]
    body = reply.body
    rejected = reply.status >= 400
    if rejected:
        assert set(reply.error) <= {"code", "message", "details"}
        assert "Traceback" not in reply.raw["body"]
    elif isinstance(body, dict) and "results" in body:
        rejected = all(r["status"] != "debited" for r in body["results"])
    if rejected:
        assert api.ledger_snapshot(*CUSTOMERS) == before, (event, reply.raw)


@FUZZ
@given(raw=bodies, which=keys, route=st.sampled_from(["usage", "usage_batch"]))
def test_usage_routes_never_fail_and_rejections_change_nothing(
    api: Api, raw: str, which: str, route: str
) -> None:
    state = api.__dict__.setdefault("fuzz_state", {})
    _setup(api, state)
    _check(api, api.event(route, key=_key(state, which), raw_body=raw), state)


@FUZZ
@given(body=grant_bodies, which=keys, customer=st.sampled_from(CUSTOMERS))
def test_admin_grants_never_fail(api: Api, body: dict[str, Any], which: str, customer: str) -> None:
    state = api.__dict__.setdefault("fuzz_state", {})
    _setup(api, state)
    event = api.event("grant_create", key=_key(state, which), raw_body=json.dumps(body))
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/v1/customers/{customer}/grants"
    _check(api, event, state)


@FUZZ
@given(
    query=queries,
    which=keys,
    route=st.sampled_from(["balance", "grants_list", "transactions", "grant_void", "api_key_revoke"]),
    customer=st.one_of(
        st.sampled_from(CUSTOMERS), st.text(alphabet="abcdefgh_-.~%:", min_size=1, max_size=20)
    ),
)
def test_reads_and_other_routes_never_fail(
    api: Api, query: dict[str, str], which: str, route: str, customer: str
) -> None:
    state = api.__dict__.setdefault("fuzz_state", {})
    _setup(api, state)
    event = api.event(route, key=_key(state, which), query=query)
    if route in ("balance", "grants_list", "transactions"):
        suffix = {"balance": "balance", "grants_list": "grants", "transactions": "transactions"}[route]
        event["rawPath"] = event["requestContext"]["http"]["path"] = f"/v1/customers/{customer}/{suffix}"
    elif route == "grant_void":
        event["rawPath"] = event["requestContext"]["http"]["path"] = f"/v1/grants/{customer}/void"
    _check(api, event, state)
