"""The pricing file's plans and its validation at load: unknown keys, a price sold twice, negative numbers."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from credits_ledger.domain.models import Category
from credits_ledger.pricing import PricingError, load_pricing, parse_pricing

PLAN = {"stripe_prices": ["price_pro_month_eur", "price_pro_year_usd"], "credits": "5000"}
PACK = {"credits": "1000", "stripe_prices": ["price_starter"]}


def test_a_plan_with_every_key_is_parsed() -> None:
    # Given a plan with every optional key and a [stripe] section
    data = {
        "plans": {
            "pro": {
                **PLAN,
                "rollover_percent": "50",
                "rollover_max": "2500",
                "rollover_months": 2,
                "trial_credits": "500",
                "on_cancel": "immediately",
                "category": "promotional",
                "priority": 10,
            }
        },
        "stripe": {"overage_meter": "credits_overage"},
    }
    # When parsed
    pricing = parse_pricing(data)
    plan = pricing.plans["pro"]
    # Then every value is typed and exact, and the plan is found by any of its prices
    assert (plan.credits, plan.rollover_percent, plan.rollover_max) == (
        Decimal(5000),
        Decimal(50),
        Decimal(2500),
    )
    assert (plan.rollover_months, plan.trial_credits, plan.on_cancel) == (2, Decimal(500), "immediately")
    assert (plan.category, plan.priority) == (Category.PROMOTIONAL, 10)
    assert pricing.plan_for_price("price_pro_year_usd") is plan
    assert pricing.plan_for_price("price_other") is None
    assert pricing.overage_meter == "credits_overage"


def test_plan_defaults() -> None:
    plan = parse_pricing({"plans": {"pro": PLAN}}).plans["pro"]
    assert (plan.rollover_percent, plan.rollover_max, plan.rollover_months) == (Decimal(0), None, 1)
    assert (plan.trial_credits, plan.on_cancel, plan.category, plan.priority) == (
        Decimal(0),
        "period_end",
        Category.PAID,
        None,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"plans": {"pro": {**PLAN, "credit": "1"}}}, "plans.pro.credit: is not a known key"),
        ({"plans": {"pro": {**PLAN, "credits": "-5"}}}, "plans.pro.credits: must be greater than 0"),
        (
            {"plans": {"pro": {**PLAN, "trial_credits": "-1"}}},
            "plans.pro.trial_credits: must be 0 or greater",
        ),
        ({"plans": {"pro": {**PLAN, "rollover_percent": "-1"}}}, "plans.pro.rollover_percent"),
        ({"plans": {"pro": {**PLAN, "rollover_percent": "101"}}}, "plans.pro.rollover_percent"),
        (
            {"plans": {"pro": {**PLAN, "rollover_max": "-1"}}},
            "plans.pro.rollover_max: must be greater than 0",
        ),
        ({"plans": {"pro": {**PLAN, "rollover_months": 0}}}, "plans.pro.rollover_months"),
        ({"plans": {"pro": {**PLAN, "rollover_months": -2}}}, "plans.pro.rollover_months"),
        ({"plans": {"pro": {**PLAN, "credits": 12.5}}}, "plans.pro.credits: must be a decimal string"),
        ({"plans": {"pro": {**PLAN, "on_cancel": "never"}}}, "plans.pro.on_cancel"),
        ({"plans": {"pro": {**PLAN, "priority": -1}}}, "plans.pro.priority"),
        ({"plans": {"pro": {"credits": "5"}}}, "plans.pro.stripe_prices"),
        ({"plans": {"pro": PLAN, "max": PLAN}}, "'price_pro_month_eur' is in both plans.pro and plans.max"),
        (
            {
                "packs": {"starter": {**PACK, "stripe_prices": ["price_pro_month_eur"]}},
                "plans": {"pro": PLAN},
            },
            "'price_pro_month_eur' is in both packs.starter and plans.pro",
        ),
        ({"packs": {"a": PACK, "b": PACK}}, "'price_starter' is in both packs.a and packs.b"),
        ({"packs": {"a": {**PACK, "credits": "-1"}}}, "packs.a.credits: must be greater than 0"),
        ({"packs": {"a": {**PACK, "valid_days": -3}}}, "packs.a.valid_days"),
        ({"packs": {"a": {**PACK, "colour": "red"}}}, "packs.a.colour: is not a known key"),
        ({"meters": {"m": {"credits_per_unit": "-1"}}}, "meters.m.credits_per_unit: must be greater than 0"),
        ({"meters": {"m": {"credits_per_unit": "1", "unit": "x"}}}, "meters.m.unit: is not a known key"),
        ({"plan": {"pro": PLAN}}, "plan: is not a known key"),
        ({"stripe": {"overage_meter": "m", "key": "sk"}}, "stripe.key: is not a known key"),
    ],
)
def test_invalid_files_are_refused_with_the_key_named(data: dict[str, Any], message: str) -> None:
    # Given a malformed pricing file / When parsed / Then PricingError naming the key
    with pytest.raises(PricingError) as raised:
        parse_pricing(data)
    assert message in str(raised.value)


def test_the_shipped_file_has_plans_that_load() -> None:
    pricing = load_pricing(Path(__file__).resolve().parents[2] / "config" / "pricing.toml")
    assert pricing.plans, "config/pricing.toml ships at least one plan"
    for plan in pricing.plans.values():
        for price in plan.stripe_prices:
            assert pricing.plan_for_price(price) is plan and pricing.pack_for_price(price) is None
