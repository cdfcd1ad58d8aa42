"""The Stripe API client module against a scripted HTTP server: configuration, idempotency keys on every call
(retries included), what is retried (network, timeout, 5xx, 429) and what is not (4xx, declines)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from credits_ledger import stripe_api
from credits_ledger.stripe_api import (
    CardDeclined,
    StripeApi,
    StripeNotConfigured,
    StripeRejected,
    StripeUnavailable,
    new_stripe_client,
)

Reply = tuple[int, dict[str, Any], float]  # status, body, seconds to wait before answering


class ScriptedStripe:
    """Answers each request with the next scripted reply (the last one repeats) and keeps what it got."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "form": {k: v[0] for k, v in parse_qs(body).items()},
                    }
                )
                status, payload, delay = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                if delay:
                    time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout)
                    pass

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedStripe]:
    server = ScriptedStripe()
    yield server
    server.close()


@pytest.fixture
def api(scripted: ScriptedStripe, monkeypatch: pytest.MonkeyPatch) -> StripeApi:
    sleeps: list[float] = []
    monkeypatch.setattr("stripe._http_client.HTTPClient._sleep_time_seconds", lambda self, n, r=None: 0.01)
    client = StripeApi(new_stripe_client("rk_test_123", scripted.base), sleep=sleeps.append)
    client.sleeps = sleeps  # type: ignore[attr-defined]
    return client


METER_EVENT = {
    "object": "billing.meter_event",
    "event_name": "credits_overage",
    "identifier": "usage:req-1",
    "livemode": False,
    "payload": {"stripe_customer_id": "cus_1", "value": "12.5"},
    "timestamp": 1796000000,
    "created": 1796000000,
}


def meter_event(api: StripeApi, key: str = "meter:usage:req-1") -> dict[str, Any]:
    return api.create_meter_event(
        event_name="credits_overage",
        stripe_customer_id="cus_1",
        value=Decimal("12.50"),
        identifier="usage:req-1",
        timestamp=datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
        idempotency_key=key,
    )


def test_meter_event_call_parameters_and_idempotency_key(api: StripeApi, scripted: ScriptedStripe) -> None:
    scripted.replies = [(200, METER_EVENT, 0)]
    answer = meter_event(api)
    assert answer["identifier"] == "usage:req-1"
    [request] = scripted.requests
    assert request["method"] == "POST" and request["path"] == "/v1/billing/meter_events"
    assert request["headers"]["idempotency-key"] == "meter:usage:req-1"
    assert request["headers"]["authorization"] == "Bearer rk_test_123"
    assert request["form"] == {
        "event_name": "credits_overage",
        "payload[stripe_customer_id]": "cus_1",
        "payload[value]": "12.5",
        "identifier": "usage:req-1",
        "timestamp": str(int(datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp())),
    }


def test_payment_intent_is_confirmed_off_session(api: StripeApi, scripted: ScriptedStripe) -> None:
    scripted.replies = [(200, {"id": "pi_1", "object": "payment_intent", "status": "succeeded"}, 0)]
    answer = api.create_payment_intent(
        customer="cus_1",
        amount=1000,
        currency="eur",
        payment_method="pm_card_visa",
        metadata={"credits_pack": "starter", "credits_customer": "cus_1"},
        idempotency_key="topup:cus_1:usage:req-9",
    )
    assert answer["id"] == "pi_1"
    [request] = scripted.requests
    assert request["path"] == "/v1/payment_intents"
    assert request["headers"]["idempotency-key"] == "topup:cus_1:usage:req-9"
    assert request["form"] == {
        "customer": "cus_1",
        "amount": "1000",
        "currency": "eur",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "metadata[credits_pack]": "starter",
        "metadata[credits_customer]": "cus_1",
    }


def test_reads_carry_the_key_too(api: StripeApi, scripted: ScriptedStripe) -> None:
    scripted.replies = [
        (200, {"id": "price_1", "object": "price", "unit_amount": 1000, "currency": "eur"}, 0)
    ]
    assert api.retrieve_price("price_1", idempotency_key="price:price_1")["unit_amount"] == 1000
    scripted.replies = [(200, {"id": "cus_1", "object": "customer"}, 0)]
    assert api.retrieve_customer("cus_1", idempotency_key="customer:cus_1")["id"] == "cus_1"
    assert [(r["method"], r["path"], r["headers"]["idempotency-key"]) for r in scripted.requests] == [
        ("GET", "/v1/prices/price_1", "price:price_1"),
        ("GET", "/v1/customers/cus_1", "customer:cus_1"),
    ]


