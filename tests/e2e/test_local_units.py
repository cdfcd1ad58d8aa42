"""The local stack's pure parts, without starting anything: the template reader and its intrinsics, route
selection, API Gateway payload 2.0 events and responses, event patterns, schedules, and the runtime's
environment mode. Also: the project's own template.yaml is fully servable locally."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from credits_dev.local.apigw import Router, build_event, to_http_response
from credits_dev.local.patterns import matches
from credits_dev.local.runtime import FunctionRuntime, local_concurrency
from credits_dev.local.schedules import event_for, fire_after, next_fire, scheduled_event
from credits_dev.local.streams import to_lambda_record
from credits_dev.local.template import Function, LocalNames, Route, Schedule, load_stack
from tests.e2e.conftest import REPO_ROOT

UTC = dt.UTC


def write(tmp_path: Path, body: str) -> Path:
    for folder in ("fa", "fb", "layer"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "app.py").write_text("def handler(event, context):\n    return event\n")
    path = tmp_path / "template.yaml"
    path.write_text(textwrap.dedent(body))
    return path


TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: {Type: String, Default: dev}
  AdminKeyName: {Type: String, Default: /app/admin}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Mappings:
  Sizes: {dev: {memory: "256"}}
Globals:
  Function:
    Runtime: python3.13
    Timeout: 9
    Layers: [!Ref Shared]
    Environment:
      Variables:
        TABLE_NAME: !Ref Ledger
        SHARED: "yes"
Resources:
  Shared:
    Type: AWS::Serverless::LayerVersion
    Properties: {ContentUri: layer}
  Ledger:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub ledger-${Stage}
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}]
  Bus:
    Type: AWS::Events::EventBus
    Properties: {Name: !Sub "bus-${Stage}-${AWS::StackName}"}
  A:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fa
      Handler: app.handler
      MemorySize: !FindInMap [Sizes, !Ref Stage, memory]
      Environment:
        Variables:
          BUS: !Ref Bus
          BUS_ARN: !GetAtt Bus.Arn
          STREAM: !GetAtt Ledger.StreamArn
          JOINED: !Join ["-", [a, !Ref Stage, !Select [1, !Split [",", "x,y,z"]]]]
          MODE: !If [IsProd, strict, relaxed]
          ADMIN_KEY_PARAMETER: !Ref AdminKeyName
          ADMIN_KEY: !Ref AdminKeyName
          SUBBED: !Sub
            - "${Name}@${AWS::Region}/${Ledger.Arn}"
            - {Name: !Ref Stage}
          GONE: !Ref AWS::NoValue
      Events:
        Get: {Type: HttpApi, Properties: {Path: "/things/{id}", Method: get}}
        Any: {Type: HttpApi, Properties: {Path: "/things/{proxy+}", Method: ANY}}
        Nightly:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: cron(15 0 * * ? *)
            Input: !Sub '{"time": "<aws.scheduler.scheduled-time>", "account": "${AWS::AccountId}"}'
  B:
    Type: AWS::Serverless::Function
    Condition: IsProd
    Properties: {CodeUri: fb, Handler: app.handler}
"""


def test_template_reader_resolves_intrinsics(tmp_path: Path) -> None:
    overrides: list[tuple[str, str, Any]] = []

    def override(fn: str, var: str, value: Any) -> str | None:
        overrides.append((fn, var, value))
        return "LOCAL-SECRET" if var == "ADMIN_KEY" else None

    model = load_stack(write(tmp_path, TEMPLATE), env_overrides=override)
    assert set(model.functions) == {"A"}  # B's condition is false
    fn = model.functions["A"]
    assert (
        fn.environment
        == {
            "TABLE_NAME": "Ledger",  # a TableName that is not a literal: the logical id, as the local table is named
            "SHARED": "yes",
            "BUS": "bus-dev-credits-local",
            "BUS_ARN": "arn:aws:events:us-east-1:123456789012:event-bus/bus-dev-credits-local",
            "STREAM": "arn:aws:dynamodb:us-east-1:123456789012:table/Ledger/stream/local",
            "JOINED": "a-dev-y",
            "MODE": "relaxed",
            "ADMIN_KEY_PARAMETER": "/app/admin",
            "ADMIN_KEY": "LOCAL-SECRET",
            "SUBBED": "dev@us-east-1/arn:aws:dynamodb:us-east-1:123456789012:table/Ledger",
        }
    )
    assert ("A", "ADMIN_KEY_PARAMETER", "/app/admin") in overrides
    assert fn.timeout == 9 and fn.memory_size == 256
    assert fn.layers == ((tmp_path / "layer").resolve(),)
    assert [r.route_key for r in fn.routes] == ["GET /things/{id}", "ANY /things/{proxy+}"]
    assert fn.schedules[0].expression == "cron(15 0 * * ? *)"
    assert fn.schedules[0].input == '{"time": "<aws.scheduler.scheduled-time>", "account": "123456789012"}'
    assert model.tables["Ledger"].name == "Ledger"
    assert model.function("arn:aws:lambda:us-east-1:123456789012:function:A") is fn
    assert model.function("A:$LATEST") is fn and model.function("Nope") is None


