"""The webhook's Stripe reads (stripe_api.WebhookReads): prices cached, a refused read fails the event."""

from __future__ import annotations

from typing import Any

import pytest

from credits_ledger.stripe_api import StripeErrorInfo, StripeRejected, WebhookReads
from credits_ledger.stripe_facts import StripeReadFailed


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def retrieve_price(self, price_id: str, *, idempotency_key: str) -> dict[str, Any]:
        self.calls.append(("price", idempotency_key))
        if price_id == "price_gone":
            raise StripeRejected(StripeErrorInfo(404, "resource_missing", "No such price"))
        return {"id": price_id, "unit_amount": 4900}

    def list_invoice_lines(self, invoice_id: str, *, idempotency_key: str) -> list[dict[str, Any]]:
        self.calls.append(("lines", idempotency_key))
        return [{"id": "il_1"}]


def test_prices_are_cached_for_five_minutes() -> None:
    now = [0.0]
    api = FakeApi()
    reads = WebhookReads(api, clock=lambda: now[0])  # type: ignore[arg-type]
    assert reads.retrieve_price("price_1")["unit_amount"] == 4900
    reads.retrieve_price("price_1")
    assert len(api.calls) == 1
    now[0] = 301.0
    reads.retrieve_price("price_1")
    assert api.calls == [("price", "price:price_1"), ("price", "price:price_1")]


def test_a_refused_read_becomes_a_failed_event_reason() -> None:
    reads = WebhookReads(FakeApi())  # type: ignore[arg-type]
    with pytest.raises(StripeReadFailed, match="price_gone"):
        reads.retrieve_price("price_gone")
    assert reads.list_invoice_lines("in_1") == [{"id": "il_1"}]


def test_list_invoice_lines_follows_every_page() -> None:
    from credits_ledger.stripe_api import StripeApi

    pages = [
        {"data": [{"id": "il_1"}, {"id": "il_2"}], "has_more": True},
        {"data": [{"id": "il_3"}], "has_more": False},
    ]
    seen: list[dict[str, Any]] = []

    class Lines:
        def list(self, invoice: str, params: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
            seen.append(dict(params))
            return pages[len(seen) - 1]

    class Client:
        class v1:
            class invoices:
                line_items = Lines()

    lines = StripeApi(Client()).list_invoice_lines("in_1", idempotency_key="k")
    assert [line["id"] for line in lines] == ["il_1", "il_2", "il_3"]
    assert seen == [{"limit": 100}, {"limit": 100, "starting_after": "il_2"}]


def test_interpret_turns_a_refused_read_into_a_failed_event() -> None:
    from credits_ledger.pricing import parse_pricing
    from credits_ledger.stripe_facts import Unprocessable, interpret

    class Refusing:
        def list_invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
            raise StripeReadFailed(f"listing the lines of invoice {invoice_id}: 404")

        def retrieve_price(self, price_id: str) -> dict[str, Any]:
            raise StripeReadFailed(f"retrieving price {price_id}: 404")

    invoice = {"id": "in_1", "customer": "cus_1", "lines": {"data": [], "has_more": True}}
    event = {"id": "evt_1", "type": "invoice.paid", "livemode": False, "data": {"object": invoice}}
    meaning = interpret(event, parse_pricing({}), Refusing())
    assert isinstance(meaning, Unprocessable) and "in_1" in meaning.reason
