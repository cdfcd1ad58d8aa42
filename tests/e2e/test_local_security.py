"""The local stack trusts only its own machine and its own pages: foreign Host / Origin refused on everything
that runs code or hands out secrets, unknown methods 405, malformed framing 400, secrets files private, the
banner quiet about secrets it did not generate, guessable admin keys and non-loopback addresses refused."""

from __future__ import annotations

import http.client
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN_KEY, WEBHOOK_SECRET, StackProcess

pytestmark = pytest.mark.slow

SSM_TARGET = "AmazonSSM.GetParameter"


def send(
    stack: StackProcess, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, Any]:
    """A raw request: any method, any Host (urllib would fix the Host header)."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body or method in ("POST", "PUT"):
            connection.putheader("Content-Length", headers.get("Content-Length", str(len(body))))
        connection.endheaders(body or None)
        response = connection.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else None
    finally:
        connection.close()


def own(stack: StackProcess) -> dict[str, str]:
    return {"Host": f"127.0.0.1:{stack.port}"}


CONTROL_REQUESTS = [
    ("GET", "/_local/info", {}, b""),
    ("DELETE", "/_local/events", {}, b""),
    ("GET", "/2015-03-31/functions/", {}, b""),
    ("POST", "/2015-03-31/functions/ExpiryFunction/invocations", {}, b"{}"),
    (
        "POST",
        "/",
        {"X-Amz-Target": SSM_TARGET, "Content-Type": "application/x-amz-json-1.1"},
        json.dumps({"Name": "/credits/admin-api-key", "WithDecryption": True}).encode(),
    ),
]


@pytest.mark.parametrize(("method", "path", "extra", "body"), CONTROL_REQUESTS, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize(
    "foreign",
    [
        {"Host": "evil.example"},  # DNS rebinding: the attacker's name resolved to 127.0.0.1
        {"Host": "evil.example:{port}"},
        {"Origin": "http://evil.example"},  # a web page elsewhere posting to localhost
        {"Origin": "null"},
    ],
    ids=["host", "host-with-port", "origin", "null-origin"],
)
def test_control_routes_refuse_foreign_host_or_origin(
    stack: StackProcess, method: str, path: str, extra: dict[str, str], body: bytes, foreign: dict[str, str]
) -> None:
    headers = {**own(stack), **extra, **{k: v.format(port=stack.port) for k, v in foreign.items()}}
    status, payload = send(stack, method, path, headers, body)
    assert status == 403, payload
    assert ADMIN_KEY not in json.dumps(payload)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_control_routes_answer_their_own_host_and_origin(stack: StackProcess, host: str) -> None:
    headers = {"Host": host.format(port=stack.port)}
    assert send(stack, "GET", "/_local/info", headers)[0] == 200
    origin = {**headers, "Origin": f"http://{headers['Host']}"}
    assert send(stack, "GET", "/_local/events", origin)[0] == 200


def test_the_api_still_answers_any_origin_like_api_gateway(stack: StackProcess) -> None:
    status, payload = send(stack, "GET", "/health", {**own(stack), "Origin": "http://app.example"})
    assert (status, payload) == (200, {"status": "ok"})


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "CONNECT", "FOO"])
def test_unknown_methods_are_405_never_5xx(stack: StackProcess, method: str) -> None:
    status, payload = send(stack, method, "/health", own(stack))
    assert status == 405
    assert payload == {"message": "Method Not Allowed"}


@pytest.mark.parametrize("length", ["abc", "-5"])
def test_a_malformed_content_length_is_400(stack: StackProcess, length: str) -> None:
    status, _ = send(stack, "POST", "/v1/usage", {**own(stack), "Content-Length": length}, b"")
    assert status == 400


def test_a_bad_events_limit_is_400(stack: StackProcess) -> None:
    assert send(stack, "GET", "/_local/events?limit=many", own(stack))[0] == 400


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_is_private_and_chosen_secrets_are_not_printed(stack: StackProcess) -> None:
    assert mode(stack.state_dir) == 0o700
    assert mode(stack.state_dir / "dev.env") == 0o600
    log = stack.log(tail=None)  # the whole log: the stack is shared, its banner is far behind later requests
    assert "credits local stack" in log
    assert ADMIN_KEY not in log and WEBHOOK_SECRET not in log
    assert "from CREDITS_ADMIN_KEY (not printed)" in log


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CREDITS_ADMIN_KEY": "admin-admin"}, "CREDITS_ADMIN_KEY is too guessable"),
        ({"CREDITS_HOST": "0.0.0.0"}, "listens on loopback only"),
    ],
    ids=["weak-admin-key", "all-interfaces"],
)
def test_unsafe_settings_stop_the_stack_at_start(tmp_path: Path, env: dict[str, str], message: str) -> None:
    process = StackProcess(tmp_path / ".local", env=env)
    with pytest.raises(AssertionError, match="exited"):
        process.start(timeout=60)
    assert message in process.log()


def test_dynamodb_local_is_out_of_reach_and_answers_no_web_page(stack: StackProcess) -> None:
    from credits_dev.local.dynamodb_local import network_namespaces
    from tests.e2e.conftest import pids_matching

    engine = send(stack, "GET", "/_local/info", own(stack))[1]["engine"]
    if network_namespaces() is None:
        pytest.skip("no Linux user namespaces here: DynamoDB Local runs exposed (the stack warns)")
    # DynamoDB Local runs in a network namespace of its own: no interface of this machine reaches it
    assert "own network namespace" in engine["description"]
    java = [pid for pid in pids_matching(str(stack.state_dir)) if "DynamoDBLocal.jar" in _cmdline(pid)]
    assert java
    for pid in java:
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert mode(stack.state_dir / "dynamodb.sock") == 0o600
    # and through the stack's loopback relay it grants no CORS access to another site
    port = int(engine["endpoint"].rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "OPTIONS",
            "/",
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-amz-target,content-type,authorization",
            },
        )
        response = connection.getresponse()
        response.read()
        assert response.getheader("Access-Control-Allow-Origin") in (None, "")
    finally:
        connection.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
