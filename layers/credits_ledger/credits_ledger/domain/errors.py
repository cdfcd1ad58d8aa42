"""Named domain errors: the data layer raises them from failed conditions, handlers map them to HTTP."""

from __future__ import annotations

from decimal import Decimal


class CreditsError(Exception):
    """Base of every error the domain can name."""


class InsufficientCredits(CreditsError):
    def __init__(self, account_id: str, requested: Decimal, available: Decimal) -> None:
        super().__init__(f"account {account_id} has {available} credits available, {requested} requested")
        self.account_id = account_id
        self.requested = requested
        self.available = available


class IdempotencyMismatch(CreditsError):
    """The same idempotency key was used before for a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different request")
        self.key = key


class NotFound(CreditsError):
    """No such resource (HTTP 404); ``what`` names its kind for the message ("grant", "API key")."""

    what = "resource"


class GrantNotFound(NotFound):
    what = "grant"

    def __init__(self, grant_id: str) -> None:
        super().__init__(f"grant {grant_id} does not exist")
        self.grant_id = grant_id


class GrantNotLive(CreditsError):
    """The grant is depleted, expired or voided: nothing remains to act on."""

    def __init__(self, grant_id: str, status: str) -> None:
        super().__init__(f"grant {grant_id} is {status}")
        self.grant_id = grant_id
        self.status = status


class GrantNotDue(CreditsError):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"grant {grant_id} has not reached its expiry time")
        self.grant_id = grant_id


class InvalidField(CreditsError):
    """A request field the domain rejects (HTTP 422 naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidGrant(InvalidField):
    """A grant request the domain rejects (amount, dates, priority)."""


class InvalidCursor(CreditsError):
    """A list cursor this API did not hand out (HTTP 400)."""

    def __init__(self) -> None:
        super().__init__("cursor is not one this API returned")


class WriteRejected(CreditsError):
    """DynamoDB refused a write for a reason no retry can cure: an item over the 400 KB item limit, an
    invalid request (``ValidationError`` / ``ValidationException``), an item collection over its size limit.
    Never retried; the API answers 500 (and alarms), a Stripe event is stored as failed for replay."""

    def __init__(self, reasons: tuple[str, ...], detail: str) -> None:
        super().__init__(f"DynamoDB rejected the write ({', '.join(reasons)}): {detail}")
        self.reasons = reasons
        self.detail = detail


class GrantRecordMismatch(CreditsError):
    """The account lists a grant as live but its grant record is closed or missing: the books disagree, and
    closing it again would fail the same way on every retry (reconciliation reports it; fix by hand)."""

    def __init__(self, grant_ids: tuple[str, ...]) -> None:
        super().__init__(
            f"grant record(s) {', '.join(grant_ids)} closed or missing while live on the account"
        )
        self.grant_ids = grant_ids


class ConcurrencyConflict(CreditsError):
    """Too many concurrent writers on one account: the caller may retry (HTTP 503/429)."""


class InvalidTransition(CreditsError):
    """The grant is not in a state that allows this operation (e.g. releasing a grant that is not held)."""

    def __init__(self, grant_id: str, message: str) -> None:
        super().__init__(f"grant {grant_id}: {message}")
        self.grant_id = grant_id
