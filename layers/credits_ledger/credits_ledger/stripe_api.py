"""Calls to the Stripe API: the stripe SDK's ``StripeClient``, configured once per Lambda instance.

- ``STRIPE_API_KEY`` (locally) or the SSM SecureString named by ``STRIPE_API_KEY_PARAMETER`` (in AWS): a
  restricted key. Without one, ``StripeNotConfigured`` names what is missing.
- ``STRIPE_API_BASE`` points every call elsewhere (the local emulator at ``http://127.0.0.1:3000/_stripe``, a
  stripe-mock); unset, calls go to ``https://api.stripe.com``.
- Every call carries an idempotency key chosen by the caller from what the call is *for* (a usage event, a
  top-up crossing), so a retry after a crash or a timeout is the same request to Stripe, never a second one.
- Network errors, timeouts, 409 and 5xx are retried by the SDK (``max_network_retries``, exponential backoff
  with jitter, same idempotency key); 429 is retried here with backoff; what is still failing becomes
  ``StripeUnavailable`` (retry later). A 4xx is ``StripeRejected`` (``CardDeclined`` for a card error) and is
  never retried: the same request would fail the same way.

The SDK is imported on first use: the API function imports this module's errors without paying for it.
Never called on the request path of a debit (the workers of jobs/ call it).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.money import format_amount
from credits_ledger.secrets import secret

# (connect, read) seconds: well under the workers' Lambda timeout even with every retry.
TIMEOUT_SECONDS = (3.0, 10.0)
MAX_NETWORK_RETRIES = 2
RATE_LIMIT_ATTEMPTS = 3
RATE_LIMIT_BASE_DELAY_SECONDS = 0.5


class StripeNotConfigured(CreditsError):
    """No Stripe API key: set STRIPE_API_KEY (locally) or STRIPE_API_KEY_PARAMETER (an SSM parameter name)."""


@dataclass(frozen=True)
class StripeErrorInfo:
    status: int | None
    code: str | None
    message: str


class StripeUnavailable(CreditsError):
    """Stripe did not answer usably (network, timeout, 429, 5xx) after the retries: try again later, with the
    same idempotency key. Whether Stripe applied the request is unknown."""

    def __init__(self, info: StripeErrorInfo) -> None:
        super().__init__(f"Stripe unavailable ({info.status or 'no answer'}): {info.message}")
        self.info = info


class StripeRejected(CreditsError):
    """Stripe refused the request (4xx): retrying it unchanged fails the same way."""

    def __init__(self, info: StripeErrorInfo) -> None:
        super().__init__(f"Stripe rejected the request ({info.status} {info.code}): {info.message}")
        self.info = info


class CardDeclined(StripeRejected):
    """A payment was declined; ``payment_intent`` is the PaymentIntent Stripe returned with the error."""

    def __init__(
        self, info: StripeErrorInfo, decline_code: str | None, payment_intent: dict[str, Any] | None
    ):
        super().__init__(info)
        self.decline_code = decline_code
        self.payment_intent = payment_intent


def api_key() -> str | None:
    return secret("STRIPE_API_KEY", "STRIPE_API_KEY_PARAMETER")


def api_base() -> str | None:
    return os.environ.get("STRIPE_API_BASE") or None


def new_stripe_client(key: str, base: str | None = None) -> Any:
    """A StripeClient with our timeouts and retries; ``base`` replaces every Stripe host."""
    import stripe

    addresses: dict[str, str] = {}
    if base:
        base = base.rstrip("/")
        addresses = {"api": base, "connect": base, "files": base, "meter_events": base}
    return stripe.StripeClient(
        key,
        base_addresses=addresses,  # type: ignore[arg-type]
        max_network_retries=MAX_NETWORK_RETRIES,
        http_client=stripe.RequestsClient(timeout=TIMEOUT_SECONDS),
    )


_cached: tuple[tuple[str, str | None], StripeApi] | None = None


def stripe_api() -> StripeApi:
    """The instance's StripeApi (rebuilt when the key or base changes, e.g. an SSM rotation)."""
    global _cached
    key = api_key()
    if not key:
        raise StripeNotConfigured(
            "no Stripe API key: set STRIPE_API_KEY, or STRIPE_API_KEY_PARAMETER to an SSM SecureString"
        )
    config = (key, api_base())
    if _cached is None or _cached[0] != config:
        _cached = (config, StripeApi(new_stripe_client(*config)))
    return _cached[1]


def _as_dict(value: Any) -> dict[str, Any]:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else dict(value)


def _info(exc: Any) -> StripeErrorInfo:
    error = getattr(exc, "error", None)
    return StripeErrorInfo(
        status=getattr(exc, "http_status", None),
        code=getattr(error, "code", None) or getattr(exc, "code", None),
        message=getattr(exc, "user_message", None) or str(exc) or type(exc).__name__,
    )


