"""The ``credits`` CLI without a stack: argument parsing, exit codes, table rendering, usage files in batches,
and Stripe events that the SDK verifies and the ledger's own interpreter understands. HTTP goes to a tiny
in-process fake of the API that records what it was sent."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import stripe

from credits_dev import cli
from credits_dev.stripe_events import (
    SUPPORTED_TYPES,
    EventBuildError,
    EventOptions,
    body,
    build_event,
    signature_header,
)

SECRET = "whsec_unit_test_secret"


# ---- a fake API ------------------------------------------------------------------------------------------
class FakeApi:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.routes: dict[tuple[str, str], Callable[[dict[str, Any]], tuple[int, Any, dict[str, str]]]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                request = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "raw": raw,
                    "json": json.loads(raw) if raw and raw[:1] in b"{[" else None,
                }
                fake.requests.append(request)
                route = fake.routes.get((self.command, path))
                status, body, headers = route(request) if route else (404, {"message": "Not Found"}, {})
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on(
        self,
        method: str,
        path: str,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.routes[(method, path)] = lambda _request: (status, body, headers or {})


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    out: list[str] = []
    err = io.StringIO()
    code = cli.main(argv, out=out.append, err=err)
    return code, "\n".join(out), err.getvalue()


def base(api: FakeApi) -> list[str]:
    return ["--url", api.url, "--key", "k_test"]


BALANCE = {
    "customer": "cus_1",
    "available": "380",
    "ledger_balance": "400",
    "by_category": {"paid": "300", "promotional": "80"},
    "held": "20",
    "pending": "0",
    "next_expiry": {"at": "2026-12-01T00:00:00.123456Z", "amount": "80"},
    "as_of": "2026-11-23T10:00:00Z",
}
GRANT = {
    "id": "gr_1",
    "customer": "cus_1",
    "amount": "100",
    "remaining": "80",
    "category": "promotional",
    "priority": 50,
    "effective_at": "2026-11-23T10:00:00.5Z",
    "expires_at": None,
    "status": "active",
    "source": {"type": "admin", "id": None},
    "cost_basis": {"amount": "0", "currency": None},
    "created_at": "2026-11-23T10:00:00Z",
    "reason": None,
    "metadata": {},
}


# ---- parsing and exit codes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["balance"],
        ["grant", "cus_1", "-5"],
        ["grant", "cus_1", "abc"],
        ["grant", "cus_1", "5", "--expires-at", "next tuesday"],
        ["grants", "cus_1", "--status", "weird"],
        ["expire"],
        ["expire", "--now", "--time", "+1d"],
        ["keys", "create"],
        ["stripe", "send", "customer.created"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage: credits" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "Exit codes" in capsys.readouterr().out


def test_options_before_or_after_the_command(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api.on("GET", "/v1/customers/cus_1/balance", 200, BALANCE)
    monkeypatch.delenv("CREDITS_URL", raising=False)
    code, out, _ = run(["balance", "cus_1", "--json", "--url", api.url, "--key", "k1"])
    assert code == 0 and json.loads(out) == BALANCE
    code, out, _ = run(["--json", "--url", api.url, "--key", "k2", "balance", "cus_1"])
    assert code == 0 and json.loads(out)["available"] == "380"
    assert [r["headers"]["Authorization"] for r in api.requests] == ["Bearer k1", "Bearer k2"]


def test_url_and_key_from_the_environment(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api.on("GET", "/v1/customers/cus%2F1/balance", 200, BALANCE)
    monkeypatch.setenv("CREDITS_URL", api.url + "/")
    monkeypatch.setenv("CREDITS_API_KEY", "k_env")
    assert run(["balance", "cus/1"])[0] == 0
    assert api.requests[0]["headers"]["Authorization"] == "Bearer k_env"
    assert api.requests[0]["path"] == "/v1/customers/cus%2F1/balance"  # ids are one path segment


def test_missing_key_is_a_usage_error(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDITS_API_KEY", raising=False)
    code, _, err = run(["--url", api.url, "balance", "cus_1"])
    assert code == 2 and "CREDITS_API_KEY" in err and not api.requests


def test_unreachable_api_exits_2_and_says_to_start_the_stack() -> None:
    from credits_dev.local.dynamodb_local import free_port

    code, _, err = run(["--url", f"http://127.0.0.1:{free_port()}", "--key", "k", "balance", "cus_1"])
    assert code == 2
    assert "cannot reach the credits API" in err and "make dev" in err and "--url" in err


@pytest.mark.parametrize(
    ("status", "code", "needle"),
    [
        (402, "insufficient_credits", "credits grant"),
        (409, "idempotency_mismatch", "new --id"),
        (404, "not_found", "check the id"),
        (401, "unauthorized", "CREDITS_API_KEY"),
        (403, "forbidden", "keys create"),
        (422, "invalid_request", "details"),
        (500, "internal", "log"),
    ],
)
def test_rejections_exit_1_with_the_error_and_a_hint(
    api: FakeApi, status: int, code: str, needle: str
) -> None:
    body = {"error": {"code": code, "message": "nope", "details": [{"field": "quantity", "message": "bad"}]}}
    api.on("POST", "/v1/usage", status, body)
    exit_code, _, err = run([*base(api), "usage", "cus_1", "api_call", "3", "--id", "u1"])
    assert exit_code == 1
    assert f"{code} ({status}): nope" in err and "quantity: bad" in err
    assert needle in err


# ---- commands --------------------------------------------------------------------------------------------
def test_balance_table(api: FakeApi) -> None:
    api.on("GET", "/v1/customers/cus_1/balance", 200, BALANCE)
    code, out, _ = run([*base(api), "balance", "cus_1"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["customer", "cus_1"]
    assert "available       380" in out and "  promotional   80" in out
    assert "next expiry     80 at 2026-12-01T00:00:00Z" in out  # fractions dropped


def test_grant_sends_only_given_fields_and_relative_times(api: FakeApi) -> None:
    api.on("POST", "/v1/customers/cus_1/grants", 201, GRANT)
    code, out, _ = run(
        [
            *base(api),
            "grant",
            "cus_1",
            "100",
            "--category",
            "promotional",
            "--expires-at",
            "+7d",
            "--reason",
            "welcome",
            "--id",
            "g-1",
        ]
    )
    assert code == 0 and "gr_1" in out
    sent = api.requests[0]["json"]
    assert set(sent) == {"amount", "category", "expires_at", "reason", "id"}
    expires = dt.datetime.fromisoformat(sent["expires_at"])
    assert abs((expires - dt.datetime.now(dt.UTC)) - dt.timedelta(days=7)) < dt.timedelta(minutes=1)
    assert sent["amount"] == "100"


def test_grants_follow_pages_with_all(api: FakeApi) -> None:
    pages = iter(
        [
            {"data": [GRANT], "has_more": True, "next_cursor": "c1"},
            {
                "data": [{**GRANT, "id": "gr_2", "expires_at": "2027-01-01T00:00:00Z"}],
                "has_more": False,
                "next_cursor": None,
            },
        ]
    )
    api.routes[("GET", "/v1/customers/cus_1/grants")] = lambda _r: (200, next(pages), {})
    code, out, _ = run([*base(api), "grants", "cus_1", "--all", "--status", "active"])
    assert code == 0
    assert [r["path"] for r in api.requests] == [
        "/v1/customers/cus_1/grants?status=active",
        "/v1/customers/cus_1/grants?status=active&cursor=c1",
    ]
    assert "gr_1" in out and "gr_2" in out and "never" in out and "2027-01-01T00:00:00Z" in out


def test_transactions_table_and_more_hint(api: FakeApi) -> None:
    entry = {
        "id": "usage:u1",
        "type": "debit",
        "amount": "-3",
        "balance_after": "97",
        "allocations": [{"grant_id": "gr_1", "amount": "3"}],
        "reference": "u1",
        "created_at": "2026-11-23T10:00:00.000001Z",
        "metadata": {},
    }
    api.on(
        "GET",
        "/v1/customers/cus_1/transactions",
        200,
        {"data": [entry], "has_more": True, "next_cursor": "cx"},
    )
    code, out, _ = run([*base(api), "transactions", "cus_1", "--limit", "1"])
    assert code == 0
    assert api.requests[0]["path"] == "/v1/customers/cus_1/transactions?limit=1"
    header, rule, row = out.splitlines()[:3]
    assert header.split() == ["CREATED", "TYPE", "AMOUNT", "BALANCE", "REFERENCE", "GRANTS"]
    assert row.split()[:5] == ["2026-11-23T10:00:00Z", "debit", "-3", "97", "u1"]
    assert "--cursor cx" in out


def test_usage_single_event_and_replay(api: FakeApi) -> None:
    answer = {
        "id": "u1",
        "customer": "cus_1",
        "meter": "api_call",
        "quantity": "3",
        "credits": "3",
        "balance": "97",
        "status": "debited",
        "allocations": [],
    }
    api.on("POST", "/v1/usage", 200, answer, {"Idempotent-Replayed": "true"})
    code, out, _ = run([*base(api), "usage", "cus_1", "api_call", "3", "--id", "u1", "--metadata", "ep=/x"])
    assert code == 0 and out.startswith("replayed 3 credits")
    assert api.requests[0]["json"] == {
        "id": "u1",
        "customer": "cus_1",
        "meter": "api_call",
        "quantity": "3",
        "metadata": {"ep": "/x"},
    }


def test_usage_file_is_sent_in_batches_of_100_with_stable_ids(api: FakeApi, tmp_path: Path) -> None:
    def batch(request: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        results = [
            {
                "id": e["id"],
                "status": "rejected" if e["quantity"] == 0 else "debited",
                **(
                    {"error": {"code": "invalid_request", "message": "quantity"}}
                    if e["quantity"] == 0
                    else {}
                ),
            }
            for e in request["json"]["events"]
        ]
        return 200, {"results": results}, {}

    api.routes[("POST", "/v1/usage/batch")] = batch
    lines = [
        json.dumps({"customer": "cus_1", "meter": "api_call", "quantity": 0 if i == 7 else 1})
        for i in range(250)
    ]
    lines[3] = json.dumps({"id": "given", "customer": "cus_1", "meter": "api_call", "quantity": 1})
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(["# a comment", *lines, ""]))
    code, out, _ = run([*base(api), "usage", "--file", str(path)])
    assert code == 1  # one event was rejected
    assert [len(r["json"]["events"]) for r in api.requests] == [100, 100, 50]
    assert "250 events: 249 debited, 0 replayed, 1 rejected" in out
    ids = [e["id"] for r in api.requests for e in r["json"]["events"]]
    assert ids[3] == "given" and len(set(ids)) == 250 and ids[0].startswith("events-2-")
    again = [e["id"] for e in cli.read_usage_file(path)]
    assert again == ids  # sending the file again sends the same ids: nothing is debited twice


def test_usage_file_errors_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ok": 1}\nnot json\n')
    code, _, err = run(["--key", "k", "usage", "--file", str(bad)])
    assert code == 2 and "bad.jsonl:2: not JSON" in err
    assert run(["--key", "k", "usage", "--file", str(tmp_path / "missing.jsonl")])[0] == 2
    assert run(["--key", "k", "usage", "cus_1"])[0] == 2


def test_keys_create_quiet_prints_only_the_key(api: FakeApi) -> None:
    api.on(
        "POST",
        "/v1/api-keys",
        201,
        {
            "id": "abc",
            "key": "ck_abc_secret",
            "scopes": ["usage:write"],
            "customers": None,
            "name": "app",
            "created_at": "2026-11-23T10:00:00Z",
        },
    )
    code, out, _ = run(
        [
            *base(api),
            "keys",
            "create",
            "--scope",
            "usage:write,balance:read",
            "--scope",
            "usage:write",
            "--name",
            "app",
            "-q",
        ]
    )
    assert (code, out) == (0, "ck_abc_secret")
    assert api.requests[0]["json"] == {"scopes": ["usage:write", "balance:read"], "name": "app"}
    assert run([*base(api), "keys", "create", "--scope", "root"])[0] == 2


def test_keys_revoke(api: FakeApi) -> None:
    api.on("DELETE", "/v1/api-keys/abc", 204, None)
    code, out, _ = run([*base(api), "keys", "revoke", "abc"])
    assert code == 0 and "revoked" in out
    assert run([*base(api), "keys", "revoke", "zzz"])[0] == 1


# ---- rendering and times ---------------------------------------------------------------------------------
def test_render_table_aligns_amounts_right() -> None:
    text = cli.render_table(["ID", "AMOUNT"], [["a", "5"], ["bbbb", "1500"]], right=[1])
    assert text.splitlines() == ["ID    AMOUNT", "----  ------", "a          5", "bbbb    1500"]


def test_parse_time() -> None:
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    assert cli.parse_time("+7d", now) == "2026-11-30T12:00:00Z"
    assert cli.parse_time("-90m", now) == "2026-11-23T10:30:00Z"
    assert cli.parse_time("now", now) == "2026-11-23T12:00:00Z"
    assert cli.parse_time("2026-12-31", now) == "2026-12-31T00:00:00Z"
    assert cli.parse_time("2026-12-31T01:00:00+01:00", now) == "2026-12-31T00:00:00Z"
    for text in ("tomorrow", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "+99999999d"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_time(text, now)


# ---- Stripe events ---------------------------------------------------------------------------------------
PLACEHOLDERS = ('"obj_123"', '"currency": "currency"', "1234567890", '"message": "message"', "sangeekp")


def _options(event_type: str) -> EventOptions:
    if event_type.startswith("charge."):
        return EventOptions(payment_intent="pi_abc123", amount=1000, amount_refunded=250, status="lost")
    if event_type == "invoice.paid":
        return EventOptions(customer="cus_123", price="price_EUR_starter", amount=1900)
    if event_type.startswith("customer.subscription."):
        return EventOptions(customer="cus_123", price="price_pro_month_eur", trial_days=14)
    return EventOptions(customer="cus_123", credits="500", amount=1000, currency="eur")


@pytest.mark.parametrize(
    ("options", "credits"),
    [
        (EventOptions(customer="cus_1", subscription="sub_1", price="price_pro_month_eur", amount=4900), [5000]),
        (
            EventOptions(
                customer="cus_1", subscription="sub_1", price="price_business_month_eur", amount=14900,
                upgrade_from="price_pro_month_eur", old_amount=4900, created=1_900_000_000,
            ),
            None,  # the remaining share of the month, depending on the day
        ),
    ],
)  # fmt: skip
def test_subscription_invoices_are_plan_months_and_prorations(
    options: EventOptions, credits: list | None
) -> None:
    from credits_ledger.pricing import load_pricing
    from credits_ledger.stripe_facts import Facts, interpret

    pricing = load_pricing(Path(__file__).resolve().parents[2] / "config" / "pricing.toml")
    meaning = interpret(build_event("invoice.paid", options), pricing)
    assert isinstance(meaning, Facts), meaning
    granted = [line.credits for _, fact in meaning.items if hasattr(fact, "lines") for line in fact.lines]
    if credits is not None:
        assert granted == credits
    else:  # an upgrade: a grant of Business's share and a revocation of Pro's
        kinds = sorted(type(f).__name__ for f in meaning.subscription_items)
        assert len(granted) == 1 and "PoolRevocation" in kinds


@pytest.mark.parametrize("event_type", SUPPORTED_TYPES)
def test_events_are_signed_verifiable_and_free_of_placeholders(event_type: str) -> None:
    event = build_event(event_type, _options(event_type))
    payload = body(event)
    header = signature_header(payload, SECRET)
    verified = stripe.Webhook.construct_event(payload, header, SECRET)
    assert verified["type"] == event_type and verified["id"].startswith("evt_")
    assert verified["data"]["object"]["id"]
    for placeholder in PLACEHOLDERS:
        assert placeholder not in payload, placeholder
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.replace("eur", "usd", 1), header, SECRET)


@pytest.mark.parametrize("event_type", SUPPORTED_TYPES)
def test_the_ledger_understands_every_event(event_type: str) -> None:
    from credits_ledger.pricing import load_pricing
    from credits_ledger.stripe_facts import Facts, interpret

    pricing = load_pricing(Path(__file__).resolve().parents[2] / "config" / "pricing.toml")
    meaning = interpret(build_event(event_type, _options(event_type)), pricing)
    assert isinstance(meaning, Facts), meaning


def test_checkout_session_carries_the_purchase() -> None:
    event = build_event(
        "checkout.session.completed",
        EventOptions(customer="cus_9", pack="starter", amount=1900, currency="usd", payment_intent="pi_X1"),
    )
    session = event["data"]["object"]
    assert (
        session["mode"] == "payment"
        and session["payment_status"] == "paid"
        and session["status"] == "complete"
    )
    assert session["customer"] == "cus_9" and session["payment_intent"] == "pi_X1"
    assert session["metadata"] == {"credits_pack": "starter"}
    assert (session["amount_subtotal"], session["currency"]) == (1900, "usd")
    assert abs(event["created"] - dt.datetime.now(dt.UTC).timestamp()) < 60


def test_related_ids_share_a_suffix() -> None:
    refund = build_event(
        "charge.refunded", EventOptions(payment_intent="pi_Q1", amount=1000, amount_refunded=400)
    )
    charge = refund["data"]["object"]
    assert (charge["id"], charge["payment_intent"], charge["amount_refunded"], charge["refunded"]) == (
        "ch_Q1",
        "pi_Q1",
        400,
        False,
    )
    assert charge["refunds"]["data"][0]["amount"] == 400
    created = build_event("charge.dispute.created", EventOptions(payment_intent="pi_Q1"))["data"]["object"]
    closed = build_event("charge.dispute.closed", EventOptions(payment_intent="pi_Q1", status="won"))["data"][
        "object"
    ]
    assert created["id"] == closed["id"] == "dp_Q1"
    assert (created["status"], closed["status"], closed["charge"]) == ("needs_response", "won", "ch_Q1")


def test_event_options_errors() -> None:
    with pytest.raises(EventBuildError, match="--credits"):
        build_event("checkout.session.completed", EventOptions(customer="cus_1"))
    with pytest.raises(EventBuildError, match="--customer"):
        build_event("payment_intent.succeeded", EventOptions(credits="5"))
    with pytest.raises(EventBuildError, match="--status"):
        build_event("charge.dispute.closed", EventOptions(payment_intent="pi_1"))
    with pytest.raises(EventBuildError, match="--amount-refunded"):
        build_event("charge.refunded", EventOptions(payment_intent="pi_1", amount=100, amount_refunded=101))


def test_stripe_send_posts_the_signed_raw_body(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api.on("POST", "/v1/webhooks/stripe", 200, {"received": True, "status": "processed"})
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("CREDITS_API_KEY", raising=False)
    send = "stripe send checkout.session.completed --customer cus_123 --credits 500 --payment-intent pi_Z9"
    code, out, _ = run(["--url", api.url, *send.split()])
    assert code == 0 and "pi_Z9" in out and "processed" in out
    request = api.requests[0]
    assert "Authorization" not in request["headers"]
    event = stripe.Webhook.construct_event(
        request["raw"].decode(), request["headers"]["Stripe-Signature"], SECRET
    )
    assert event["data"]["object"]["metadata"].to_dict() == {"credits": "500"}


def test_stripe_send_needs_a_secret_and_a_payment_intent(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    send = "stripe send checkout.session.completed --customer c --credits 1"
    code, _, err = run(["--url", api.url, *send.split()])
    assert code == 2 and "STRIPE_WEBHOOK_SECRET" in err
    code, _, err = run(["--url", api.url, "stripe", "send", "charge.refunded", "--secret", SECRET])
    assert code == 2 and "--payment-intent" in err
    api.on(
        "POST", "/v1/webhooks/stripe", 400, {"error": {"code": "invalid_request", "message": "bad signature"}}
    )
    send = "stripe send payment_intent.succeeded --customer c --credits 1 --secret whsec_wrong"
    code, _, err = run(["--url", api.url, *send.split()])
    assert code == 1 and "bad signature" in err
