"""The local stack's Lambda emulation on a throwaway template (independent of the product's functions):
API Gateway payload 2.0 events, environment resolution (!Ref / !GetAtt / !Sub, secrets through the local
SSM), layers, error answers, binary bodies, the Invoke API, and the event sources: a DynamoDB stream with
filter criteria -> a function -> the local EventBridge -> a rule -> a function, a ScheduleV2 schedule
fired by CREDITS_RUN_SCHEDULES=1, and concurrent invocations of one function in separate worker processes."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StackProcess, require_java

pytestmark = pytest.mark.slow

ECHO = """
import base64, json, os, time
import boto3
import helper_lib


def handler(event, context):
    path = event.get("rawPath", "")
    if path.endswith("/slow"):
        started = time.time()
        time.sleep(1.5)
        return {"pid": os.getpid(), "started": started, "ended": time.time()}
    if path.endswith("/fail"):
        raise RuntimeError("boom")
    if path.endswith("/binary"):
        return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(b"\\x00\\x01\\xff").decode(), "isBase64Encoded": True}
    if path.endswith("/plain"):
        return {"hello": "world"}
    if path.startswith("/write/"):
        boto3.client("dynamodb").put_item(TableName=os.environ["TABLE_NAME"],
                                          Item={"pk": {"S": path.split("/", 2)[2]}})
        return {"statusCode": 201, "body": "{}"}
    secret = boto3.client("ssm").get_parameter(Name=os.environ["WEBHOOK_SECRET_PARAMETER"],
                                               WithDecryption=True)["Parameter"]["Value"]
    names = ("TABLE_NAME", "BUS", "WEBHOOK_SECRET_PARAMETER", "TABLE_ARN", "SUBBED", "GLOBAL_ONE")
    return {"statusCode": 200, "cookies": ["a=1"],
            "headers": {"content-type": "application/json", "x-fn": context.function_name},
            "body": json.dumps({"event": event, "env": {k: os.environ.get(k) for k in names},
                                "layer": helper_lib.VALUE, "secret": secret,
                                "remaining": context.get_remaining_time_in_millis(),
                                "request_id": context.aws_request_id})}
"""

STREAM = """
import json, os
import boto3


def handler(event, context):
    entries = [{"Source": "things", "DetailType": "thing.created", "EventBusName": os.environ["BUS"],
                "Detail": json.dumps({"pk": r["dynamodb"]["Keys"]["pk"]["S"]})}
               for r in event["Records"] if r["eventName"] == "INSERT"]
    if entries:
        boto3.client("events").put_events(Entries=entries)
    return {"batchItemFailures": []}
"""

RULE = """
import json, os
import boto3


def handler(event, context):
    boto3.client("events").put_events(Entries=[{"Source": "things", "DetailType": "thing.ruled",
        "EventBusName": os.environ["BUS"], "Detail": json.dumps(event["detail"])}])
"""

TICK = """
import json, os
import boto3


def handler(event, context):
    boto3.client("events").put_events(Entries=[{"Source": "things", "DetailType": "tick",
        "EventBusName": os.environ["BUS"], "Detail": json.dumps(event)}])
    return {"ok": True}
"""


def write_template(root: Path, fire_at: dt.datetime) -> Path:
    for folder, code in (("fn_echo", ECHO), ("fn_stream", STREAM), ("fn_rule", RULE), ("fn_tick", TICK)):
        (root / folder).mkdir(parents=True)
        (root / folder / "app.py").write_text(textwrap.dedent(code))
    (root / "lib").mkdir()
    (root / "lib" / "helper_lib.py").write_text("VALUE = 'from-the-layer'\n")
    template = f"""
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  SecretName:
    Type: String
    Default: /things/webhook-secret
Globals:
  Function:
    Runtime: python3.13
    Timeout: 7
    Layers: [!Ref Lib]
    Environment:
      Variables:
        TABLE_NAME: !Ref Things
        BUS: !Ref Bus
        GLOBAL_ONE: "1"
