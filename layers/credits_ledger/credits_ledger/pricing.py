"""Pricing configuration (docs/api.md section 2): meters and credit packs from a TOML file.

The file ships with the functions (``config/pricing.toml`` beside the handler, or the repo's
``config/pricing.toml``); ``CREDITS_PRICING_FILE`` names another one.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from credits_ledger.domain.models import Category
from credits_ledger.domain.money import InvalidAmount, parse_amount
from credits_ledger.domain.rollover import RolloverPolicy

DEFAULT_REMINDER_DAYS = (30, 7, 1)
DEFAULT_LOW_BALANCE_THRESHOLD = Decimal(100)


class PricingError(ValueError):
    """The pricing file is missing or malformed; the message names the key."""


@dataclass(frozen=True)
class Meter:
    name: str
    credits_per_unit: Decimal


@dataclass(frozen=True)
class Pack:
    name: str
    credits: Decimal
    valid_days: int | None
    category: Category
    stripe_prices: tuple[str, ...]
    priority: int | None = None
    bonus_credits: Decimal | None = None  # promotional credits on top, carrying their share of the cost basis
    rollover: RolloverPolicy | None = None  # rollover_percent / rollover_max / rollover_valid_days / _repeat


@dataclass(frozen=True)
class Pricing:
    meters: dict[str, Meter]
    packs: dict[str, Pack]
    raw: dict[str, Any]
    # [expiry] reminder_days: a credits.grant.expiring event when a grant gets this close to expiring.
    reminder_days: tuple[int, ...] = DEFAULT_REMINDER_DAYS
    # [alerts] low_balance_threshold: credits.balance.low when available drops to it (per-account override).
    low_balance_threshold: Decimal = DEFAULT_LOW_BALANCE_THRESHOLD

    def pack_for_price(self, price_id: str) -> Pack | None:
        for pack in self.packs.values():
            if price_id in pack.stripe_prices:
                return pack
        return None


def _amount(value: object, where: str) -> Decimal:
    try:
        amount = parse_amount(value)
    except InvalidAmount as exc:
        raise PricingError(f"{where} {exc}") from exc
    if amount <= 0:
        raise PricingError(f"{where} must be greater than 0")
    return amount


def parse_pricing(data: dict[str, Any]) -> Pricing:
    meters = {
        name: Meter(name, _amount(spec.get("credits_per_unit"), f"meters.{name}.credits_per_unit"))
        for name, spec in data.get("meters", {}).items()
    }
    packs: dict[str, Pack] = {}
    for name, spec in data.get("packs", {}).items():
        try:
            category = Category(spec.get("category", "paid"))
        except ValueError as exc:
            raise PricingError(f"packs.{name}.category must be paid or promotional") from exc
        valid_days = spec.get("valid_days")
        if valid_days is not None and (not isinstance(valid_days, int) or valid_days <= 0):
            raise PricingError(f"packs.{name}.valid_days must be a positive integer")
        packs[name] = Pack(
            name=name,
            credits=_amount(spec.get("credits"), f"packs.{name}.credits"),
            valid_days=valid_days,
            category=category,
            stripe_prices=tuple(spec.get("stripe_prices", [])),
            priority=spec.get("priority"),
            bonus_credits=_amount(spec["bonus_credits"], f"packs.{name}.bonus_credits")
            if "bonus_credits" in spec
            else None,
            rollover=_rollover(name, spec, valid_days),
        )
    return Pricing(
        meters=meters,
        packs=packs,
        raw=data,
        reminder_days=_reminder_days(data.get("expiry", {})),
        low_balance_threshold=_threshold(data.get("alerts", {})),
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


def pricing_path() -> Path:
    configured = os.environ.get("CREDITS_PRICING_FILE")
    if configured:
        return Path(configured)
    for candidate in (
        Path.cwd() / "config" / "pricing.toml",
        Path(__file__).parent / "config" / "pricing.toml",
    ):
        if candidate.exists():
            return candidate
    raise PricingError("no pricing file: set CREDITS_PRICING_FILE or ship config/pricing.toml")


@cache
def load_pricing(path: Path | None = None) -> Pricing:
    target = path or pricing_path()
    try:
        with target.open("rb") as handle:
            return parse_pricing(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PricingError(f"cannot read pricing file {target}: {exc}") from exc
