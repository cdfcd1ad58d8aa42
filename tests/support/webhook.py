"""Running the Stripe webhook's ``lambda_handler`` in a test: deliver a signed event, reset its caches, pick
the fastest tables and a processor on them (the events themselves come from ``credits_dev.stripe_events``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from credits_dev.lambda_context import FakeLambdaContext
from credits_dev.stripe_events import Json, body, signed_api_event
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.ledger import Ledger
from credits_ledger.pricing import load_pricing
from credits_ledger.webhooks import StripeWebhookProcessor


def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext("StripeWebhookFunction", memory_limit_in_mb=256, timeout_s=30)


def deliver(
    ev: Json | str, secret: str, *, base64: bool = False, timestamp: int | None = None
) -> tuple[int, Json]:
    """Sign ``ev`` (an event dict or a raw body) and run it through the webhook's ``lambda_handler``:
    (HTTP status, parsed JSON body)."""
    from functions.stripe_webhook import app  # imported lazily: it reads its environment on first use

    payload = ev if isinstance(ev, str) else body(ev)
    response = app.lambda_handler(signed_api_event(payload, secret, base64, timestamp), lambda_context())
    return response["statusCode"], json.loads(response.get("body") or "null")


def reset_webhook_caches() -> None:
    """Forget the webhook's cached processor, pricing and DynamoDB client (call before and after a test that
    changes TABLE_NAME, CREDITS_PRICING_FILE or the DynamoDB endpoint)."""
    from credits_ledger.dal.client import dynamodb_client
    from credits_ledger.pricing import load_pricing
    from functions.stripe_webhook import app

    app.processor.cache_clear()
    load_pricing.cache_clear()
    dynamodb_client.cache_clear()


@contextlib.contextmanager
def webhook_configured(monkeypatch: pytest.MonkeyPatch, secret: str, pricing_file: Path) -> Iterator[None]:
    """The webhook verifies with ``secret`` (not a secret parameter) and prices with ``pricing_file``, its
    caches reset on entry and on exit."""
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", secret)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET_PARAMETER", raising=False)
    monkeypatch.setenv("CREDITS_PRICING_FILE", str(pricing_file))
    reset_webhook_caches()
    yield
    reset_webhook_caches()


def fast_tables(request: Any) -> tuple[Any, bool]:
    """(tables, on_dynamodb_local): DynamoDB Local's tables when Java is there (``local_tables``, much faster
    than moto for many transactions), else ``moto_tables``. For the long property tests."""
    try:
        return request.getfixturevalue("local_tables"), True
    except pytest.skip.Exception:
        return request.getfixturevalue("moto_tables"), False


@contextlib.contextmanager
def webhook_on_fast_tables(
    request: Any, monkeypatch: pytest.MonkeyPatch, secret: str, pricing_file: Path
) -> Iterator[tuple[Ledger, StripeWebhookProcessor, bool]]:
    """``webhook_configured`` on ``fast_tables``: (ledger, processor, on_dynamodb_local), the ledger and a
    webhook processor of this process on the tables the handler writes to, pricing with ``pricing_file``."""
    with webhook_configured(monkeypatch, secret, pricing_file):
        tables, local = fast_tables(request)
        client, table = tables.client, tables["CreditsTable"]
        ledger = Ledger(AccountRepository(client, table))
        yield ledger, StripeWebhookProcessor(ledger, PaymentRepository(client, table), load_pricing()), local


@dataclass(frozen=True)
class WebhookBackend:
    """A property test's ledger and webhook processor on ``fast_tables``, and how many examples it runs there."""

    ledger: Ledger
    processor: StripeWebhookProcessor
    examples: int


@contextlib.contextmanager
def webhook_backend(
    request: Any, monkeypatch: pytest.MonkeyPatch, secret: str, pricing_file: Path, examples: tuple[int, int]
) -> Iterator[WebhookBackend]:
    """``webhook_on_fast_tables`` with ``examples`` = (on DynamoDB Local, on moto: much slower)."""
    with webhook_on_fast_tables(request, monkeypatch, secret, pricing_file) as (ledger, processor, local):
        yield WebhookBackend(ledger, processor, examples[0] if local else examples[1])