def test_unsupported_intrinsics_warn_instead_of_failing(tmp_path: Path) -> None:
    body = TEMPLATE.replace("MODE: !If [IsProd, strict, relaxed]", "MODE: !Cidr [10.0.0.0/16, 2, 8]")
    model = load_stack(write(tmp_path, body))
    assert model.functions["A"].environment["MODE"] == "<Fn::Cidr>"
    assert any("Cidr" in w for w in model.warnings)


def test_the_projects_template_is_servable_locally() -> None:
    model = load_stack(REPO_ROOT / "template.yaml")
    assert not model.warnings, model.warnings
    for fn in model.functions.values():
        assert (fn.code_uri / f"{fn.module_name.replace('.', '/')}.py").is_file(), fn.logical_id
        assert all(layer.is_dir() for layer in fn.layers), fn.logical_id
        assert "TABLE_NAME" in fn.environment
    routes = [route.route_key for route, _ in model.routes()]
    assert len(routes) == len(set(routes)), "two functions claim one route"


# ---- routes ----------------------------------------------------------------------------------------------
def test_router_prefers_literal_then_variables_then_greedy_then_default() -> None:
    router = Router(
        [
            (Route("ANY", "$default", "d"), "default"),
            (Route("GET", "/v1/{proxy+}", "g"), "greedy"),
            (Route("GET", "/v1/customers/{customer}/balance", "v"), "variable"),
            (Route("GET", "/v1/customers/special/balance", "l"), "literal"),
            (Route("ANY", "/v1/customers/{customer}/grants", "a"), "any"),
            (Route("POST", "/v1/customers/{customer}/grants", "p"), "post"),
        ]
    )

    def target(method: str, path: str) -> tuple[str, dict[str, str]] | None:
        found = router.match(method, path)
        return (found[0].target, found[1]) if found else None

    assert target("GET", "/v1/customers/special/balance") == ("literal", {})
    assert target("GET", "/v1/customers/cus%2F1/balance") == ("variable", {"customer": "cus/1"})
    assert target("POST", "/v1/customers/c/grants") == ("post", {"customer": "c"})
    assert target("GET", "/v1/customers/c/grants") == ("any", {"customer": "c"})
    assert target("GET", "/v1/a/b/c") == ("greedy", {"proxy": "a/b/c"})
    assert target("DELETE", "/elsewhere") == ("default", {})
    assert Router([(Route("GET", "/x", "x"), 1)]).match("POST", "/x") is None


# ---- events and responses --------------------------------------------------------------------------------
def test_payload_v2_event() -> None:
    event = build_event(
        route=Route("POST", "/v1/usage", "u"),
        method="post",
        raw_path="/v1/usage",
        raw_query="a=1&a=2&b=",
        headers=[
            ("Content-Type", "application/json"),
            ("X-Dup", "1"),
            ("x-dup", "2"),
            ("Cookie", "s=1; t=2"),
        ],
        body=b'{"id": "u1"}',
        path_parameters={},
        source_ip="127.0.0.1",
        host="127.0.0.1:3000",
        request_id="rid",
        now=1_700_000_000.5,
    )
    assert event["version"] == "2.0" and event["routeKey"] == "POST /v1/usage"
    assert event["headers"]["x-dup"] == "1,2" and event["headers"]["content-type"] == "application/json"
    assert "cookie" not in event["headers"] and event["cookies"] == ["s=1", "t=2"]
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["body"] == '{"id": "u1"}' and event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["requestId"] == "rid"
    assert event["requestContext"]["timeEpoch"] == 1_700_000_000_500
    assert "pathParameters" not in event
    binary = build_event(
        route=Route("POST", "/f", "f"),
        method="POST",
        raw_path="/f",
        raw_query="",
        headers=[("Content-Type", "image/png")],
        body=b"\x89PNG",
        path_parameters={},
        source_ip="::1",
        host="h",
    )
    assert binary["isBase64Encoded"] is True and base64.b64decode(binary["body"]) == b"\x89PNG"
    assert "rawQueryString" in binary and "queryStringParameters" not in binary


