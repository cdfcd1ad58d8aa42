"""The local stack as a user runs it (``python -m credits_dev.local`` = ``make dev``), on template.yaml:
HTTP routes through API Gateway-shaped events into the real handlers, the Lambda Invoke API with boto3,
a Stripe webhook whose raw signed body must reach the handler untouched, the local EventBridge, restarts
that keep the data, the moto fallback, and shutdown that leaves nothing running."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import stripe

from credits_dev.local.template import load_stack
from tests.e2e.conftest import ADMIN_KEY, REPO_ROOT, StackProcess, require_java

pytestmark = pytest.mark.slow


def template_functions() -> set[str]:
    return set(load_stack(REPO_ROOT / "template.yaml").functions)


def require_function(logical_id: str) -> None:
    """Skip the test while template.yaml has no function ``logical_id`` to run."""
    if logical_id not in template_functions():
        pytest.skip(f"{logical_id} is not in template.yaml yet")


def lambda_client(stack: StackProcess) -> Any:
    return stack.aws_client("lambda", retries={"max_attempts": 0}, read_timeout=120)


# ---- HTTP API ----------------------------------------------------------------------------------------------
def test_serves_every_route_of_the_template(stack: StackProcess) -> None:
    model = load_stack(REPO_ROOT / "template.yaml")
    served = {fn: set(spec["routes"]) for fn, spec in stack.functions().items()}
    for fn in model.functions.values():
        assert served[fn.logical_id] == {r.route_key for r in fn.routes}


def test_health_and_unknown_route(stack: StackProcess) -> None:
    require_function("ApiFunction")
    status, body, headers = stack.get("/health")
    assert (status, body) == (200, {"status": "ok"})
    assert headers.get("apigw-requestid")
    status, body, _ = stack.get("/no/such/route")
    assert (status, body) == (404, {"message": "Not Found"})


def test_admin_key_grants_and_reads_through_path_parameters(stack: StackProcess) -> None:
    require_function("ApiFunction")
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    status, grant, _ = stack.request(
        "POST", f"/v1/customers/{customer}/grants", {"amount": "25"}, key=ADMIN_KEY
    )
    assert status == 201, grant
    status, balance, _ = stack.get(f"/v1/customers/{customer}/balance", key=ADMIN_KEY)
    assert status == 200 and balance["customer"] == customer and balance["available"] == "25"
    status, body, _ = stack.get(f"/v1/customers/{customer}/balance", key="wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, page, _ = stack.get(f"/v1/customers/{customer}/transactions?limit=1", key=ADMIN_KEY)
    assert status == 200 and len(page["data"]) == 1  # the query string reached the handler


# ---- Lambda Invoke API -------------------------------------------------------------------------------------
def test_invoke_api_runs_a_function_with_boto3(stack: StackProcess) -> None:
    require_function("ApiFunction")
    client = lambda_client(stack)
    event = {
        "version": "2.0",
        "routeKey": "GET /health",
        "rawPath": "/health",
        "rawQueryString": "",
        "headers": {},
        "isBase64Encoded": False,
        "requestContext": {
            "http": {
                "method": "GET",
                "path": "/health",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "test",
            },
            "requestId": "r1",
            "routeKey": "GET /health",
            "stage": "$default",
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "x",
            "domainPrefix": "x",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
    }
    answer = client.invoke(FunctionName="ApiFunction", Payload=json.dumps(event).encode())
    assert answer["StatusCode"] == 200 and "FunctionError" not in answer
    result = json.loads(answer["Payload"].read())
    assert result["statusCode"] == 200 and json.loads(result["body"]) == {"status": "ok"}


def test_invoke_api_expiry_function(stack: StackProcess) -> None:
    require_function("ExpiryFunction")
    client = lambda_client(stack)
    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }
    answer = client.invoke(FunctionName="ExpiryFunction", Payload=json.dumps(event).encode())
    assert "FunctionError" not in answer, answer["Payload"].read()
    assert isinstance(json.loads(answer["Payload"].read()), dict)


def test_invoke_api_unknown_function_is_resource_not_found(stack: StackProcess) -> None:
    client = lambda_client(stack)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="NoSuchFunction", Payload=b"{}")


# ---- Stripe webhook ----------------------------------------------------------------------------------------
def _odd_but_valid_body(customer: str) -> str:
    """A body whose exact bytes matter: key order, spacing and non-ASCII text a re-serialization would change."""
    event = {
        "type": "checkout.session.completed",
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "created": int(time.time()),
        "livemode": False,
        "api_version": "2026-10-28.endive",
        "data": {
            "object": {
                "object": "checkout.session",
                "id": f"cs_test_{uuid.uuid4().hex}",
                "mode": "payment",
                "payment_status": "paid",
                "customer": customer,
                "currency": "eur",
                "amount_subtotal": 1000,
                "amount_total": 1190,
                "payment_intent": f"pi_{uuid.uuid4().hex[:24]}",
                "metadata": {"credits": "40", "note": "Grüße – ünïcödé ✓"},
            }
        },
    }
    return json.dumps(event, indent=3, ensure_ascii=False).replace('": ', '":  ')


def test_webhook_raw_signed_body_reaches_the_handler_untouched(stack: StackProcess) -> None:
    require_function("StripeWebhookFunction")
    customer = f"cus_{uuid.uuid4().hex[:10]}"
    body = _odd_but_valid_body(customer)
    header = stripe.WebhookSignature.generate_signature_header(body, stack.webhook_secret)
    status, answer, _ = stack.request(
        "POST",
        "/v1/webhooks/stripe",
        raw=body.encode("utf-8"),
        headers={"Stripe-Signature": header, "Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 200, answer
    if "ApiFunction" in template_functions():
        status, balance, _ = stack.get(f"/v1/customers/{customer}/balance", key=ADMIN_KEY)
        assert balance["available"] == "40"
    # one changed byte (what a re-serialization would do) fails the signature
    tampered = body.replace('":  ', '": ', 1)
    status, answer, _ = stack.request(
        "POST", "/v1/webhooks/stripe", raw=tampered.encode("utf-8"), headers={"Stripe-Signature": header}
    )
    assert status == 400, answer


def test_webhook_chunked_body_as_a_proxy_may_send_it(stack: StackProcess) -> None:
    require_function("StripeWebhookFunction")
    import http.client

    body = _odd_but_valid_body(f"cus_{uuid.uuid4().hex[:10]}").encode("utf-8")
    header = stripe.WebhookSignature.generate_signature_header(body.decode("utf-8"), stack.webhook_secret)
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    connection.putrequest("POST", "/v1/webhooks/stripe")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Stripe-Signature", header)
    connection.endheaders()
    for start in range(0, len(body), 100):
        piece = body[start : start + 100]
        connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    connection.send(b"0\r\n\r\n")
    assert connection.getresponse().status == 200


# ---- the local EventBridge ---------------------------------------------------------------------------------
def test_put_events_are_kept_and_listed(stack: StackProcess) -> None:
    client = stack.aws_client("events")
    marker = uuid.uuid4().hex
    answer = client.put_events(
        Entries=[
            {
                "Source": "e2e.test",
                "DetailType": "probe",
                "Detail": json.dumps({"marker": marker}),
                "EventBusName": "credits",
            }
        ]
    )
    assert answer["FailedEntryCount"] == 0
    status, listed, _ = stack.get("/_local/events?source=e2e.test")
    assert status == 200
    assert [e["detail"]["marker"] for e in listed["events"]][-1] == marker
    bad = client.put_events(Entries=[{"Source": "e2e.test", "DetailType": "probe", "Detail": "not json"}])
    assert bad["FailedEntryCount"] == 1


# ---- restarts, fallback, shutdown --------------------------------------------------------------------------
def test_data_survives_a_restart_and_sigint_stops_everything(tmp_path: Path) -> None:
    require_java()
    require_function("ApiFunction")
    state = tmp_path / "state"
    first = StackProcess(state).start()
    try:
        assert first.request("POST", "/v1/customers/cus_keep/grants", {"amount": 7}, key=ADMIN_KEY)[0] == 201
        running = set(first.leftovers()) - set(first.workers())
        assert running, "DynamoDB Local should run with the state folder while the stack is up"
    finally:
        assert first.stop(signal.SIGINT) == 0
    assert first.leftovers() == []
    assert (state / "dynamodb").is_dir()
    second = StackProcess(state, port=first.port).start()
    try:
        status, balance, _ = second.get("/v1/customers/cus_keep/balance", key=ADMIN_KEY)
        assert status == 200 and balance["available"] == "7"
    finally:
        assert second.stop() == 0
    assert second.leftovers() == []


def test_moto_fallback_serves_the_api(tmp_path: Path) -> None:
    require_function("ApiFunction")
    stack = StackProcess(tmp_path / "state", env={"CREDITS_DYNAMODB_ENGINE": "moto"}).start()
    try:
        assert "moto" in stack.log()
        assert stack.request("POST", "/v1/customers/cus_m/grants", {"amount": 3}, key=ADMIN_KEY)[0] == 201
        status, balance, _ = stack.get("/v1/customers/cus_m/balance", key=ADMIN_KEY)
        assert (status, balance["available"]) == (200, "3")
    finally:
        assert stack.stop() == 0


def test_dev_env_file_points_the_cli_at_the_stack(stack: StackProcess) -> None:
    text = (stack.state_dir / "dev.env").read_text()
    assert f"export CREDITS_URL={stack.url}" in text
    assert f"export CREDITS_API_KEY={ADMIN_KEY}" in text
    assert f"export STRIPE_WEBHOOK_SECRET={stack.webhook_secret}" in text


def test_external_endpoint_and_pricing_file(tmp_path: Path) -> None:
    """AWS_ENDPOINT_URL_DYNAMODB: no engine of its own, tables created there; CREDITS_PRICING_FILE honoured."""
    require_java()
    require_function("ApiFunction")
    from credits_dev.local.dynamodb_local import DynamoDBLocal

    pricing = tmp_path / "pricing.toml"
    pricing.write_text('[meters.e2e_meter]\ncredits_per_unit = "2.5"\n')
    with DynamoDBLocal() as engine:
        stack = StackProcess(
            tmp_path / "state",
            env={"AWS_ENDPOINT_URL_DYNAMODB": engine.endpoint_url, "CREDITS_PRICING_FILE": str(pricing)},
        ).start()
        try:
            assert "CreditsTable" in engine.client().list_tables()["TableNames"]
            assert stack.workers()  # the functions' environments
            assert sorted(stack.leftovers()) == sorted(stack.workers())  # no DynamoDB Local of its own
            stack.request("POST", "/v1/customers/cus_ext/grants", {"amount": 10}, key=ADMIN_KEY)
            status, body, _ = stack.request(
                "POST",
                "/v1/usage",
                {"id": "e1", "customer": "cus_ext", "meter": "e2e_meter", "quantity": 2},
                key=ADMIN_KEY,
            )
            assert (status, body["credits"], body["balance"]) == (201, "5", "5")
        finally:
            assert stack.stop() == 0
