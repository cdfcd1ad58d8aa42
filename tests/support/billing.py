"""What the overage, top-up and billing-sync tests share: a pricing file with one meter and one pack Stripe
can charge, and the Stripe paths the billing sync calls."""

from __future__ import annotations

STARTER_PRICING = """
[meters.api_call]
credits_per_unit = "1"

[packs.starter]
credits = "1000"
stripe_prices = ["price_EUR_starter"]
"""
METER_PATH = "/v1/billing/meter_events"
PI_PATH = "/v1/payment_intents"