def test_handler_answers_become_http_responses() -> None:
    full = to_http_response({"statusCode": 201, "headers": {"X-A": "1"}, "cookies": ["c=1"], "body": "{}"})
    assert (full.status, full.body) == (201, b"{}") and ("Set-Cookie", "c=1") in full.headers
    binary = to_http_response(
        {"statusCode": 200, "body": base64.b64encode(b"\x00").decode(), "isBase64Encoded": True}
    )
    assert binary.body == b"\x00"
    plain = to_http_response({"ok": True})
    assert (plain.status, json.loads(plain.body)) == (200, {"ok": True})
    assert to_http_response({"statusCode": "oops"}).status == 500


# ---- patterns, schedules ---------------------------------------------------------------------------------
def test_event_patterns() -> None:
    record = {
        "eventName": "INSERT",
        "dynamodb": {"Keys": {"pk": {"S": "ENTRY#cus_1"}, "sk": {"S": "E#1"}}},
        "tags": ["a", "b"],
        "n": 5,
    }
    assert matches(
        {"eventName": ["INSERT"], "dynamodb": {"Keys": {"pk": {"S": [{"prefix": "ENTRY#"}]}}}}, record
    )
    assert not matches({"dynamodb": {"Keys": {"sk": {"S": ["STATE"]}}}}, record)
    assert matches({"tags": ["b"]}, record) and not matches({"tags": ["c"]}, record)
    assert matches({"missing": [{"exists": False}]}, record) and not matches(
        {"n": [{"exists": False}]}, record
    )
    assert matches({"eventName": [{"anything-but": ["REMOVE"]}]}, record)
    assert matches({"n": [{"numeric": [">", 1, "<=", 5]}]}, record)
    assert not matches({"n": [{"numeric": [">", 5]}]}, record)
    assert matches({"$or": [{"n": [1]}, {"eventName": ["INSERT"]}]}, record)


def test_next_fire() -> None:
    start = dt.datetime(2026, 11, 23, 10, 7, 30, tzinfo=UTC)
    assert next_fire("cron(15 0 * * ? *)", start) == dt.datetime(2026, 11, 24, 0, 15, tzinfo=UTC)
    assert next_fire("cron(0/20 * * * ? *)", start) == dt.datetime(2026, 11, 23, 10, 20, tzinfo=UTC)
    assert next_fire("cron(0 9 ? * MON-FRI *)", start) == dt.datetime(
        2026, 11, 24, 9, 0, tzinfo=UTC
    )  # a Tuesday
    assert next_fire("cron(0 0 1 JAN ? *)", start) == dt.datetime(2027, 1, 1, tzinfo=UTC)
    assert next_fire("rate(5 minutes)", start, start) == start + dt.timedelta(minutes=5)
    assert next_fire("rate(1 hour)", start + dt.timedelta(minutes=61), start) == start + dt.timedelta(hours=2)
    assert next_fire("at(2026-11-23T10:08:00)", start) == dt.datetime(2026, 11, 23, 10, 8, tzinfo=UTC)
    assert next_fire("at(2026-11-23T10:00:00)", start) is None
    with pytest.raises(ValueError):
        next_fire("every day", start)
    paris = Schedule("N", "cron(0 9 * * ? *)", None, True, "ScheduleV2", "Europe/Paris")
    assert fire_after(paris, start) == dt.datetime(2026, 11, 24, 8, 0, tzinfo=UTC)  # 09:00 CET


def test_scheduled_events() -> None:
    when = dt.datetime(2026, 11, 24, 0, 15, tzinfo=UTC)
    event = scheduled_event(when, "arn:x")
    assert (event["detail-type"], event["time"], event["resources"]) == (
        "Scheduled Event",
        "2026-11-24T00:15:00Z",
        ["arn:x"],
    )
    fn = Function("Job", Path("."), "app.h", None, 3, 128, {}, (), (), (), (), (), None)
    templated = Schedule(
        "N", "cron(15 0 * * ? *)", '{"time": "<aws.scheduler.scheduled-time>"}', True, "ScheduleV2"
    )
    assert event_for(fn, templated, when) == {"time": "2026-11-24T00:15:00Z"}
    plain = Schedule("N", "rate(1 day)", None, True, "ScheduleV2")
    assert event_for(fn, plain, when)["source"] == "aws.scheduler"


