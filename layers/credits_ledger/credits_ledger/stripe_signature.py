"""Stripe webhook signatures, verified by the stripe SDK on the raw body before anything is parsed."""

from __future__ import annotations

import json
from typing import Any

from credits_ledger.domain.errors import CreditsError
from credits_ledger.secrets import secret

TOLERANCE_SECONDS = 300


class InvalidSignature(CreditsError):
    """Missing, wrong, stale or tampered signature: answer 400 and change nothing."""


def webhook_secrets() -> list[str]:
    """Endpoint secrets, comma-separated: during a rotation both the old and the new one are accepted."""
    configured = secret("STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET_PARAMETER") or ""
    return [s.strip() for s in configured.split(",") if s.strip()]


def verified_event(payload: str, signature_header: str | None, secrets: list[str]) -> dict[str, Any]:
    """The event as a plain dict once one of ``secrets`` verifies ``signature_header`` on ``payload``.

    The SDK's ``verify_header`` (what ``Webhook.construct_event`` calls before building an object we don't
    need) checks every ``v1`` signature in the header (Stripe sends several while the secret rotates) and
    rejects timestamps older than the tolerance. The body is parsed only once the signature holds.
    """
    if not signature_header:
        raise InvalidSignature("missing Stripe-Signature header")
    if not secrets:
        raise InvalidSignature("no webhook secret configured")
    # Imported here, not with the module: the SDK is a third of the webhook handler's import, and a cold start
    # pays it once, on the first delivery that carries a signature (Stripe waits 10 s for an answer).
    import stripe

    for endpoint_secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature_header, endpoint_secret, TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError:
            continue
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise InvalidSignature("body is not JSON") from exc
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
            raise InvalidSignature("body is not a Stripe event")
        return event
    raise InvalidSignature("signature does not match the endpoint secret, or is older than 300 s")
