"""Per-account settings (admin route ``PUT /v1/customers/{customer}/settings``): the body is validated by the
pydantic models below and stored by ``AccountSettingsRepository``.

- ``low_balance_threshold``: the level at or below which ``credits.balance.low`` fires (absent or null: the
  pricing file's ``[alerts]`` default);
- ``overage``: ``{"policy": "reject" | "allow", "limit"?}``: what a usage debit beyond what is available does
  (domain/overage.py; default reject);
- ``auto_topup``: ``{"enabled", "threshold", "pack", "quantity"?, "monthly_limit"?}``: buy ``quantity`` of
  ``pack`` when a debit leaves available below ``threshold`` (domain/topup.py; absent or null: off).

PUT replaces the settings document: a key left out is reset to its default.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, ValidationError

from credits_ledger.api_models import ApiModel, Identifier, NonNegativeAmount
from credits_ledger.dal.account_settings import (
    AccountSettings,
    AccountSettingsRepository,
    SettingsDocument,
    StaleSettingsWrite,
)
from credits_ledger.domain.errors import InvalidField
from credits_ledger.domain.money import format_amount
from credits_ledger.domain.overage import OveragePolicy, OverageSettings
from credits_ledger.domain.times import iso
from credits_ledger.domain.topup import AutoTopupSettings
from credits_ledger.pricing import Pricing, load_pricing

MAX_TOPUP_QUANTITY = 1000
MAX_TOPUPS_PER_MONTH = 1000

# The parsed document; kept under its former name for callers of parse_settings.
SettingsUpdate = SettingsDocument


class InvalidSettings(InvalidField):
    """A settings body the domain rejects (422); ``field`` names the offending key (dotted for nested ones)."""


# ---- request and response models -------------------------------------------------------------------------
class OverageBody(ApiModel):
    policy: Literal["reject", "allow"] = Field(
        default="reject", description="reject: 402 when credits run out; allow: bill the rest as overage"
    )
    limit: NonNegativeAmount | None = Field(
        default=None, description="at most this many credits of overage per UTC calendar month (null: no cap)"
    )


class AutoTopupBody(ApiModel):
    enabled: StrictBool
    threshold: NonNegativeAmount = Field(description="buy when a debit leaves available below this")
    pack: Identifier = Field(description="a pack of the pricing file with at least one Stripe price")
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_TOPUP_QUANTITY)] = 1
    monthly_limit: Annotated[int, Field(strict=True, ge=1, le=MAX_TOPUPS_PER_MONTH)] | None = Field(
        default=None, description="at most this many top-ups started per UTC calendar month (null: no cap)"
    )


class SettingsRequest(ApiModel):
    low_balance_threshold: NonNegativeAmount | None = None
    overage: OverageBody | None = None
    auto_topup: AutoTopupBody | None = None


class OverageView(ApiModel):
    policy: Literal["reject", "allow"]
    limit: str | None


class AutoTopupView(ApiModel):
    enabled: bool
    threshold: str
    pack: str
    quantity: int
    monthly_limit: int | None


class SettingsResponse(ApiModel):
    customer: str
    low_balance_threshold: str | None
    effective_low_balance_threshold: str
    overage: OverageView
    auto_topup: AutoTopupView | None
    updated_at: str | None


def _field(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def parse_settings(body: Any, pricing: Pricing | None = None) -> SettingsDocument:
    """Validate a request body (parsed with ``parse_float=Decimal``). Pure; with ``pricing``, the top-up pack
    must be one of its packs and have a Stripe price to charge."""
    try:
        request = SettingsRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "is not a known setting"
        elif error.get("type") in ("model_type", "model_attributes_type"):
            message = "must be a JSON object"
        raise InvalidSettings(_field(tuple(error["loc"])), message) from None
    overage = OverageSettings()
    if request.overage is not None:
        overage = OverageSettings(OveragePolicy(request.overage.policy), request.overage.limit)
    topup = None
    if request.auto_topup is not None:
        body_topup = request.auto_topup
        if pricing is not None:
            pack = pricing.packs.get(body_topup.pack)
            if pack is None:
                known = ", ".join(sorted(pricing.packs)) or "none"
                raise InvalidSettings("auto_topup.pack", f"unknown pack {body_topup.pack!r} (known: {known})")
            if not pack.stripe_prices:
                raise InvalidSettings("auto_topup.pack", "the pack has no stripe_prices to charge")
        topup = AutoTopupSettings(
            enabled=body_topup.enabled,
            threshold=body_topup.threshold,
            pack=body_topup.pack,
            quantity=body_topup.quantity,
            monthly_limit=body_topup.monthly_limit,
        )
    return SettingsDocument(
        low_balance_threshold=request.low_balance_threshold, overage=overage, auto_topup=topup
    )


def settings_view(settings: AccountSettings, default_threshold: Decimal) -> dict[str, Any]:
    override = settings.low_balance_threshold
    topup = settings.auto_topup
    view = SettingsResponse(
        customer=settings.account_id,
        low_balance_threshold=format_amount(override) if override is not None else None,
        effective_low_balance_threshold=format_amount(
            override if override is not None else default_threshold
        ),
        overage=OverageView(
            policy=settings.overage.policy.value,
            limit=format_amount(settings.overage.limit) if settings.overage.limit is not None else None,
        ),
        auto_topup=AutoTopupView(
            enabled=topup.enabled,
            threshold=format_amount(topup.threshold),
            pack=topup.pack,
            quantity=topup.quantity,
            monthly_limit=topup.monthly_limit,
        )
        if topup
        else None,
        updated_at=iso(settings.updated_at) if settings.updated_at else None,
    )
    return view.model_dump(mode="json")


def put_settings(
    account_id: str,
    body: Any,
    *,
    repository: AccountSettingsRepository | None = None,
    pricing: Pricing | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Replace the account's settings with ``body``; returns the settings as stored (200 body).

    Raises InvalidSettings (422). Two writes racing: the one stamped later wins, the other returns it.
    """
    pricing = pricing or load_pricing()
    document = parse_settings(body, pricing)
    repository = repository or AccountSettingsRepository()
    try:
        stored = repository.put(account_id, document, clock())
    except StaleSettingsWrite as exc:
        stored = exc.current
    return settings_view(stored, pricing.low_balance_threshold)


def get_settings(
    account_id: str,
    *,
    repository: AccountSettingsRepository | None = None,
    pricing: Pricing | None = None,
) -> dict[str, Any]:
    """The account's settings (defaults when never set)."""
    repository = repository or AccountSettingsRepository()
    pricing = pricing or load_pricing()
    return settings_view(repository.get(account_id, consistent=False), pricing.low_balance_threshold)