# ---- runtime: worker processes ----------------------------------------------------------------------------
ENV_AND_PID = (
    "import os, time\n"
    "def handler(event, context):\n"
    "    started = time.time()\n"
    "    time.sleep(event.get('sleep', 0))\n"
    "    if event.get('exit'):\n"
    "        os._exit(3)\n"
    "    return {'pid': os.getpid(), 'shared': os.environ.get('SHARED'), 'started': started,\n"
    "            'ended': time.time()}\n"
)


def _two_functions(tmp_path: Path) -> Any:
    body = TEMPLATE.replace("    Condition: IsProd\n", "").replace(
        "Properties: {CodeUri: fb, Handler: app.handler}",
        "Properties: {CodeUri: fb, Handler: app.handler, Environment: {Variables: {SHARED: 'no'}}}",
    )
    path = write(tmp_path, body)
    for folder in ("fa", "fb"):
        (tmp_path / folder / "app.py").write_text(ENV_AND_PID)
    return load_stack(path, LocalNames(table_names={"Ledger": "Ledger"}))


def test_concurrency_setting() -> None:
    assert local_concurrency({}) == 8
    assert local_concurrency({"CREDITS_LOCAL_CONCURRENCY": " 3 "}) == 3
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit, match="CREDITS_LOCAL_CONCURRENCY"):
            local_concurrency({"CREDITS_LOCAL_CONCURRENCY": bad})


