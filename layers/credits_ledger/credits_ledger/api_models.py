"""HTTP API models (pydantic): what requests may carry and what responses say, mapped explicitly from the
domain dataclasses. Amounts arrive as JSON numbers (parsed as Decimal, never float) or strings and leave as
strings; times leave as UTC ISO 8601 with ``Z``."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from credits_ledger.auth import ApiKey, Scope
from credits_ledger.domain.models import (
    IDENTIFIER_PATTERN,
    MAX_IDENTIFIER_LENGTH,
    PATH_SEGMENT_CHARACTERS,
    Balance,
    Category,
    Grant,
    GrantStatus,
    LedgerEntry,
    is_addressable,
)
from credits_ledger.domain.money import InvalidAmount, format_amount, parse_amount
from credits_ledger.domain.reservations import MAX_ID_BYTES as MAX_RESERVATION_ID_BYTES
from credits_ledger.domain.times import iso

MAX_BATCH_EVENTS = 100
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25
USAGE_MAX_AHEAD = timedelta(minutes=5)
USAGE_MAX_AGE = timedelta(days=35)
# Entry metadata keys the service writes on usage debits; client metadata may not use them.
RESERVED_METADATA_KEYS = frozenset({"meter", "quantity", "timestamp", "available_after", "overage"})

# Amounts this large are no credit balance anyone has; the bound keeps quantity x rate exact in Decimal's
# default 28-digit context.
_MAX_AMOUNT_DIGITS = 15
# ASCII digits only: Python's \d (and Decimal) also take other scripts' digits, which no JSON Schema pattern
# (ECMA-262 \d is [0-9]) and no client expects.
_PLAIN_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def _to_amount(value: object) -> Decimal:
    if isinstance(value, bool | float):
        raise ValueError("must be a decimal string or an exact JSON number")
    if isinstance(value, str):
        if len(value) > 40 or not _PLAIN_DECIMAL.fullmatch(value):
            raise ValueError('must be a decimal number such as 12 or "0.25"')
        value = Decimal(value)
    elif isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise ValueError("must be a decimal string or an exact JSON number")
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value != 0 and value.adjusted() >= _MAX_AMOUNT_DIGITS:
        raise ValueError(f"must be less than 10^{_MAX_AMOUNT_DIGITS}")
    try:
        return parse_amount(value)
    except InvalidAmount as exc:
        raise ValueError(str(exc)) from exc


def _not_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must be 0 or greater")
    return value


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


# Times the ledger stores: grant instants become epoch microseconds (17 digits in the expiry index key, so
# before 5138) and nothing predates the Unix epoch. Outside this range a time is a client error, never a 500.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(3000, 1, 1, tzinfo=UTC)
_TIME_RANGE_MESSAGE = "must be between 1970-01-01T00:00:00Z and 2999-12-31T23:59:59Z"


def _to_utc(value: object) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("must be an ISO 8601 date-time string such as 2024-05-01T12:00:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError("must be an ISO 8601 date-time such as 2024-05-01T12:00:00Z") from exc
    if moment.tzinfo is None:
        raise ValueError("must include a UTC offset (Z or +hh:mm)")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 and 9999-12-31T23:59:59-01:00 leave datetime's range
        utc = None
    if utc is None or not EARLIEST_TIME <= utc < LATEST_TIME:
        raise ValueError(_TIME_RANGE_MESSAGE)
    return utc


_FRACTION_NOT_ZERO = (
    r"(?:[1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}|000[1-9][0-9]{0,2}|0000[1-9][0-9]?|00000[1-9])"
)
# What _to_amount and _positive accept, as JSON Schema says it: a string of at most 40 characters holding a
# decimal > 0 with at most 15 integer digits and 6 significant fractional digits (trailing zeros allowed),
# or a JSON number in (0, 10^15).
_POSITIVE_AMOUNT_SCHEMA = {
    "anyOf": [
        {
            "type": "string",
            "maxLength": 40,
            "pattern": rf"^\+?(0*[1-9][0-9]{{0,14}}(\.[0-9]{{0,6}}0*)?|0*\.{_FRACTION_NOT_ZERO}0*)$",
        },
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10**_MAX_AMOUNT_DIGITS},
    ],
    "description": "exact decimal > 0, at most 6 fractional digits (string or JSON number)",
}
_AMOUNT_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": r"^[+-]?(\d+(\.\d*)?|\.\d+)$"}, {"type": "number"}],
    "description": "exact decimal, at most 6 fractional digits (string or JSON number)",
}

PositiveAmount = Annotated[
    Decimal, BeforeValidator(_to_amount), AfterValidator(_positive), WithJsonSchema(_POSITIVE_AMOUNT_SCHEMA)
]
Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_utc),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "maxLength": 64,
            "description": "ISO 8601 with an offset, from 1970-01-01T00:00:00Z to 2999-12-31T23:59:59Z",
        }
    ),
]
# Identifiers: printable, no control characters.
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_IDENTIFIER_LENGTH, pattern=IDENTIFIER_PATTERN)
]


def _addressable(value: str) -> str:
    if not is_addressable(value):
        raise ValueError(f"must fit in a URL path segment: only {PATH_SEGMENT_CHARACTERS}")
    return value


# An account id is a path segment of the API (/v1/customers/{customer}/...)
AccountId = Annotated[Identifier, AfterValidator(_addressable)]

AmountString = Annotated[str, Field(description='exact decimal as a string, e.g. "1500" or "0.25"')]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[^\x00-\x1f\x7f]+$")]
MetadataValue = Annotated[str, StringConstraints(max_length=500)]


def _cursor(value: str | None) -> str | None:
    """A cursor is opaque, but it must be one this API could have returned (base64 of a DynamoDB key)."""
    if value is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise ValueError("is not a cursor this API returned") from exc
    valid = (
        isinstance(key, dict)
        and 0 < len(key) <= 4
        and all(
            isinstance(name, str)
            and isinstance(attr, dict)
            and len(attr) == 1
            and next(iter(attr)) in ("S", "N")
            and isinstance(next(iter(attr.values())), str)
            for name, attr in key.items()
        )
    )
    if not valid:
        raise ValueError("is not a cursor this API returned")
    return value


# Cursors are opaque to clients; the document still states their shape (URL-safe base64 of a position).
CURSOR_PATTERN = "^[A-Za-z0-9_-]+={0,2}$"
Cursor = Annotated[Annotated[str, StringConstraints(pattern=CURSOR_PATTERN)] | None, AfterValidator(_cursor)]


class ApiModel(BaseModel):
    # defer_build: a model's validator is built when first used, so a cold start builds only those of the
    # routes it serves (a usage call never pays for the admin or reservation models).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class ResponseView(BaseModel):
    """A response the routes build themselves (no client input): built when first used, like ApiModel."""

    model_config = ConfigDict(defer_build=True)


# ---- errors ----------------------------------------------------------------------------------------------
class ErrorDetail(ApiModel):
    field: str
    message: str


class _OmitsEmptyField(ApiModel):
    """A response with one optional field (``omitted_when_none``) left out of the body when it is None,
    instead of sent as null. The serializer's return type is what the OpenAPI document shows for the model."""

    omitted_when_none: ClassVar[str]

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get(self.omitted_when_none) is None:
            data.pop(self.omitted_when_none, None)
        return data


