"""Issue 10, "no event can mint credits": random subscription stories (a paid month, upgrades, downgrades,
quantity changes with their proration invoices, the next cycle, a partial refund, a cancellation), with or
without a coupon netted into the proration lines (Stripe's default ``proration_discounts=included``),
delivered in random order with duplicates.

Two properties, checked on every example:
- the credits held never exceed what the money paid for, computed independently here with exact fractions
  from the invoices' amounts (a cycle line buys credits x quantity; a proration line buys |amount| /
  (unit amount x quantity) of the plan's month for that quantity, and gives back that share or, when a
  coupon made its credit smaller, the share of the month it hands back, from its own plan's credits of the
  period and never below zero);
- the end state does not depend on order or duplicates: the story delivered in order and the same story
  delivered shuffled with duplicates (other ids) end with the same grants made and the same credits left
  (how one period's revocations are spread over its grants may follow the arrival order; see end_state).

Runs on DynamoDB Local when Java is there (more examples), else moto.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.ledger import Ledger
from credits_ledger.pricing import parse_pricing
from credits_ledger.webhooks import StripeWebhookProcessor
from tests.support import subscription_events as ev
from tests.support.ledger import FakeClock, all_grants, assert_books_balance


@dataclass(frozen=True)
class Periods:
    """Two monthly billing periods of one subscription item: start - next - end."""

    start: datetime
    next: datetime
    end: datetime

    @property
    def seconds(self) -> int:  # of the first period
        return int((self.next - self.start).total_seconds())


# anchored on the 1st; and on the 31st, where a period ending on a month's last day could have started on
# any of the last days of the month before (28 days for February, from 31 Jan)
CALENDARS = (
    Periods(
        datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC), datetime(2030, 3, 1, tzinfo=UTC)
    ),
    Periods(
        datetime(2031, 1, 31, tzinfo=UTC),
        datetime(2031, 2, 28, tzinfo=UTC),
        datetime(2031, 3, 31, tzinfo=UTC),
    ),
)
SHORTEST = min(periods.seconds for periods in CALENDARS)

# plan -> (price, monthly credits, unit amount in cents)
PLANS = {"pro": ("price_pro", 5000, 4900), "business": ("price_business", 20000, 14900)}
PRICING = {
    "plans": {
        "pro": {"stripe_prices": ["price_pro"], "credits": "5000"},
        "business": {"stripe_prices": ["price_business"], "credits": "20000", "on_cancel": "immediately"},
    }
}


@dataclass(frozen=True)
class Change:
    second: int  # seconds into the first period
    plan: str
    quantity: int


@dataclass(frozen=True)
class Story:
    plan: str
    quantity: int
    changes: tuple[Change, ...]
    refund_share: Fraction  # of the second cycle invoice
    cancel_second: int | None  # seconds into the second period
    discount: Fraction = Fraction(0)  # a coupon's share off, netted into the proration lines
    periods: Periods = CALENDARS[0]


@st.composite
def stories(draw: st.DrawFn) -> Story:
    seconds = sorted(set(draw(st.lists(st.integers(60, SHORTEST - 60), max_size=3))))
    changes = tuple(Change(s, draw(st.sampled_from(sorted(PLANS))), draw(st.integers(0, 3))) for s in seconds)
    return Story(
        plan=draw(st.sampled_from(sorted(PLANS))),
        quantity=draw(st.integers(1, 3)),
        changes=changes,
        refund_share=Fraction(draw(st.integers(0, 4)), 4),
        cancel_second=draw(st.none() | st.integers(0, SHORTEST - 1)),
        discount=draw(st.sampled_from([Fraction(0), Fraction(1, 20), Fraction(1, 4), Fraction(1, 2)])),
        periods=draw(st.sampled_from(CALENDARS)),
    )


@dataclass
class Built:
    events: list[dict[str, Any]]
    paid_for: Fraction  # credits the money bought, exactly


def build(story: Story, run: str, customer: str) -> Built:
    """The Stripe events of ``story`` (ids prefixed by ``run``) and, independently, what they paid for."""
    item, sub, pi = f"si_{run}", f"sub_{run}", f"pi_{run}"
    first_start, second_start, second_end = story.periods.start, story.periods.next, story.periods.end
    period_seconds = story.periods.seconds
    plan, quantity = story.plan, story.quantity
    events: list[dict[str, Any]] = []
    # what the first period's money bought, per plan: a credit line revokes from its own plan's grants of the
    # period, never below zero (under a coupon it can give back more than a discounted upgrade granted)
    first_period: dict[str, Fraction] = dict.fromkeys(PLANS, Fraction(0))

    def line(plan_name: str, start: datetime, end: datetime, amount: int, qty: int, proration: bool) -> dict:
        price, _, unit = PLANS[plan_name]
        return ev.plan_line(
            price, start, end, amount, quantity=qty, proration=proration, unit_amount=unit, item=item,
            subscription=sub, line_id=ev.uid(f"il_{run}"),
        )  # fmt: skip

    def bought(
        plan_name: str, amount: int, qty: int, proration: bool, left: Fraction = Fraction(0)
    ) -> Fraction:
        _, credits, unit = PLANS[plan_name]
        if qty <= 0 or amount == 0 or (amount < 0 and not proration):
            return Fraction(0)
        if not proration:
            return Fraction(credits * qty)
        share = min(Fraction(1), Fraction(abs(amount), unit * qty))
        if amount > 0:
            return share * credits * qty
        # the months were granted whole whatever the coupon: a credit gives back the share of the month it
        # hands back, unless its money is that share to the cent (Stripe rounds a line to a minor unit)
        given_back = share if abs(share - left) <= Fraction(1, unit * qty) else max(share, left)
        return -given_back * credits * qty

    first = PLANS[plan][2] * quantity
    events.append(
        ev.invoice_paid(
            customer,
            [line(plan, first_start, second_start, first, quantity, False)],
            created=ev.ts(first_start),
            subscription=sub,
        )
    )
    first_period[plan] += bought(plan, first, quantity, False)
    for change in story.changes:
        at = first_start + timedelta(seconds=change.second)
        left = Fraction(period_seconds - change.second, period_seconds)
        net = 1 - story.discount
        old = -round(PLANS[plan][2] * quantity * left * net)
        new = round(PLANS[change.plan][2] * change.quantity * left * net)
        lines = [
            line(plan, at, second_start, old, quantity, True),
            line(change.plan, at, second_start, new, change.quantity, True),
        ]
        events.append(
            ev.invoice_paid(
                customer, lines, created=ev.ts(at), subscription=sub, amount_paid=max(0, old + new)
            )
        )
        first_period[plan] += bought(plan, old, quantity, True, left)
        first_period[change.plan] += bought(change.plan, new, change.quantity, True)
        plan, quantity = change.plan, change.quantity
    second = PLANS[plan][2] * quantity
    events.append(
        ev.invoice_paid(
            customer, [line(plan, second_start, second_end, second, quantity, False)], created=ev.ts(second_start), subscription=sub,
            payment_intent=pi,
        )
    )  # fmt: skip
    paid = sum((max(Fraction(0), held) for held in first_period.values()), Fraction(0))
    paid += bought(plan, second, quantity, False)
    if story.refund_share and second > 0:
        refunded = int(second * story.refund_share)
        events.append(ev.charge_refunded(pi, second, refunded, created=ev.ts(second_start) + 3600))
    if story.cancel_second is not None:
        at = second_start + timedelta(seconds=story.cancel_second)
        events.append(
            ev.subscription_event(
                "customer.subscription.deleted", customer, PLANS[plan][0], created=ev.ts(at), subscription=sub,
                item=item, status="canceled", canceled_at=at, ended_at=at,
            )
        )  # fmt: skip
    return Built(events, paid)


@dataclass(frozen=True)
class Backend:
    client: Any
    table: str
    examples: int


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    try:
        tables, examples = request.getfixturevalue("local_tables"), 25
    except pytest.skip.Exception:
        tables, examples = request.getfixturevalue("moto_tables"), 6
    yield Backend(tables.client, tables["CreditsTable"], examples)


def end_state(ledger: Ledger, customer: str) -> tuple[list[Decimal], Decimal]:
    """The grants made (their amounts) and the credits left. Which of a period's grants of one plan a
    revocation took its credits from may follow the arrival order (it takes from the grants that exist,
    latest first; they end together), the credits left do not."""
    grants = all_grants(ledger, customer)
    return sorted(g.amount for g in grants), sum((g.remaining for g in grants), Decimal(0))


@pytest.mark.slow
def test_no_story_leaves_more_credits_than_paid_for_in_any_order(backend: Backend) -> None:
    clock = FakeClock(CALENDARS[0].next + timedelta(days=1))
    ledger = Ledger(AccountRepository(backend.client, backend.table), clock)
    processor = StripeWebhookProcessor(
        ledger, PaymentRepository(backend.client, backend.table), parse_pricing(PRICING), clock
    )

    @settings(
        max_examples=backend.examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(story=stories(), data=st.data())
    def every_story(story: Story, data: st.DataObject) -> None:
        clock.set(story.periods.next + timedelta(days=1))
        in_order, shuffled = ev.uid("cus"), ev.uid("cus")
        straight = build(story, ev.uid("a"), in_order)
        for event in straight.events:
            assert processor.process(event).status in {"processed", "duplicate", "ignored"}
        other = build(story, ev.uid("b"), shuffled)
        order = data.draw(st.permutations(range(len(other.events))))
        duplicates = data.draw(st.lists(st.sampled_from(range(len(other.events))), max_size=3))
        for index in [*order, *duplicates]:
            assert processor.process(other.events[index]).status in {"processed", "duplicate", "ignored"}

        for customer, built in ((in_order, straight), (shuffled, other)):
            balance = assert_books_balance(ledger, customer)  # the ledger sums to the balance
            assert balance >= 0 and Fraction(balance) <= built.paid_for, (balance, float(built.paid_for))
        assert end_state(ledger, shuffled) == end_state(ledger, in_order)

    every_story()
