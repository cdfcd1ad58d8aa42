"""Error handling through the handler: the contract's error shape for every status, X-Request-Id on every
response, no internal detail in any body, 5xx logged with the request id."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from credits_dev.lambda_context import FakeLambdaContext
from credits_dev.local.template import load_yaml
from credits_ledger.domain.errors import ConcurrencyConflict
from tests.integration.test_api_support import EVENTS, NO_KEY, Api, load_event
from tests.support.faults import lose_every_race

pytest_plugins = ["tests.integration.test_api_support"]

SAMPLES = sorted(p.stem for p in Path(EVENTS).glob("*.json"))
USAGE = {"id": "evt_race", "customer": "cus_A", "meter": "api_call", "quantity": 1}


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_event_answers_with_its_request_id(api: Api, name: str) -> None:
    event = load_event(name)
    reply = api.invoke(event)
    assert reply.status < 500, reply.raw
    assert reply.headers["x-request-id"] == event["requestContext"]["requestId"]
    assert reply.headers["cache-control"] == "no-store"


def test_health_needs_no_key(api: Api) -> None:
    reply = api.call("health", key=NO_KEY)
    assert reply.status == 200
    assert reply.body == {"status": "ok"}


def test_a_body_over_256_kb_is_413(api: Api) -> None:
    api.grant("cus_A", "5")
    body = {
        "id": "big",
        "customer": "cus_A",
        "meter": "api_call",
        "quantity": 1,
        "metadata": {"x": "y" * 300_000},
    }
    reply = api.call("usage", body=body)
    assert reply.status == 413
    assert reply.error["code"] == "payload_too_large"
    assert api.available("cus_A") == "5"


@pytest.mark.parametrize(
    "raw", ["{", "not json", '{"id": "x",}', "[" * 100_000, '{"quantity": ' + "9" * 5000 + "}"]
)
def test_malformed_json_is_400(api: Api, raw: str) -> None:
    reply = api.call("usage", raw_body=raw)
    assert reply.status == 400
    assert reply.error["code"] == "invalid_request"
    assert reply.fields() == ["body"]


def test_malformed_json_without_a_key_is_401(api: Api) -> None:
    assert api.call("usage", key=NO_KEY, raw_body="{").status == 401


def test_a_base64_encoded_body_is_read(api: Api) -> None:
    api.grant("cus_A", "5")
    event = api.event("usage", body={"id": "b64", "customer": "cus_A", "meter": "api_call", "quantity": 2})
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    assert api.invoke(event).status == 201
    assert api.available("cus_A") == "3"


def test_a_body_that_is_not_utf8_is_rejected_without_a_5xx(api: Api) -> None:
    event = api.event("usage")
    event["body"] = base64.b64encode(b"\xff\xfe{").decode()
    event["isBase64Encoded"] = True
    reply = api.invoke(event)
    assert reply.status == 400
    assert reply.error["code"] == "invalid_request"


def test_another_content_type_is_415(api: Api) -> None:
    reply = api.call("usage", headers={"content-type": "text/plain"})
    assert reply.status == 415
    assert reply.error["code"] == "invalid_request"


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "text/json",
        "application/problem+json",
    ],
)
def test_form_bodies_are_415_never_500(api: Api, content_type: str) -> None:
    # Powertools parses forms itself; a multipart type without a boundary made it fail with a 500
    reply = api.call("usage", headers={"content-type": content_type})
    assert reply.status == 415, reply.raw
    assert reply.error["code"] == "invalid_request"


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/JSON", "Application/Json ;charset=UTF-8"]
)
def test_json_in_any_case_and_with_a_charset_is_json(api: Api, content_type: str) -> None:
    # a media type is case-insensitive; Powertools' own check is not (it answered 415)
    api.grant("cus_NffrFeUfNV2Hib", "10")
    assert api.call("usage", headers={"content-type": content_type}).status == 201


@pytest.mark.parametrize("raw", ["[null, null]", "[]", "42", '"text"', "null"])
def test_a_body_that_is_not_an_object_is_400(api: Api, raw: str) -> None:
    for route in ("usage", "api_key_create"):
        reply = api.call(route, raw_body=raw)
        assert reply.status == 400, (route, reply.raw)
        assert reply.error["code"] == "invalid_request"


def test_an_unknown_route_is_404_in_the_contract_shape(api: Api) -> None:
    reply = api.call("health", path="/v1/nothing-here")
    assert reply.status == 404
    assert reply.error["code"] == "not_found"


def test_too_many_concurrent_writers_is_429_with_retry_after(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.grant("cus_A", "5")

    def give_up(*args: Any, **kwargs: Any) -> Any:
        raise ConcurrencyConflict("account cus_A: gave up after 60 conflicting writes")

    monkeypatch.setattr(api.ledger(), "debit", give_up)
    reply = api.usage()
    assert reply.status == 429
    assert reply.error["code"] == "rate_limited"
    assert reply.headers["retry-after"] == "1"
    assert "60" not in reply.error["message"]


def test_a_debit_that_keeps_losing_races_answers_429_before_the_invocation_runs_out(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.grant("cus_A", "5")
    commits = lose_every_race(monkeypatch, api.ledger().repository)
    # 1.8 s left in the invocation: no pause starts that would end less than ANSWER_MARGIN_SECONDS +
    # ATTEMPT_SECONDS before the invocation does
    context = FakeLambdaContext("ApiFunction", timeout_s=1.8)
    began = time.monotonic()
    raw = api.module.lambda_handler(api.event("usage", body=USAGE), context)
    assert raw["statusCode"] == 429
    assert raw["headers"]["Retry-After"] == "1"
    assert time.monotonic() - began < 1.8  # answered while the invocation still ran
    assert 1 <= len(commits) < 60  # gave up on time, not on the attempt budget
    assert api.available("cus_A") == "5"


def test_a_batch_that_keeps_losing_races_answers_in_time_and_writes_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.grant("cus_A", "5")
    api.grant("cus_B", "5")
    tried = lose_every_race(monkeypatch, api.ledger().repository)
    events = [{**USAGE, "id": "evt_a"}, {**USAGE, "id": "evt_b", "customer": "cus_B"}]
    context = FakeLambdaContext("ApiFunction", timeout_s=1.8)
    began = time.monotonic()
    raw = api.module.lambda_handler(api.event("usage_batch", body={"events": events}), context)
    assert time.monotonic() - began < 1.8
    assert raw["statusCode"] == 200
    results = json.loads(raw["body"])["results"]
    assert [(r["id"], r["status"], r["error"]["code"]) for r in results] == [
        ("evt_a", "rejected", "rate_limited"),
        ("evt_b", "rejected", "rate_limited"),
    ]
    assert len(tried) < 60  # time, not the attempt budget of either account, ended the batch
    assert (api.available("cus_A"), api.available("cus_B")) == ("5", "5")


def test_without_a_deadline_the_attempt_budget_bounds_the_retries(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.grant("cus_A", "5")
    commits = lose_every_race(monkeypatch, api.ledger().repository)
    monkeypatch.setattr(api.ledger(), "_sleep", lambda seconds: None)
    reply = api.invoke(api.event("usage", body=USAGE))  # 10 s left: time is never what stops it here
    assert reply.status == 429
    # one commit alone, then the account's queue committed by this writer, which gave up after 60
    assert len(commits) == 1 + 60


@pytest.fixture
def log_lines(api: Api) -> Iterator[io.StringIO]:
    """What the function logs, as Powertools formats it (JSON lines)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(api.module.logger.registered_formatter)
    target = logging.getLogger(api.module.logger.name)
    target.addHandler(handler)
    yield stream
    target.removeHandler(handler)


