"""The pricing file's expiry-side keys: [expiry] reminder_days, [alerts] low_balance_threshold and the per-pack
rollover policy, with defaults when absent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from credits_ledger.domain.rollover import RolloverPolicy
from credits_ledger.pricing import PricingError, load_pricing, parse_pricing

PACK = {"credits": "1000", "valid_days": 365, "stripe_prices": ["price_1"]}


def test_defaults_when_the_sections_are_absent() -> None:
    # Given a pricing file without [expiry], [alerts] or rollover keys
    pricing = parse_pricing({"packs": {"starter": PACK}})
    # Then reminders at 30/7/1 days, a threshold of 100 and no rollover
    assert pricing.reminder_days == (30, 7, 1)
    assert pricing.low_balance_threshold == Decimal(100)
    assert pricing.packs["starter"].rollover is None


def test_configured_values_are_parsed() -> None:
    # Given configured thresholds and a rollover pack
    data = {
        "expiry": {"reminder_days": [3, 14]},
        "alerts": {"low_balance_threshold": "12.5"},
        "packs": {
            "pro": {**PACK, "rollover_percent": "50", "rollover_max": "300", "rollover_valid_days": 90},
            "capped": {**PACK, "stripe_prices": ["price_2"], "rollover_max": "10"},
        },
    }
    # When parsed
    pricing = parse_pricing(data)
    # Then thresholds are sorted widest first, the policies exact (percent 100 and valid_days of the pack
    # when only a cap is given)
    assert pricing.reminder_days == (14, 3)
    assert pricing.low_balance_threshold == Decimal("12.5")
    assert pricing.packs["pro"].rollover == RolloverPolicy(90, Decimal(50), Decimal(300), False)
    assert pricing.packs["capped"].rollover == RolloverPolicy(365, Decimal(100), Decimal(10), False)


@pytest.mark.parametrize(
    "data",
    [
        {"expiry": {"reminder_days": [0]}},
        {"expiry": {"reminder_days": "30"}},
        {"alerts": {"low_balance_threshold": "-1"}},
        {"alerts": {"low_balance_threshold": 0.5}},
        {"packs": {"p": {**PACK, "rollover_percent": "150"}}},
        {"packs": {"p": {**PACK, "rollover_valid_days": 30}}},
        {"packs": {"p": {**PACK, "valid_days": None, "rollover_percent": "50"}}},
        {"packs": {"p": {**PACK, "rollover_percent": "50", "rollover_repeat": "yes"}}},
    ],
)
def test_invalid_values_name_the_key(data: dict) -> None:
    # Given a malformed expiry-side key / When parsed / Then PricingError
    data = {k: v for k, v in data.items()}
    if "packs" in data:
        data["packs"] = {n: {k: v for k, v in p.items() if v is not None} for n, p in data["packs"].items()}
    with pytest.raises(PricingError):
        parse_pricing(data)


def test_the_shipped_file_has_the_defaults() -> None:
    # Given the repo's config/pricing.toml / Then it states the default thresholds explicitly
    pricing = load_pricing(Path(__file__).resolve().parents[2] / "config" / "pricing.toml")
    assert pricing.reminder_days == (30, 7, 1)
    assert pricing.low_balance_threshold == Decimal(100)