class ErrorBody(_OmitsEmptyField):
    code: str = Field(
        description="invalid_request, unauthorized, forbidden, not_found, idempotency_mismatch, "
        "insufficient_credits, payload_too_large, rate_limited or internal"
    )
    message: str
    details: list[ErrorDetail] | None = None
    omitted_when_none = "details"


class ErrorResponse(ApiModel):
    error: ErrorBody


# ---- health ----------------------------------------------------------------------------------------------
class Health(ApiModel):
    status: Literal["ok"] = "ok"


# ---- usage -----------------------------------------------------------------------------------------------
class UsageRequest(ApiModel):
    id: Identifier = Field(description="usage event id, the idempotency key (kept at least 35 days)")
    customer: AccountId
    meter: Identifier = Field(description="a meter of the pricing configuration")
    quantity: PositiveAmount
    timestamp: Timestamp | None = Field(
        default=None, description="when the usage happened; at most 5 minutes ahead and 35 days old"
    )
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=20)

    @field_validator("timestamp")
    @classmethod
    def _recent(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        now = datetime.now(UTC)
        if value > now + USAGE_MAX_AHEAD:
            raise ValueError("is more than 5 minutes in the future")
        if value < now - USAGE_MAX_AGE:
            raise ValueError("is more than 35 days old")
        return value

    @field_validator("metadata")
    @classmethod
    def _not_reserved(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        reserved = sorted(RESERVED_METADATA_KEYS & set(value or {}))
        if reserved:
            raise ValueError(f"keys {', '.join(reserved)} are reserved")
        return value


class AllocationView(ApiModel):
    grant_id: str
    amount: AmountString


class UsageResponse(ApiModel):
    id: str
    customer: str
    meter: str
    quantity: AmountString
    credits: AmountString = Field(description="credits debited (quantity x credits_per_unit, rounded up)")
    balance: AmountString = Field(description="credits available after this debit")
    status: Literal["debited"] = "debited"
    allocations: list[AllocationView]
    overage: AmountString | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="with overage policy allow: the part of credits that was not available, billed as "
        "overage (the allocations cover the rest); absent when everything was covered",
    )


_BATCH_EVENTS_SCHEMA = {
    "type": "array",
    "maxItems": MAX_BATCH_EVENTS,
    # Any JSON value: each event is validated alone (as a UsageRequest) and a malformed one is rejected in its
    # own result, so the batch itself accepts what the schema of one event would refuse.
    "items": {},
    "description": "usage events (UsageRequest), each judged alone as by POST /v1/usage; a malformed event "
    "is rejected in its result, not the batch",
}


class UsageBatchRequest(ApiModel):
    # Events stay raw here: each is validated alone, so one bad event is rejected without failing the batch.
    events: Annotated[list[Any], Field(max_length=MAX_BATCH_EVENTS), WithJsonSchema(_BATCH_EVENTS_SCHEMA)]


class UsageBatchResult(_OmitsEmptyField):
    id: str | None
    status: Literal["debited", "replayed", "rejected"]
    error: ErrorBody | None = None
    omitted_when_none = "error"


class UsageBatchResponse(ApiModel):
    results: list[UsageBatchResult]


# ---- balance ---------------------------------------------------------------------------------------------
class ByCategory(ApiModel):
    paid: AmountString
    promotional: AmountString


class NextExpiry(ApiModel):
    at: str
    amount: AmountString


class BalanceView(ApiModel):
    customer: str
    available: AmountString
    ledger_balance: AmountString
    by_category: ByCategory
    held: AmountString
    pending: AmountString
    reserved: AmountString = Field(
        description="held by open reservations: in the ledger balance, not available"
    )
    next_expiry: NextExpiry | None
    as_of: str

    @classmethod
    def of(cls, balance: Balance) -> BalanceView:
        next_expiry = None
        if balance.next_expiry_at is not None:
            next_expiry = NextExpiry(
                at=iso(balance.next_expiry_at), amount=format_amount(balance.next_expiry_amount)
            )
        return cls(
            customer=balance.account_id,
            available=format_amount(balance.available),
            ledger_balance=format_amount(balance.ledger_balance),
            by_category=ByCategory(
                paid=format_amount(balance.paid), promotional=format_amount(balance.promotional)
            ),
            held=format_amount(balance.held),
            pending=format_amount(balance.pending),
            reserved=format_amount(balance.reserved),
            next_expiry=next_expiry,
            as_of=iso(balance.as_of),
        )


# ---- grants ----------------------------------------------------------------------------------------------
class SourceView(ApiModel):
    type: str
    id: str | None


class CostBasisView(ApiModel):
    amount: AmountString
    currency: str | None


class GrantView(ApiModel):
    id: str
    customer: str
    amount: AmountString
    remaining: AmountString
    category: Category
    priority: int
    effective_at: str
    expires_at: str | None
    status: GrantStatus
    source: SourceView
    cost_basis: CostBasisView
    created_at: str
    reason: str | None = None
    metadata: dict[str, str]

    @classmethod
    def of(cls, grant: Grant) -> GrantView:
        return cls(
            id=grant.grant_id,
            customer=grant.account_id,
            amount=format_amount(grant.amount),
            remaining=format_amount(grant.remaining),
            category=grant.category,
            priority=grant.priority,
            effective_at=iso(grant.effective_at),
            expires_at=iso(grant.expires_at) if grant.expires_at else None,
            status=grant.status,
            source=SourceView(type=grant.source.type, id=grant.source.id),
            cost_basis=CostBasisView(
                amount=format_amount(grant.cost_basis.amount), currency=grant.cost_basis.currency
            ),
            created_at=iso(grant.created_at),
            reason=grant.reason,
            metadata=dict(grant.metadata),
        )


class GrantList(ApiModel):
    data: list[GrantView]
    has_more: bool
    next_cursor: str | None


class GrantRequest(ApiModel):
    id: Identifier | None = Field(default=None, description="makes the grant idempotent")
    amount: PositiveAmount
    category: Category = Field(
        default=Category.PROMOTIONAL, description="admin grants default to promotional"
    )
    priority: StrictInt = Field(default=50, ge=0, le=1_000_000, description="lower is spent first")
    effective_at: Timestamp | None = Field(default=None, description="default: now")
    expires_at: Timestamp | None = Field(default=None, description="default: never expires")
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


# ---- transactions ----------------------------------------------------------------------------------------
class TransactionView(ApiModel):
    id: str = Field(description="the entry key (also the operation's idempotency key)")
    type: str
    amount: AmountString
    balance_after: AmountString
    allocations: list[AllocationView]
    reference: str | None
    created_at: str
    metadata: dict[str, str]

    @classmethod
    def of(cls, entry: LedgerEntry) -> TransactionView:
        return cls(
            id=entry.entry_key,
            type=entry.type.value,
            amount=format_amount(entry.amount),
            balance_after=format_amount(entry.balance_after),
            allocations=[
                AllocationView(grant_id=a.grant_id, amount=format_amount(a.amount)) for a in entry.allocations
            ],
            reference=entry.reference,
            created_at=iso(entry.created_at),
            metadata=dict(entry.metadata),
        )


class TransactionList(ApiModel):
    data: list[TransactionView]
    has_more: bool
    next_cursor: str | None


# ---- API keys --------------------------------------------------------------------------------------------
class ApiKeyRequest(ApiModel):
    # The admin-key rule below, as JSON Schema: scopes containing "admin" together with a customers list is
    # invalid (customers null or absent is fine).
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "not": {
                "required": ["scopes", "customers"],
                "properties": {"scopes": {"contains": {"const": "admin"}}, "customers": {"type": "array"}},
            }
        },
    )

    scopes: list[Scope] = Field(min_length=1, max_length=3)
    customers: list[AccountId] | None = Field(
        default=None, min_length=1, max_length=100, description="accounts the key may touch (default: all)"
    )
    name: Annotated[str, StringConstraints(max_length=200)] | None = None

    @field_validator("customers")
    @classmethod
    def _no_admin_limits(cls, value: list[str] | None, info: Any) -> list[str] | None:
        if value is not None and Scope.ADMIN in (info.data.get("scopes") or []):
            raise ValueError("an admin key applies to every account: omit customers")
        return value