Resources:
  Lib:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: lib
  Bus:
    Type: AWS::Events::EventBus
    Properties:
      Name: things-bus
  Things:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      StreamSpecification: {{StreamViewType: NEW_IMAGE}}
      AttributeDefinitions: [{{AttributeName: pk, AttributeType: S}}]
      KeySchema: [{{AttributeName: pk, KeyType: HASH}}]
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_echo
      Handler: app.handler
      Environment:
        Variables:
          WEBHOOK_SECRET_PARAMETER: !Ref SecretName
          TABLE_ARN: !GetAtt Things.Arn
          SUBBED: !Sub "${{AWS::Region}}/${{Things}}/${{Bus}}"
      Events:
        Named: {{Type: HttpApi, Properties: {{Path: "/echo/{{name}}", Method: GET}}}}
        Greedy: {{Type: HttpApi, Properties: {{Path: "/echo/{{proxy+}}", Method: ANY}}}}
        Literal: {{Type: HttpApi, Properties: {{Path: /echo/fixed, Method: GET}}}}
        Write: {{Type: HttpApi, Properties: {{Path: "/write/{{key}}", Method: POST}}}}
  StreamFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_stream
      Handler: app.handler
      Events:
        Changes:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Things.StreamArn
            StartingPosition: LATEST
            BatchSize: 10
            FunctionResponseTypes: [ReportBatchItemFailures]
            FilterCriteria:
              Filters:
                - Pattern: '{{"dynamodb": {{"Keys": {{"pk": {{"S": [{{"prefix": "thing#"}}]}}}}}}}}'
  RuleFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_rule
      Handler: app.handler
      Events:
        Created:
          Type: EventBridgeRule
          Properties:
            EventBusName: !Ref Bus
            Pattern: {{source: [things], detail-type: [thing.created]}}
  TickFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_tick
      Handler: app.handler
      Events:
        Once:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: "at({fire_at:%Y-%m-%dT%H:%M:%S})"
            Input: '{{"time": "<aws.scheduler.scheduled-time>", "detail-type": "Scheduled Event"}}'
