"""``make dev`` end to end with no network: the local Stripe emulator on the stack's port receives the
overage meter event of an overage debit and the PaymentIntent of an automatic top-up from the billing sync
function (fed by the stack's stream poller), then sends the signed webhook back to the stack, which grants
the pack; a declined card is recorded and published."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import ADMIN_KEY, StackProcess


def wait_for(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def emulator_calls(stack: StackProcess, path: str) -> list[dict[str, Any]]:
    status, body, _ = stack.get("/_stripe/_emulator/requests?path=" + urllib.parse.quote(path))
    assert status == 200, body
    return list(body["data"])


def setup_account(stack: StackProcess, settings: dict[str, Any], credits: str) -> str:
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    status, body, _ = stack.request("PUT", f"/v1/customers/{customer}/settings", settings, key=ADMIN_KEY)
    assert status == 200, body
    status, body, _ = stack.request(
        "POST", f"/v1/customers/{customer}/grants", {"amount": credits}, key=ADMIN_KEY
    )
    assert status == 201, body
    return customer


def usage(stack: StackProcess, customer: str, usage_id: str, quantity: int) -> dict[str, Any]:
    event = {"id": usage_id, "customer": customer, "meter": "api_call", "quantity": quantity}
    status, body, _ = stack.request("POST", "/v1/usage", event, key=ADMIN_KEY)
    assert status == 201, body
    return dict(body)


def available(stack: StackProcess, customer: str) -> str:
    return str(stack.get(f"/v1/customers/{customer}/balance", key=ADMIN_KEY)[1]["available"])


def test_overage_is_reported_to_the_emulator_once(stack: StackProcess) -> None:
    customer = setup_account(stack, {"overage": {"policy": "allow"}}, "10")
    answer = usage(stack, customer, "ovg-1", 15)
    assert (answer["overage"], answer["balance"]) == ("5", "0")
    calls = wait_for(
        lambda: [
            c
            for c in emulator_calls(stack, "/v1/billing/meter_events")
            if c["params"]["payload"]["stripe_customer_id"] == customer
        ]
    )
    assert len(calls) == 1, calls
    assert calls[0]["params"]["payload"]["value"] == "5"
    assert calls[0]["params"]["event_name"] == "credits_overage"
    assert calls[0]["idempotency_key"].startswith("meter:")


def test_a_top_up_end_to_end(stack: StackProcess) -> None:
    settings = {"auto_topup": {"enabled": True, "threshold": "100", "pack": "starter"}}
    customer = setup_account(stack, settings, "150")
    usage(stack, customer, "tu-1", 100)  # 50 left: below 100
    # the emulator's payment_intent.succeeded webhook grants the pack (1000 credits)
    assert wait_for(lambda: available(stack, customer) == "1050"), available(stack, customer)
    [intent] = [
        c for c in emulator_calls(stack, "/v1/payment_intents") if c["params"]["customer"] == customer
    ]
    assert intent["params"]["metadata"]["credits_pack"] == "starter"
    assert intent["params"]["confirm"] == "true" and intent["params"]["off_session"] == "true"
    kinds = wait_for(
        lambda: (
            {
                e["detail-type"]
                for e in stack.get("/_local/events?source=credits")[1]["events"]
                if e["detail"].get("account") == customer and e["detail-type"].startswith("credits.topup.")
            }
            >= {"credits.topup.requested", "credits.topup.succeeded"}
        )
    )
    assert kinds


def test_a_declined_top_up_is_recorded_and_published(stack: StackProcess) -> None:
    settings = {"auto_topup": {"enabled": True, "threshold": "100", "pack": "starter"}}
    customer = setup_account(stack, settings, "150")
    status, _, _ = stack.request(
        "POST",
        f"/_stripe/v1/customers/{customer}",
        raw=b"invoice_settings[default_payment_method]=pm_card_chargeDeclined",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer rk_test_cli"},
    )
    assert status == 200
    usage(stack, customer, "tu-2", 100)

    def failed() -> list[dict[str, Any]]:
        events = stack.get("/_local/events?source=credits")[1]["events"]
        return [
            e
            for e in events
            if e["detail-type"] == "credits.topup.failed" and e["detail"]["account"] == customer
        ]

    [event] = wait_for(failed)
    assert "declined" in event["detail"]["reason"]
    assert available(stack, customer) == "50"
