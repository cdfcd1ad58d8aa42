"""Pricing configuration (docs/api.md section 2): meters, credit packs, subscription plans and the
``[stripe]`` settings from a TOML file.

The file is validated at load as typed pydantic models (``pricing_file.py``): unknown keys, negative
numbers, floats for amounts and a Stripe price sold by two packs/plans (or by a pack and a plan) are errors
that name the key, never silent defaults. The file ships with the functions (``config/pricing.toml`` beside the handler, or the repo's
``config/pricing.toml``); ``CREDITS_PRICING_FILE`` names another one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from credits_ledger.domain.models import Category
from credits_ledger.domain.money import ZERO
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
class Plan:
    """A subscription plan: ``credits`` per month per unit of the subscription item's quantity."""

    name: str
    credits: Decimal
    stripe_prices: tuple[str, ...]
    rollover_percent: Decimal = ZERO  # share of a month's unused credits that stays valid when it ends
    rollover_max: Decimal | None = None  # cap on what one month carries over
    rollover_months: int = 1  # how many months carried-over credits stay valid
    trial_credits: Decimal = ZERO  # promotional credits (x quantity) while the subscription is trialing
    on_cancel: str = "period_end"  # or "immediately": the current month's remainder is voided too
    category: Category = Category.PAID
    priority: int | None = None


@dataclass(frozen=True)
class Pricing:
    meters: dict[str, Meter]
    packs: dict[str, Pack]
    raw: dict[str, Any]
    # [expiry] reminder_days: a credits.grant.expiring event when a grant gets this close to expiring.
    reminder_days: tuple[int, ...] = DEFAULT_REMINDER_DAYS
    # [alerts] low_balance_threshold: credits.balance.low when available drops to it (per-account override).
    low_balance_threshold: Decimal = DEFAULT_LOW_BALANCE_THRESHOLD
    plans: dict[str, Plan] = field(default_factory=dict)
    # [stripe] overage_meter: event_name of the Stripe billing meter overage is reported to.
    overage_meter: str | None = None

    def pack_for_price(self, price_id: str) -> Pack | None:
        for pack in self.packs.values():
            if price_id in pack.stripe_prices:
                return pack
        return None

    def plan_for_price(self, price_id: str) -> Plan | None:
        for plan in self.plans.values():
            if price_id in plan.stripe_prices:
                return plan
        return None


def parse_pricing(data: dict[str, Any]) -> Pricing:
    """The pricing a parsed TOML document describes; PricingError names the first key that is wrong."""
    # The file's typed models load with the first file read (pricing_file.py), not with every cold start.
    from credits_ledger.pricing_file import pricing_from_document

    return pricing_from_document(data)


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
    import tomllib  # on first use: a cold start that never reads the pricing file does not load the parser

    target = path or pricing_path()
    try:
        with target.open("rb") as handle:
            return parse_pricing(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PricingError(f"cannot read pricing file {target}: {exc}") from exc
