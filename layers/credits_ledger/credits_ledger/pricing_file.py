"""The pricing file as typed models (docs/api.md section 2) and their translation into ``Pricing``.

Every section forbids unknown keys, so a typo is an error, not a default. Loaded with the first pricing file
a function reads (``pricing.parse_pricing``): a cold start that never prices anything does not build these
models.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)

from credits_ledger.domain.models import Category
from credits_ledger.domain.money import ZERO, InvalidAmount, parse_amount
from credits_ledger.domain.rollover import RolloverPolicy
from credits_ledger.pricing import (
    DEFAULT_LOW_BALANCE_THRESHOLD,
    DEFAULT_REMINDER_DAYS,
    Meter,
    Pack,
    Plan,
    Pricing,
    PricingError,
)


def _amount(value: object, where: str) -> Decimal:
    try:
        amount = parse_amount(value)
    except InvalidAmount as exc:
        raise PricingError(f"{where} {exc}") from exc
    if amount <= 0:
        raise PricingError(f"{where} must be greater than 0")
    return amount


def _decimal(value: object) -> Decimal:
    try:
        return parse_amount(value)
    except InvalidAmount as exc:
        raise ValueError(str(exc)) from exc


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _not_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must be 0 or greater")
    return value


PositiveAmount = Annotated[Decimal, BeforeValidator(_decimal), AfterValidator(_positive)]
Amount = Annotated[Decimal, BeforeValidator(_decimal), AfterValidator(_not_negative)]
Percent = Annotated[Decimal, BeforeValidator(_decimal), Field(ge=0, le=100)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
Priority = Annotated[StrictInt, Field(ge=0, le=1_000_000)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class MeterSpec(_Section):
    credits_per_unit: PositiveAmount


class PackSpec(_Section):
    credits: PositiveAmount
    valid_days: PositiveInt | None = None
    category: Category = Category.PAID
    stripe_prices: tuple[str, ...] = ()
    priority: Priority | None = None
    bonus_credits: PositiveAmount | None = None
    rollover_percent: Any = None  # validated by _rollover (messages name the pack)
    rollover_max: Any = None
    rollover_valid_days: Any = None
    rollover_repeat: Any = None


class PlanSpec(_Section):
    stripe_prices: tuple[str, ...] = Field(min_length=1)
    credits: PositiveAmount
    rollover_percent: Percent = ZERO
    rollover_max: PositiveAmount | None = None
    rollover_months: PositiveInt = 1
    trial_credits: Amount = ZERO
    on_cancel: Literal["period_end", "immediately"] = "period_end"
    category: Category = Category.PAID
    priority: Priority | None = None


class StripeSpec(_Section):
    overage_meter: str | None = None


class ExpirySpec(_Section):
    reminder_days: Any = None


class AlertsSpec(_Section):
    low_balance_threshold: Any = None


class PricingFile(_Section):
    meters: dict[str, MeterSpec] = Field(default_factory=dict)
    packs: dict[str, PackSpec] = Field(default_factory=dict)
    plans: dict[str, PlanSpec] = Field(default_factory=dict)
    stripe: StripeSpec = StripeSpec()
    expiry: ExpirySpec = ExpirySpec()
    alerts: AlertsSpec = AlertsSpec()

    @model_validator(mode="after")
    def _each_price_sells_one_thing(self) -> PricingFile:
        owner: dict[str, str] = {}
        for kind, section in (("packs", self.packs), ("plans", self.plans)):
            for name, spec in section.items():
                for price in spec.stripe_prices:
                    where = f"{kind}.{name}"
                    if price in owner:
                        raise ValueError(f"price {price!r} is in both {owner[price]} and {where}")
                    owner[price] = where
        return self


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a known key"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def pricing_from_document(data: dict[str, Any]) -> Pricing:
    try:
        spec = PricingFile.model_validate(data)
    except ValidationError as exc:
        raise PricingError(f"pricing file: {_validation_message(exc)}") from exc
    meters = {name: Meter(name, m.credits_per_unit) for name, m in spec.meters.items()}
    packs = {
        name: Pack(
            name=name,
            credits=p.credits,
            valid_days=p.valid_days,
            category=p.category,
            stripe_prices=p.stripe_prices,
            priority=p.priority,
            bonus_credits=p.bonus_credits,
            rollover=_rollover(name, data["packs"][name], p.valid_days),
        )
        for name, p in spec.packs.items()
    }
    plans = {
        name: Plan(
            name=name,
            credits=p.credits,
            stripe_prices=p.stripe_prices,
            rollover_percent=p.rollover_percent,
            rollover_max=p.rollover_max,
            rollover_months=p.rollover_months,
            trial_credits=p.trial_credits,
            on_cancel=p.on_cancel,
            category=p.category,
            priority=p.priority,
        )
        for name, p in spec.plans.items()
    }
    return Pricing(
        meters=meters,
        packs=packs,
        raw=data,
        reminder_days=_reminder_days(data.get("expiry", {})),
        low_balance_threshold=_threshold(data.get("alerts", {})),
        plans=plans,
        overage_meter=spec.stripe.overage_meter,
    )


def _rollover(name: str, spec: dict[str, Any], pack_valid_days: int | None) -> RolloverPolicy | None:
    """``rollover_percent`` (0-100] and/or ``rollover_max`` make a pack roll over; the new grant is valid
    ``rollover_valid_days`` (default: the pack's ``valid_days``) after the original expiry."""
    if "rollover_percent" not in spec and "rollover_max" not in spec:
        if "rollover_valid_days" in spec or "rollover_repeat" in spec:
            raise PricingError(
                f"packs.{name}: rollover_valid_days/rollover_repeat need rollover_percent or rollover_max"
            )
        return None
    percent = _amount(spec.get("rollover_percent", "100"), f"packs.{name}.rollover_percent")
    maximum = _amount(spec["rollover_max"], f"packs.{name}.rollover_max") if "rollover_max" in spec else None
    days = spec.get("rollover_valid_days", pack_valid_days)
    if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
        raise PricingError(f"packs.{name}.rollover_valid_days must be a positive integer")
    repeat = spec.get("rollover_repeat", False)
    if not isinstance(repeat, bool):
        raise PricingError(f"packs.{name}.rollover_repeat must be true or false")
    try:
        return RolloverPolicy(valid_days=days, percent=percent, max_amount=maximum, repeat=repeat)
    except ValueError as exc:
        raise PricingError(f"packs.{name}: rollover {exc}") from exc


def _reminder_days(section: dict[str, Any]) -> tuple[int, ...]:
    days = section.get("reminder_days", list(DEFAULT_REMINDER_DAYS))
    if not isinstance(days, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in days
    ):
        raise PricingError("expiry.reminder_days must be a list of positive integers")
    return tuple(sorted(set(days), reverse=True))


def _threshold(section: dict[str, Any]) -> Decimal:
    if "low_balance_threshold" not in section:
        return DEFAULT_LOW_BALANCE_THRESHOLD
    try:
        value = parse_amount(section["low_balance_threshold"])
    except InvalidAmount as exc:
        raise PricingError(f"alerts.low_balance_threshold {exc}") from exc
    if value < 0:
        raise PricingError("alerts.low_balance_threshold must be 0 or greater")
    return value
