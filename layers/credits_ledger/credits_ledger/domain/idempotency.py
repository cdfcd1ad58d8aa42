"""Idempotency keys of ledger entries and request fingerprints: every format defined once, here.

A ledger entry is stored under its operation's idempotency key (``ENTRY#<key>``), so a key names one
operation for as long as the ledger lasts: two different operations must never share a key, and every retry
of one operation must build the same key. Each function below is the only place its format is spelled;
callers (API, webhooks, jobs, CLI, tests) import it instead of writing the f-string again.

A fingerprint is what tells a replay (same key, same request: the first answer again) from a different
request under a used key (409 ``idempotency_mismatch``). It is the SHA-256 of the canonical JSON of the
request's meaningful fields, so equal requests however spelled share it.

Pure: no I/O, no clock, no randomness (a caller that wants a fresh key passes a fresh id).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal

# DynamoDB limits a partition key to 2,048 bytes; ``ENTRY#`` and the key must fit. Identifiers of up to 255
# characters (4 bytes each in UTF-8 at worst) can exceed that when two of them make one key, so a key longer
# than this is replaced by a digest of its parts (see ``usage_key``).
MAX_KEY_BYTES = 1024

USAGE_PREFIX = "usage:"
# Keys too long to spell out: a prefix no spelled-out key starts with, then a digest of the parts.
USAGE_DIGEST_PREFIX = "usage#sha256:"


def _escape(part: str) -> str:
    """``%`` and ``:`` percent-encoded, so the first ``:`` after an escaped part ends it (no two parts lists
    spell the same key)."""
    return part.replace("%", "%25").replace(":", "%3A")


def usage_key(customer: str, usage_id: str) -> str:
    """A usage event's key: (customer, id). The same id sent for another customer is another event.

    ``usage:<customer, ':' and '%' escaped>:<id>``; when that would exceed ``MAX_KEY_BYTES`` bytes,
    ``usage#sha256:<hex digest of the pair>`` (still one key per pair, never equal to a spelled-out key).
    """
    spelled = f"{USAGE_PREFIX}{_escape(customer)}:{usage_id}"
    if len(spelled.encode("utf-8")) <= MAX_KEY_BYTES:
        return spelled
    return USAGE_DIGEST_PREFIX + _digest([customer, usage_id])


def admin_grant_key(request_id: str) -> str:
    """A grant made through the admin API: the client's ``id`` (idempotent) or a fresh id from the caller."""
    return f"grant:{request_id}"


def expire_key(grant_id: str) -> str:
    """What remained of a grant at its expiry (the nightly job; a rollover rides in the same entry's
    transaction): a grant expires once."""
    return f"expire:{grant_id}"


def rollover_key(grant_id: str) -> str:
    """The grant carried over from an expiring plan month: at most one per expired grant."""
    return f"rollover:{grant_id}"


def void_key(grant_id: str) -> str:
    """Voiding what remains of a grant, whoever asks (admin, a lost dispute, a cancellation): once."""
    return f"void:{grant_id}"


def stripe_grant_key(payment_key: str, line_id: str) -> str:
    """Credits a Stripe payment (PaymentIntent or invoice record key) grants for one of its lines."""
    return f"stripe:grant:{payment_key}:{line_id}"


def stripe_revoke_key(grant_id: str, target: object) -> str:
    """A refund's revocation from a grant up to a cumulative target: each target level is applied once."""
    return f"stripe:revoke:{grant_id}:{target}"


def stripe_dispute_key(effect: str, grant_id: str, round_version: int) -> str:
    """A dispute hold or release of a grant. A grant may be held and released more than once (a second
    dispute): the payment record's version tells the rounds apart and is the same for every retry of one."""
    return f"stripe:{effect}:{grant_id}:{round_version}"


# ---- reservations: ids are unique across accounts, so their keys are too --------------------------------
def subscription_month_key(subscription_item: str, period_start_epoch: int, month_index: int) -> str:
    """A subscription item's month (docs/subscriptions.md): granted once, whichever invoice, event or retry
    announces it."""
    return f"stripe:subscription:{subscription_item}:{period_start_epoch}:{month_index}"


def proration_grant_key(line_id: str, month_index: int) -> str:
    """(The ``month_index``-th monthly grant of) a positive proration line: once per line."""
    return f"stripe:proration:{line_id}:{month_index}"


def proration_revoke_key(grant_id: str, target: object) -> str:
    """Negative prorations' revocation from a period grant up to a cumulative target: each level once."""
    return f"stripe:proration-revoke:{grant_id}:{target}"


def trial_key(subscription_id: str) -> str:
    """A subscription's trial credits: one promotional grant per subscription."""
    return f"stripe:trial:{subscription_id}"


# A reservation id is the client's (any printable characters, ``:`` included) and several formats below
# extend one prefix with more parts (``reserve:<id>`` and ``reserve:<id>:extend:<seq>``, ``unreserve:<id>`` and
# ``unreserve:<id>:expire``): the id is escaped as in usage keys, so no id can spell another operation's key
# (ids without ``:`` or ``%`` read as before).
def reserve_key(reservation_id: str) -> str:
    """Creating a reservation (its ``reserve`` entry): once per id, whichever account asks."""
    return f"reserve:{_escape(reservation_id)}"


def extend_key(reservation_id: str, seq: int) -> str:
    """An extension, keyed by the entry's sequence number: a retry decided on a newer account version is a
    new extension (it only moves ``expires_at`` again, to now + ``expires_in``)."""
    return f"reserve:{_escape(reservation_id)}:extend:{seq}"


def capture_key(reservation_id: str) -> str:
    """The ``debit`` entry of a capture: at most one per reservation."""
    return f"capture:{_escape(reservation_id)}"


def unreserve_key(reservation_id: str) -> str:
    """The end of a reservation, written by whichever of capture, release and the sweep comes first: the
    key that makes a reservation end once."""
    return f"unreserve:{_escape(reservation_id)}"


def unreserve_expire_key(reservation_id: str) -> str:
    """Credits a reservation's end gives back to grants already past their expiry, expired at once."""
    return f"unreserve:{_escape(reservation_id)}:expire"


# ---- fingerprints ----------------------------------------------------------------------------------------
def _digest(value: object) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def fingerprint(fields: Mapping[str, object]) -> str:
    """SHA-256 of the canonical JSON of ``fields`` (keys sorted, no spaces, ASCII). Values must already be
    canonical: amounts through ``format_amount``, times through ``iso``, mappings as sorted pairs."""
    return _digest(dict(fields))


def amount_fingerprint(amount: Decimal) -> str:
    """Operations whose only free parameter is an amount (revoke, adjust) fingerprint it as written."""
    return str(amount)