"""
    path = root / "template.yaml"
    path.write_text(template)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    require_java()
    root = tmp_path_factory.mktemp("toy")
    fire_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(
        seconds=60
    )  # after start-up (a worker per function imports its handler)
    template = write_template(root / "app", fire_at)
    stack = StackProcess(root / "state", env={"CREDITS_RUN_SCHEDULES": "1"}, template=template).start()
    try:
        yield stack
    finally:
        assert stack.stop() == 0
        assert stack.leftovers() == []


def events(stack: StackProcess, detail_type: str) -> list[dict[str, Any]]:
    return list(stack.get(f"/_local/events?detail-type={detail_type}")[1]["events"])


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    return check()


def test_payload_v2_event_environment_layer_and_context(toy: StackProcess) -> None:
    status, body, headers = toy.request(
        "GET", "/echo/caf%C3%A9?b=2&a=1&a=3", headers={"Cookie": "c1=x; c2=y", "X-Custom": "Yes"}
    )
    assert status == 200
    event = body["event"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /echo/{name}"
    assert event["rawPath"] == "/echo/café"
    assert event["rawQueryString"] == "b=2&a=1&a=3"
    assert event["queryStringParameters"] == {"b": "2", "a": "1,3"}
    assert event["pathParameters"] == {"name": "café"}
    assert event["headers"]["x-custom"] == "Yes" and "cookie" not in event["headers"]
    assert event["cookies"] == ["c1=x", "c2=y"]
    assert event["requestContext"]["http"]["method"] == "GET"
    assert event["requestContext"]["requestId"] == headers["apigw-requestid"]
    assert event["isBase64Encoded"] is False and "body" not in event
    assert body["env"] == {
        "TABLE_NAME": "Things",
        "BUS": "things-bus",
        "WEBHOOK_SECRET_PARAMETER": "/things/webhook-secret",
        "TABLE_ARN": "arn:aws:dynamodb:us-east-1:123456789012:table/Things",
        "SUBBED": "us-east-1/Things/things-bus",
        "GLOBAL_ONE": "1",
    }
    assert body["secret"] == toy.webhook_secret  # the secret parameter, answered by the local SSM
    assert body["layer"] == "from-the-layer"
    assert 0 < body["remaining"] <= 7000
    assert headers["x-fn"] == "EchoFunction" and headers["set-cookie"] == "a=1"


def _concurrently(toy: StackProcess, count: int) -> list[dict[str, Any]]:
    replies: list[Any] = [None] * count

    def call(index: int) -> None:
        replies[index] = toy.request("GET", f"/echo/{index}/slow")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(reply[0] == 200 for reply in replies), replies
    return [reply[1] for reply in replies]


def test_concurrent_requests_to_one_function_run_at_once_in_separate_processes(toy: StackProcess) -> None:
    count = 4  # within the default CREDITS_LOCAL_CONCURRENCY (8)
    # While one invocation runs, the next request gets a new environment (a cold start): 4 processes
    cold = _concurrently(toy, count)
    pids = {run["pid"] for run in cold}
    assert len(pids) == count and toy.process is not None and toy.process.pid not in pids
    # Warm, the same 4 processes run 4 requests at the same time (each sleeps 1.5 s)
    warm = _concurrently(toy, count)
    assert {run["pid"] for run in warm} == pids
    assert max(run["started"] for run in warm) < min(run["ended"] for run in warm)
    status, info, _ = toy.get("/_local/info")
    assert status == 200 and info["concurrency"] == 8
    assert info["environments"]["EchoFunction"] == count


def test_more_clients_than_the_limit_wait_for_an_environment(toy: StackProcess) -> None:
    clients = 48  # more connections at once than CREDITS_LOCAL_CONCURRENCY (8): they wait, none is refused
    replies: list[Any] = [None] * clients

    def call(index: int) -> None:
        try:
            replies[index] = toy.request("GET", f"/echo/{index}/plain")[:2]
        except OSError as exc:  # a reset connection
            replies[index] = (0, str(exc))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(reply == (200, {"hello": "world"}) for reply in replies), replies
    status, info, _ = toy.get("/_local/info")
    assert status == 200 and info["environments"]["EchoFunction"] <= 8


def test_route_priority_literal_then_variable_then_greedy(toy: StackProcess) -> None:
    assert toy.get("/echo/fixed")[1]["event"]["routeKey"] == "GET /echo/fixed"
    assert toy.get("/echo/one")[1]["event"]["routeKey"] == "GET /echo/{name}"
    greedy = toy.request("DELETE", "/echo/one/two/three")[1]["event"]
    assert greedy["routeKey"] == "ANY /echo/{proxy+}" and greedy["pathParameters"] == {
        "proxy": "one/two/three"
    }
    assert toy.request("GET", "/write/x")[0] == 404  # POST-only route: HTTP API answers 404


def test_bodies_text_and_binary(toy: StackProcess) -> None:
    status, body, _ = toy.request("POST", "/echo/a/b", raw=b'{"x": 1}')
    assert status == 200 and body["event"]["body"] == '{"x": 1}' and body["event"]["isBase64Encoded"] is False
    status, body, _ = toy.request(
        "POST", "/echo/a/b", raw=b"\x00\xffbin", headers={"Content-Type": "application/octet-stream"}
    )
    assert body["event"]["isBase64Encoded"] is True and body["event"]["body"] == "AP9iaW4="
    import urllib.request

    with urllib.request.urlopen(toy.url + "/echo/x/binary") as answer:
        assert answer.read() == b"\x00\x01\xff"
    status, body, headers = toy.get("/echo/x/plain")
    assert (status, body) == (200, {"hello": "world"}) and headers["content-type"] == "application/json"


def test_handler_errors_are_500_and_unhandled_function_errors(toy: StackProcess) -> None:
    assert toy.get("/echo/x/fail")[:2] == (500, {"message": "Internal Server Error"})
    client = toy.aws_client("lambda", retries={"max_attempts": 0})
    answer = client.invoke(FunctionName="EchoFunction", Payload=json.dumps({"rawPath": "/x/fail"}).encode())
    assert answer["FunctionError"] == "Unhandled"
    error = json.loads(answer["Payload"].read())
    assert error["errorType"] == "RuntimeError" and error["errorMessage"] == "boom"
    ok = client.invoke(
        FunctionName="arn:aws:lambda:us-east-1:123456789012:function:EchoFunction",
        Payload=json.dumps({"rawPath": "/x/plain"}).encode(),
    )
    assert json.loads(ok["Payload"].read()) == {"hello": "world"}
    queued = client.invoke(FunctionName="EchoFunction", InvocationType="Event", Payload=b"{}")
    assert queued["StatusCode"] == 202


def test_stream_filter_bus_and_rule_chain(toy: StackProcess) -> None:
    time.sleep(1.5)  # the stream poller starts at LATEST when the stack starts
    assert toy.request("POST", "/write/thing%231")[0] == 201
    assert toy.request("POST", "/write/other%231")[0] == 201  # filtered out by FilterCriteria
    created = wait_for(lambda: events(toy, "thing.created"))
    assert [e["detail"]["pk"] for e in created] == ["thing#1"]
    assert created[0]["event-bus-name"] == "things-bus"
    ruled = wait_for(lambda: events(toy, "thing.ruled"))
    assert [e["detail"]["pk"] for e in ruled] == ["thing#1"]
    time.sleep(1.5)
    assert [e["detail"]["pk"] for e in events(toy, "thing.created")] == ["thing#1"]


def test_schedule_fires_with_the_scheduled_time(toy: StackProcess) -> None:
    ticks = wait_for(lambda: events(toy, "tick"), timeout=120)
    assert ticks, toy.log()
    assert ticks[0]["detail"]["detail-type"] == "Scheduled Event"
    assert ticks[0]["detail"]["time"].endswith("Z")