def test_each_function_runs_with_its_own_variables_at_the_same_time(tmp_path: Path) -> None:
    model = _two_functions(tmp_path)
    runtime = FunctionRuntime(model, log=lambda _line: None, concurrency=2)
    try:
        assert set(runtime.conflicts) == {"SHARED"}  # reported, no longer a reason to serialize
        outcomes: dict[str, Any] = {}

        def run(name: str) -> None:
            outcomes[name] = runtime.invoke(model.functions[name], {"sleep": 1.0})

        threads = [threading.Thread(target=run, args=(name,)) for name in ("A", "B")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        a, b = outcomes["A"].result, outcomes["B"].result
        assert (a["shared"], b["shared"]) == ("yes", "no")
        assert a["pid"] != b["pid"] != os.getpid()
        assert max(a["started"], b["started"]) < min(a["ended"], b["ended"])  # they overlapped
    finally:
        runtime.close()


def _concurrent(runtime: FunctionRuntime, fn: Any, count: int, event: dict[str, Any]) -> list[Any]:
    outcomes: list[Any] = [None] * count

    def run(index: int) -> None:
        outcomes[index] = runtime.invoke(fn, event)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_invocations_of_one_function_overlap_up_to_the_limit_each_in_its_own_process(tmp_path: Path) -> None:
    model = _two_functions(tmp_path)
    fn = model.functions["A"]
    runtime = FunctionRuntime(model, log=lambda _line: None, concurrency=3)
    try:
        # 3 at once within the limit: 3 processes, all running at the same time
        outcomes = _concurrent(runtime, fn, 3, {"sleep": 1.5})
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
        results = [o.result for o in outcomes]
        assert len({r["pid"] for r in results}) == 3
        assert max(r["started"] for r in results) < min(r["ended"] for r in results)
        assert runtime.environments()["A"] == 3
        # 6 at once with a limit of 3: never more than 3 processes, the warm ones are reused
        outcomes = _concurrent(runtime, fn, 6, {"sleep": 0.5})
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
        results = [o.result for o in outcomes]
        assert len({r["pid"] for r in results}) == 3
        spans = sorted((r["started"], r["ended"]) for r in results)
        for started, _ in spans:  # at no instant more than 3 ran
            assert sum(1 for s, e in spans if s <= started < e) <= 3
    finally:
        runtime.close()
    assert runtime.environments()["A"] == 0


def test_a_limit_of_one_runs_invocations_one_after_the_other(tmp_path: Path) -> None:
    model = _two_functions(tmp_path)
    runtime = FunctionRuntime(model, log=lambda _line: None, concurrency=1)
    try:
        results = sorted(
            (o.result for o in _concurrent(runtime, model.functions["A"], 3, {"sleep": 0.3})),
            key=lambda r: r["started"],
        )
        assert len({r["pid"] for r in results}) == 1
        assert all(
            first["ended"] <= then["started"] for first, then in zip(results, results[1:], strict=False)
        )
    finally:
        runtime.close()


def test_a_worker_that_dies_is_an_error_and_is_replaced(tmp_path: Path) -> None:
    model = _two_functions(tmp_path)
    fn = model.functions["A"]
    runtime = FunctionRuntime(model, log=lambda _line: None, concurrency=1)
    try:
        first = runtime.invoke(fn, {})
        died = runtime.invoke(fn, {"exit": True})
        assert not died.ok and died.error is not None and died.error["errorType"] == "Runtime.ExitError"
        again = runtime.invoke(fn, {})
        assert again.ok and again.result["pid"] != first.result["pid"]
    finally:
        runtime.close()


def test_runtime_invokes_with_a_lambda_context(tmp_path: Path) -> None:
    path = write(tmp_path, TEMPLATE)
    (tmp_path / "fa" / "app.py").write_text(
        "def handler(event, context):\n"
        "    print('a line of the function log')\n"
        "    return {'name': context.function_name, 'left': context.get_remaining_time_in_millis(),\n"
        "            'arn': context.invoked_function_arn, 'id': context.aws_request_id, 'event': event}\n"
    )
    model = load_stack(path)
    lines: list[str] = []
    runtime = FunctionRuntime(model, log=lines.append)
    try:
        outcome = runtime.invoke(model.functions["A"], {"x": 1}, request_id="req-1")
        assert outcome.ok and outcome.result["name"] == "A" and outcome.result["id"] == "req-1"
        assert 0 < outcome.result["left"] <= 9000 and outcome.result["event"] == {"x": 1}
        assert outcome.result["arn"].endswith(":function:A")
        (tmp_path / "fa" / "app.py").write_text("def handler(event, context):\n    return {1, 2}\n")
    finally:
        runtime.close()
    assert "[A] a line of the function log" in lines  # the function's output reaches the stack's log


def test_unserializable_results_and_import_errors_are_lambda_errors(tmp_path: Path) -> None:
    path = write(tmp_path, TEMPLATE)
    (tmp_path / "fa" / "app.py").write_text("def handler(event, context):\n    return {1, 2}\n")
    model = load_stack(path)
    runtime = FunctionRuntime(model, log=lambda _line: None)
    try:
        outcome = runtime.invoke(model.functions["A"], {})
        assert outcome.error is not None and outcome.error["errorType"] == "Runtime.MarshalError"
        assert runtime.preload() == {"A": None}
    finally:
        runtime.close()
    (tmp_path / "fa" / "app.py").write_text("raise ImportError('no such thing')\n")
    runtime = FunctionRuntime(load_stack(path), log=lambda _line: None)
    try:
        assert "no such thing" in (runtime.preload()["A"] or "")
        outcome = runtime.invoke(model.functions["A"], {})
        assert outcome.error is not None and outcome.error["errorType"] == "Runtime.ImportModuleError"
    finally:
        runtime.close()


def test_stream_records_carry_empty_maps_as_aws_does() -> None:
    # DynamoDB Local's stream drops the type of an empty map; Lambda's records from AWS say {"M": {}}
    record = {
        "eventID": "1",
        "dynamodb": {
            "Keys": {"pk": {"S": "ACCOUNT#a"}, "sk": {"S": "STATE"}},
            "NewImage": {
                "pk": {"S": "ACCOUNT#a"},
                "grants": {},
                "purchase": {"M": {"lines": {"L": [{}, {"N": "1"}]}, "meta": {}}},
                "children": {"L": []},
            },
            "ApproximateCreationDateTime": dt.datetime(2030, 1, 1, tzinfo=UTC),
        },
    }
    out = to_lambda_record(record)["dynamodb"]
    assert out["NewImage"] == {
        "pk": {"S": "ACCOUNT#a"},
        "grants": {"M": {}},
        "purchase": {"M": {"lines": {"L": [{"M": {}}, {"N": "1"}]}, "meta": {"M": {}}}},
        "children": {"L": []},
    }
    assert out["ApproximateCreationDateTime"] == 1893456000
    json.dumps(out)  # what the worker process receives
