"""An account's subscriptions (scope ``balance:read``): plan, status, current period and this month's credits,
from the Stripe subscription events (docs/subscriptions.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ConfigDict

from credits_ledger.api.deps import caller, ledger, new_router
from credits_ledger.api.openapi import responses
from credits_ledger.api.params import CustomerId
from credits_ledger.api_models import ResponseView
from credits_ledger.auth import Scope
from credits_ledger.domain.money import format_amount
from credits_ledger.domain.times import iso
from credits_ledger.ledger import utc_now

if TYPE_CHECKING:
    from credits_ledger.subscription_view import SubscriptionView

# The subscription modules (periods, prorations, their repository) load on the first subscriptions read an
# instance serves, not in every cold start of the API (docs/decisions.md, "Cold start").

router = new_router()


class Period(ResponseView):
    model_config = ConfigDict(frozen=True)

    start: str | None
    end: str | None


class SubscriptionOut(ResponseView):
    model_config = ConfigDict(frozen=True)

    id: str
    plan: str | None
    status: str
    quantity: int
    current_period: Period
    cancel_at_period_end: bool
    credits_this_month: str
    remaining_this_month: str

    @classmethod
    def of(cls, view: SubscriptionView) -> SubscriptionOut:
        return cls(
            id=view.subscription_id,
            plan=view.plan,
            status=view.status,
            quantity=view.quantity,
            current_period=Period(
                start=iso(view.period_start) if view.period_start else None,
                end=iso(view.period_end) if view.period_end else None,
            ),
            cancel_at_period_end=view.cancel_at_period_end,
            credits_this_month=format_amount(view.credits_this_month),
            remaining_this_month=format_amount(view.remaining_this_month),
        )


class SubscriptionList(ResponseView):
    data: list[SubscriptionOut]


@router.get(
    "/v1/customers/<customer>/subscriptions",
    summary="Subscriptions",
    tags=["balance"],
    responses=responses(200, "the account's subscriptions and this month's credits", SubscriptionList),
)
def list_subscriptions(customer: CustomerId) -> SubscriptionList:
    from credits_ledger.dal.subscriptions import SubscriptionRepository
    from credits_ledger.subscription_view import subscription_views

    caller().require(Scope.BALANCE_READ, customer)
    views = subscription_views(SubscriptionRepository(), ledger().account_state, customer, utc_now())
    return SubscriptionList(data=[SubscriptionOut.of(view) for view in views])