def test_an_unexpected_error_is_500_with_the_request_id_and_no_detail(
    api: Api, monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    # Given a data layer that fails in an unexpected way
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail at /var/task/credits_ledger/dal/accounts.py")

    monkeypatch.setattr(api.ledger(), "balance", broken)
    # When the balance is read
    event = api.event("balance")
    reply = api.invoke(event)
    # Then 500 internal, naming the request id but nothing internal
    request_id = event["requestContext"]["requestId"]
    assert reply.status == 500
    assert reply.error == {"code": "internal", "message": f"internal error; request id {request_id}"}
    assert reply.headers["x-request-id"] == request_id
    assert "secret" not in reply.raw["body"] and "Traceback" not in reply.raw["body"]
    # And the log has the exception with that request id as correlation id
    logged = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    errors = [entry for entry in logged if entry.get("level") == "ERROR"]
    assert errors and errors[-1]["correlation_id"] == request_id
    assert "secret internal detail" in errors[-1]["exception"]


def test_an_event_without_a_request_id_still_gets_one(api: Api) -> None:
    event = api.event("health")
    del event["requestContext"]["requestId"]
    reply = api.invoke(event)
    assert reply.status == 200
    assert len(reply.headers["x-request-id"]) == 36


# ---- a write DynamoDB rejects for good (issue 11): 500 once, logged for the WriteRejected alarm ------------
def _reject_writes_of(api: Api, monkeypatch: pytest.MonkeyPatch, customer: str) -> list[str]:
    """DynamoDB answers ValidationException (an item past 400 KB) to transactions on ``customer``'s account
    item; returns the accounts of every transaction sent."""
    client = api.ledger().repository._client
    real = client.transact_write_items
    sent: list[str] = []

    def transact_write_items(**params: Any) -> Any:
        account = params["TransactItems"][0]["Put"]["Item"]["pk"]["S"].removeprefix("ACCOUNT#")
        sent.append(account)
        if account == customer:
            raise ClientError(
                {
                    "Error": {
                        "Code": "ValidationException",
                        "Message": "Item size has exceeded the maximum allowed size",
                    }
                },
                "TransactWriteItems",
            )
        return real(**params)

    monkeypatch.setattr(client, "transact_write_items", transact_write_items)
    return sent


def _write_rejected_filter() -> str:
    template = load_yaml(Path(__file__).resolve().parents[2] / "template.yaml")
    return str(template["Resources"]["WriteRejectedMetricFilter"]["Properties"]["FilterPattern"])


def test_a_rejected_write_is_500_once_and_logged_for_the_alarm(
    api: Api, monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    api.grant("cus_A", "5")
    before = api.ledger_snapshot("cus_A")
    sent = _reject_writes_of(api, monkeypatch, "cus_A")
    reply = api.usage()
    assert reply.status == 500 and reply.error["code"] == "internal"
    assert "Item size" not in reply.raw["body"]
    assert sent == ["cus_A"]  # one send: not retried as a conflict
    assert api.ledger_snapshot("cus_A") == before
    logged = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    errors = [entry for entry in logged if entry.get("level") == "ERROR"]
    assert errors[-1]["failure"] == "write_rejected" and "Item size" in errors[-1]["error"]
    assert '$.failure = "write_rejected"' in _write_rejected_filter()


def test_a_rejected_account_in_a_batch_does_not_fail_the_others(
    api: Api, monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    api.grant("cus_A", "5")
    api.grant("cus_B", "5")
    sent = _reject_writes_of(api, monkeypatch, "cus_A")
    events = [
        {"id": "a1", "customer": "cus_A", "meter": "api_call", "quantity": 1},
        {"id": "b1", "customer": "cus_B", "meter": "api_call", "quantity": 1},
        {"id": "a2", "customer": "cus_A", "meter": "api_call", "quantity": 1},
    ]
    reply = api.call("usage_batch", body={"events": events})
    assert reply.status == 200, reply.raw
    results = {r["id"]: r for r in reply.body["results"]}
    assert results["b1"]["status"] == "debited"
    for rejected in ("a1", "a2"):
        assert results[rejected]["status"] == "rejected"
        assert results[rejected]["error"]["code"] == "internal"
    assert sorted(sent) == ["cus_A", "cus_B"]  # one transaction per account, none retried
    assert api.available("cus_A") == "5" and api.available("cus_B") == "4"
    logged = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    rejected_logs = [e for e in logged if e.get("failure") == "write_rejected"]
    assert len(rejected_logs) == 2 and {e["customer"] for e in rejected_logs} == {"cus_A"}
    assert '$.failure = "write_rejected"' in _write_rejected_filter()