class ApiKeyCreated(ApiModel):
    id: str
    key: str = Field(description="the API key; shown only in this response")
    scopes: list[Scope]
    customers: list[str] | None
    name: str | None
    created_at: str

    @classmethod
    def of(cls, record: ApiKey, key: str) -> ApiKeyCreated:
        return cls(
            id=record.key_id,
            key=key,
            scopes=sorted(record.scopes),
            customers=sorted(record.customers) if record.customers is not None else None,
            name=record.name,
            created_at=iso(record.created_at),
        )


# ---- reservations ----------------------------------------------------------------------------------------
RESERVATION_MIN_SECONDS = 60
RESERVATION_MAX_SECONDS = 2_592_000  # 30 days
ExpiresIn = Annotated[
    int,
    Field(
        ge=RESERVATION_MIN_SECONDS,
        le=RESERVATION_MAX_SECONDS,
        strict=True,
        description="seconds from now until the reservation lapses (60 to 2,592,000)",
    ),
]
NonNegativeAmount = Annotated[
    Decimal, BeforeValidator(_to_amount), AfterValidator(_not_negative), WithJsonSchema(_AMOUNT_SCHEMA)
]


def _fits_a_reservation_key(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_RESERVATION_ID_BYTES:
        raise ValueError(f"at most {MAX_RESERVATION_ID_BYTES} bytes in UTF-8")
    return value


ReservationId = Annotated[Identifier, AfterValidator(_fits_a_reservation_key), AfterValidator(_addressable)]


class ReservationRequest(ApiModel):
    id: ReservationId = Field(
        description=f"reservation id, unique across accounts: the idempotency key (at most 255 characters and "
        f"{MAX_RESERVATION_ID_BYTES} bytes in UTF-8)"
    )
    customer: AccountId
    credits: PositiveAmount | None = Field(
        default=None, description="credits to hold (or meter and quantity)"
    )
    meter: Identifier | None = Field(default=None, description="a meter of the pricing configuration")
    quantity: PositiveAmount | None = None
    expires_in: ExpiresIn = 3600
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=20)

    @model_validator(mode="after")
    def _credits_or_meter(self) -> ReservationRequest:
        if self.credits is not None and (self.meter is not None or self.quantity is not None):
            raise ValueError("give credits, or meter and quantity, not both")
        if self.credits is None and (self.meter is None or self.quantity is None):
            raise ValueError("give credits, or meter and quantity")
        return self


