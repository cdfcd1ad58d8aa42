"""Automatic top-ups seen from Stripe's webhooks: ``payment_intent.succeeded`` / ``.payment_failed`` of a
PaymentIntent the billing sync worker created (``metadata.credits_topup`` names the attempt) settle the
attempt and publish ``credits.topup.succeeded`` / ``credits.topup.failed``. The credits themselves come from
the same event through the ordinary purchase path (``metadata.credits_pack``), granted once per payment.

Only the settlement that wins publishes: it notes the event on the attempt in the settling transaction,
publishes it, then clears the note (``announce_pending``); the loser of the race publishes nothing, and a
later delivery that finds the attempt settled with the note still there a minute later (the settler crashed
in between) publishes it (at-least-once; ``attempt_id`` lets consumers deduplicate).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from credits_ledger.bus import BusEvent, Publisher
from credits_ledger.dal.topups import FAILED, OPEN, SUCCEEDED, TopupAttempt, TopupRepository

TOPUP_SUCCEEDED = "credits.topup.succeeded"
TOPUP_FAILED = "credits.topup.failed"
ANNOUNCE_GRACE = timedelta(minutes=1)
SETTLING_EVENTS = {"payment_intent.succeeded": SUCCEEDED, "payment_intent.payment_failed": FAILED}


def topup_detail(
    attempt: TopupAttempt, payment_intent: str | None, reason: str | None = None
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "attempt_id": attempt.attempt_id,
        "account": attempt.account,
        "pack": attempt.pack,
        "quantity": attempt.quantity,
        "crossing_entry": attempt.entry_key,
        "payment_intent": payment_intent,
    }
    if reason:
        detail["reason"] = reason
    return detail


def settle_from_event(
    event: dict[str, Any],
    topups: TopupRepository,
    bus: Publisher,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    mode: str = "test",
) -> str | None:
    """Settle the top-up attempt a verified Stripe event reports on; returns the new status, or None when the
    event is not about an open attempt (another event type, a payment we did not start, a repeat, an event
    of the other Stripe ``mode`` or of a connected account)."""
    status = SETTLING_EVENTS.get(str(event.get("type")))
    obj = (event.get("data") or {}).get("object") or {}
    attempt_id = (obj.get("metadata") or {}).get("credits_topup")
    if status is None or not attempt_id:
        return None
    if event.get("account") or bool(event.get("livemode")) != (mode == "live"):
        return None  # a connected account's payment, or the other mode's: none of this deployment's
    attempt = topups.attempt(str(attempt_id))
    if attempt is None:
        return None
    if attempt.status not in OPEN:
        repair_announcement(topups, bus, attempt, clock())
        return None
    reason = None
    if status == FAILED:
        error = obj.get("last_payment_error") or {}
        reason = f"declined: {error.get('decline_code') or error.get('code') or 'payment failed'}"
    kind = TOPUP_SUCCEEDED if status == SUCCEEDED else TOPUP_FAILED
    if not topups.settle(attempt, status, clock(), kind, payment_intent=obj.get("id"), reason=reason):
        return None  # the worker settled it first (a decline): it publishes
    announce_pending(topups, bus, attempt.attempt_id)
    return status


def repair_announcement(
    topups: TopupRepository, bus: Publisher, attempt: TopupAttempt, now: datetime
) -> None:
    """A settled attempt whose event is still noted long after it settled: its settler crashed before
    publishing, publish it now. A fresh note belongs to a settler still at work (the other one of a race)."""
    if attempt.announce and attempt.settled_at is not None and now - attempt.settled_at > ANNOUNCE_GRACE:
        announce_pending(topups, bus, attempt.attempt_id)


def announce_pending(topups: TopupRepository, bus: Publisher, attempt_id: str) -> None:
    """Publish the settlement event still noted on the attempt, then clear the note."""
    attempt = topups.attempt(attempt_id)
    if attempt is None or not attempt.announce:
        return
    bus.publish([BusEvent(attempt.announce, topup_detail(attempt, attempt.payment_intent, attempt.reason))])
    topups.announced(attempt_id)