def test_a_500_is_retried_with_the_same_key(api: StripeApi, scripted: ScriptedStripe) -> None:
    error = {"error": {"type": "api_error", "message": "boom"}}
    scripted.replies = [(500, error, 0), (200, METER_EVENT, 0)]
    assert meter_event(api)["identifier"] == "usage:req-1"
    assert [r["headers"]["idempotency-key"] for r in scripted.requests] == ["meter:usage:req-1"] * 2


def test_persistent_500_is_unavailable_after_the_retries(api: StripeApi, scripted: ScriptedStripe) -> None:
    scripted.replies = [(500, {"error": {"type": "api_error", "message": "boom"}}, 0)]
    with pytest.raises(StripeUnavailable):
        meter_event(api)
    assert len(scripted.requests) == 1 + stripe_api.MAX_NETWORK_RETRIES


def test_429_is_retried_with_backoff(api: StripeApi, scripted: ScriptedStripe) -> None:
    limited = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow down"}}
    scripted.replies = [(429, limited, 0), (429, limited, 0), (200, METER_EVENT, 0)]
    assert meter_event(api)["identifier"] == "usage:req-1"
    assert len(scripted.requests) == 3
    assert {r["headers"]["idempotency-key"] for r in scripted.requests} == {"meter:usage:req-1"}
    assert len(api.sleeps) == 2  # type: ignore[attr-defined]
    scripted.requests.clear()
    scripted.replies = [(429, limited, 0)]
    with pytest.raises(StripeUnavailable):
        meter_event(api)
    assert len(scripted.requests) == stripe_api.RATE_LIMIT_ATTEMPTS


def test_a_timeout_is_retried_then_unavailable(
    api: StripeApi, scripted: ScriptedStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stripe_api, "TIMEOUT_SECONDS", (1.0, 0.2))
    slow = StripeApi(new_stripe_client("rk_test_123", scripted.base))
    scripted.replies = [(200, METER_EVENT, 1.0)]
    with pytest.raises(StripeUnavailable):
        meter_event(slow)
    assert len(scripted.requests) == 1 + stripe_api.MAX_NETWORK_RETRIES
    assert {r["headers"]["idempotency-key"] for r in scripted.requests} == {"meter:usage:req-1"}


def test_a_400_is_rejected_without_retry(api: StripeApi, scripted: ScriptedStripe) -> None:
    bad = {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "no meter"}}
    scripted.replies = [(400, bad, 0)]
    with pytest.raises(StripeRejected) as caught:
        meter_event(api)
    assert caught.value.info.status == 400 and caught.value.info.code == "resource_missing"
    assert not isinstance(caught.value, StripeUnavailable)
    assert len(scripted.requests) == 1


def test_a_decline_carries_the_payment_intent(api: StripeApi, scripted: ScriptedStripe) -> None:
    declined = {
        "error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
            "payment_intent": {"id": "pi_9", "object": "payment_intent", "status": "requires_payment_method"},
        }
    }
    scripted.replies = [(402, declined, 0)]
    with pytest.raises(CardDeclined) as caught:
        api.create_payment_intent(
            customer="cus_1",
            amount=1000,
            currency="eur",
            payment_method="pm_card_chargeDeclined",
            metadata={},
            idempotency_key="topup:x",
        )
    assert caught.value.decline_code == "generic_decline"
    assert caught.value.payment_intent is not None and caught.value.payment_intent["id"] == "pi_9"
    assert len(scripted.requests) == 1


def test_not_configured_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    monkeypatch.delenv("STRIPE_API_KEY_PARAMETER", raising=False)
    with pytest.raises(StripeNotConfigured, match="STRIPE_API_KEY"):
        stripe_api.stripe_api()


def test_environment_key_and_base(scripted: ScriptedStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "rk_test_env")
    monkeypatch.setenv("STRIPE_API_BASE", scripted.base + "/")
    monkeypatch.setattr(stripe_api, "_cached", None)
    scripted.replies = [(200, METER_EVENT, 0)]
    first = stripe_api.stripe_api()
    assert stripe_api.stripe_api() is first  # one client per instance
    meter_event(first)
    assert scripted.requests[0]["headers"]["authorization"] == "Bearer rk_test_env"
    monkeypatch.setenv("STRIPE_API_KEY", "rk_test_rotated")
    assert stripe_api.stripe_api() is not first


def test_every_call_needs_a_key(api: StripeApi) -> None:
    with pytest.raises(ValueError, match="idempotency key"):
        api.retrieve_price("price_1", idempotency_key="")


def test_the_sdk_is_imported_lazily() -> None:
    code = "import sys, credits_ledger.stripe_api; print('stripe' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