class StripeApi:
    """The calls this service makes to Stripe, each with the caller's idempotency key; answers as dicts."""

    def __init__(self, client: Any, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._sleep = sleep

    def create_meter_event(
        self,
        *,
        event_name: str,
        stripe_customer_id: str,
        value: Decimal,
        identifier: str,
        timestamp: datetime,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """``POST /v1/billing/meter_events``; ``identifier`` makes Stripe drop a duplicate for 24 h."""
        params = {
            "event_name": event_name,
            "payload": {"stripe_customer_id": stripe_customer_id, "value": format_amount(value)},
            "identifier": identifier,
            "timestamp": int(timestamp.timestamp()),
        }
        return self._call(self._client.v1.billing.meter_events.create, params, idempotency_key)

    def create_payment_intent(
        self,
        *,
        customer: str,
        amount: int,
        currency: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> dict[str, Any]:
        """``POST /v1/payment_intents``, confirmed off-session with the customer's saved payment method.

        A decline raises CardDeclined carrying the PaymentIntent Stripe returned."""
        params = {
            "customer": customer,
            "amount": amount,
            "currency": currency,
            "payment_method": payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": metadata,
        }
        return self._call(self._client.v1.payment_intents.create, params, idempotency_key)

    def retrieve_customer(self, customer_id: str, *, idempotency_key: str) -> dict[str, Any]:
        """``GET /v1/customers/{id}`` (its ``invoice_settings.default_payment_method``)."""
        return self._call(
            lambda params, options: self._client.v1.customers.retrieve(customer_id, params, options),
            {},
            idempotency_key,
        )

    def retrieve_price(self, price_id: str, *, idempotency_key: str) -> dict[str, Any]:
        """``GET /v1/prices/{id}`` (``unit_amount``, ``currency``)."""
        return self._call(
            lambda params, options: self._client.v1.prices.retrieve(price_id, params, options),
            {},
            idempotency_key,
        )

    def list_invoice_lines(self, invoice_id: str, *, idempotency_key: str) -> list[dict[str, Any]]:
        """``GET /v1/invoices/{id}/lines``, every page (an invoice whose event said ``lines.has_more``)."""
        lines: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = self._call(
                lambda p, options: self._client.v1.invoices.line_items.list(invoice_id, p, options),
                params,
                idempotency_key,
            )
            lines.extend(page.get("data") or [])
            if not page.get("has_more") or not lines:
                return lines
            params = {"limit": 100, "starting_after": lines[-1]["id"]}

    def _call(
        self, method: Callable[[dict[str, Any], dict[str, Any]], Any], params: dict[str, Any], key: str
    ) -> dict[str, Any]:
        import stripe

        if not key:
            raise ValueError("every Stripe call needs an idempotency key")
        options = {"idempotency_key": key}
        for attempt in range(RATE_LIMIT_ATTEMPTS):
            try:
                return _as_dict(method(params, options))
            except stripe.RateLimitError as exc:
                if attempt == RATE_LIMIT_ATTEMPTS - 1:
                    raise StripeUnavailable(_info(exc)) from exc
                # Full jitter: concurrent workers hitting the limit do not retry in lockstep.
                self._sleep(random.uniform(0, RATE_LIMIT_BASE_DELAY_SECONDS * 2**attempt))
            except stripe.CardError as exc:
                error = getattr(exc, "error", None)
                intent = getattr(error, "payment_intent", None)
                raise CardDeclined(
                    _info(exc),
                    decline_code=getattr(error, "decline_code", None),
                    payment_intent=_as_dict(intent) if intent is not None else None,
                ) from exc
            except (stripe.APIConnectionError, stripe.APIError) as exc:
                raise StripeUnavailable(_info(exc)) from exc
            except stripe.StripeError as exc:
                info = _info(exc)
                if info.status is not None and (info.status >= 500 or info.status == 409):
                    raise StripeUnavailable(info) from exc
                raise StripeRejected(info) from exc
        raise AssertionError("unreachable")  # pragma: no cover


PRICE_CACHE_SECONDS = 300.0


class WebhookReads:
    """The Stripe reads the webhook may need (``stripe_facts.StripeReads``): an invoice's remaining lines and a
    price a line names only by id, prices cached per instance for ``PRICE_CACHE_SECONDS``. A read Stripe
    refuses (a deleted price) becomes ``StripeReadFailed``: the event is stored as failed with the reason,
    never retried forever; an outage (StripeUnavailable) propagates, so Stripe redelivers later."""

    def __init__(self, api: StripeApi, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._clock = clock
        self._prices: dict[str, tuple[float, dict[str, Any]]] = {}

    def list_invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        from credits_ledger.stripe_facts import StripeReadFailed

        try:
            return self._api.list_invoice_lines(invoice_id, idempotency_key=f"invoice-lines:{invoice_id}")
        except StripeRejected as exc:
            raise StripeReadFailed(f"listing the lines of invoice {invoice_id}: {exc}") from exc

    def retrieve_price(self, price_id: str) -> dict[str, Any]:
        from credits_ledger.stripe_facts import StripeReadFailed

        cached = self._prices.get(price_id)
        if cached is not None and self._clock() - cached[0] < PRICE_CACHE_SECONDS:
            return cached[1]
        try:
            price = self._api.retrieve_price(price_id, idempotency_key=f"price:{price_id}")
        except StripeRejected as exc:
            raise StripeReadFailed(f"retrieving price {price_id}: {exc}") from exc
        self._prices[price_id] = (self._clock(), price)
        return price


def webhook_reads() -> WebhookReads | None:
    """The webhook's Stripe reads when a key is configured, else None (such events are stored as failed)."""
    return WebhookReads(stripe_api()) if api_key() else None
