"""GET /v1/customers/{customer}/subscriptions through the API handler, fed by Stripe subscription events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.domain import subscriptions as subs
from credits_ledger.ledger import DebitRequest
from credits_ledger.pricing import parse_pricing
from credits_ledger.webhooks import StripeWebhookProcessor
from tests.integration.test_api_support import Api
from tests.support import subscription_events as ev

pytest_plugins = ["tests.integration.test_api_support"]

CUSTOMER = "cus_NffrFeUfNV2Hib"  # the sample event's customer
PLANS = parse_pricing({"plans": {"pro": {"stripe_prices": ["price_pro_month"], "credits": "5000"}}})


def path(customer: str = CUSTOMER) -> str:
    return f"/v1/customers/{customer}/subscriptions"


def test_no_subscription_reads_as_an_empty_list(api: Api) -> None:
    reply = api.call("subscriptions_list")
    assert reply.status == 200 and reply.body == {"data": []}


def test_the_view_shows_plan_period_and_this_months_credits(api: Api) -> None:
    # Given an active Pro subscription of quantity 2 whose current month is paid, 1,500 credits spent
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(days=10), now + timedelta(days=20)
    webhook = StripeWebhookProcessor(api.ledger(), PaymentRepository(), PLANS)
    created = ev.ts(start)
    for event in (
        ev.subscription_event(
            "customer.subscription.created", CUSTOMER, "price_pro_month", created=created, quantity=2,
            period_start=start, period_end=end, cancel_at_period_end=True,
        ),
        ev.invoice_paid(
            CUSTOMER, [ev.plan_line("price_pro_month", start, end, 9800, quantity=2, unit_amount=4900)],
            created=created + 60,
        ),
    ):  # fmt: skip
        assert webhook.process(event).status == "processed"
    api.ledger().debit(CUSTOMER, DebitRequest("usage:sub-1", Decimal(1500)))
    # When read with a balance:read key
    key = api.issue_key(["balance:read"], [CUSTOMER])
    reply = api.call("subscriptions_list", key=key)
    # Then
    assert reply.status == 200, reply.body
    assert reply.body == {
        "data": [
            {
                "id": "sub_1",
                "plan": "pro",
                "status": "active",
                "quantity": 2,
                "current_period": {"start": ev_iso(start), "end": ev_iso(end)},
                "cancel_at_period_end": True,
                "credits_this_month": "10000",
                "remaining_this_month": "8500",
            }
        ]
    }


def test_this_months_credits_follow_a_quantity_decrease(api: Api) -> None:
    # Given Pro x2 paid for the month (10,000 credits), then halfway through a decrease to x1: the proration
    # credits half of the two units (revokes 5,000) and charges half of one unit (grants 2,500)
    # (a monthly period as Stripe bills it, the decrease exactly half way, so the lines are exact halves)
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=15)
    start = subs.add_months(end, -1)
    mid = start + (end - start) / 2
    webhook = StripeWebhookProcessor(api.ledger(), PaymentRepository(), PLANS)
    created = ev.ts(start)
    for event in (
        ev.subscription_event(
            "customer.subscription.created", CUSTOMER, "price_pro_month", created=created, quantity=2,
            period_start=start, period_end=end,
        ),
        ev.invoice_paid(
            CUSTOMER, [ev.plan_line("price_pro_month", start, end, 9800, quantity=2, unit_amount=4900)],
            created=created + 60,
        ),
        ev.invoice_paid(
            CUSTOMER,
            [
                ev.plan_line("price_pro_month", mid, end, -4900, proration=True, unit_amount=4900, quantity=2),
                ev.plan_line("price_pro_month", mid, end, 2450, proration=True, unit_amount=4900, quantity=1),
            ],
            created=ev.ts(mid), amount_paid=0,
        ),
    ):  # fmt: skip
        assert webhook.process(event).status == "processed"
    # Then this month's allowance reads 7,500, as the balance does, not the 12,500 announced
    [view] = api.call("subscriptions_list").body["data"]
    assert (view["credits_this_month"], view["remaining_this_month"]) == ("7500", "7500")
    assert api.ledger().balance(CUSTOMER).available == 7500


def ev_iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def test_scope_and_account_limits_apply(api: Api) -> None:
    usage_only = api.issue_key(["usage:write"])
    assert api.call("subscriptions_list", key=usage_only).status == 403
    other = api.issue_key(["balance:read"], ["cus_other"])
    assert api.call("subscriptions_list", key=other).status == 403
    assert api.call("subscriptions_list", key="ck_nope").status == 401