class CaptureRequest(ApiModel):
    credits: NonNegativeAmount | None = Field(
        default=None, description="credits used (default: all reserved)"
    )
    allow_overrun: StrictBool = Field(
        default=False, description="debit what exceeds the reservation from what is available"
    )


class ExtendRequest(ApiModel):
    expires_in: ExpiresIn


class ReservationView(ApiModel):
    id: str
    customer: str
    status: Literal["active", "captured", "released", "expired"]
    credits: AmountString = Field(description="credits reserved")
    held: AmountString = Field(description="credits it holds now (less after a void or refund of its grants)")
    expires_at: str
    allocations: list[AllocationView] = Field(description="what it holds on which grant, when it was made")
    created_at: str
    meter: str | None = None
    quantity: AmountString | None = None
    metadata: dict[str, str] | None = None
    captured: AmountString | None = None
    released: AmountString | None = None
    ended_at: str | None = None


class ReservationCreated(ApiModel):
    id: str
    customer: str
    status: Literal["active"] = "active"
    credits: AmountString
    expires_at: str
    allocations: list[AllocationView]


class CaptureResponse(ApiModel):
    id: str
    status: Literal["captured"] = "captured"
    captured: AmountString
    released: AmountString
    balance: AmountString = Field(description="credits available right after the capture")


class ReleaseResponse(ApiModel):
    id: str
    status: Literal["released", "expired"]
    released: AmountString


class ReservationList(ApiModel):
    data: list[ReservationView]
