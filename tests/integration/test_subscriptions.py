"""Subscriptions (docs/subscriptions.md): a month of credits per paid period, prorations in the proportion of
money, trials, cancellation, refunds, and the Stripe inputs that must never mint credits (issue 10).

The processor runs on moto tables of template.yaml with a fixed pricing file; events are plain Stripe-shaped
dicts (tests/support/subscription_events.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_ledger import webhooks
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.domain.models import PATH_SEGMENT_CHARACTERS, Category, EntryType, Grant, GrantStatus
from credits_ledger.ledger import Ledger
from credits_ledger.pricing import Pricing, parse_pricing
from credits_ledger.webhooks import StripeWebhookProcessor
from tests.support import subscription_events as ev
from tests.support.ledger import FakeClock, all_entries, all_grants, assert_books_balance

D = Decimal
T0 = datetime(2030, 1, 15, tzinfo=UTC)
FEB = datetime(2030, 2, 15, tzinfo=UTC)
MAR = datetime(2030, 3, 15, tzinfo=UTC)
MID = datetime(2030, 1, 30, 12, tzinfo=UTC)  # half of the Jan 15 - Feb 15 period (31 days) is 15.5 days later

PRICING = {
    "plans": {
        "pro": {
            "stripe_prices": ["price_pro_month", "price_pro_year"],
            "credits": "5000",
            "rollover_percent": "50",
            "rollover_max": "2000",
            "trial_credits": "500",
        },
        "business": {
            "stripe_prices": ["price_business_month"],
            "credits": "20000",
            "on_cancel": "immediately",
        },
        # cancels immediately and rolls over: a late cancellation meets the month's credits rolled over
        "team": {
            "stripe_prices": ["price_team_month"],
            "credits": "5000",
            "rollover_percent": "50",
            "on_cancel": "immediately",
        },
    },
    "packs": {"starter": {"credits": "1000", "stripe_prices": ["price_starter"]}},
}


@dataclass
class FakeStripe:
    """The two Stripe API reads, answering from dicts and counting calls."""

    lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def list_invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        self.calls.append(f"lines {invoice_id}")
        return self.lines[invoice_id]

    def retrieve_price(self, price_id: str) -> dict[str, Any]:
        self.calls.append(f"price {price_id}")
        return self.prices[price_id]


@dataclass
class Books:
    ledger: Ledger
    clock: FakeClock
    pricing: Pricing
    client: Any
    table: str

    def processor(self, reads: Any = None, mode: str = "test") -> StripeWebhookProcessor:
        return StripeWebhookProcessor(
            self.ledger,
            PaymentRepository(self.client, self.table),
            self.pricing,
            self.clock,
            stripe_reads=reads,
            mode=mode,
        )

    def send(self, event: dict[str, Any], expected: str | None = "processed", reads: Any = None) -> Any:
        result = self.processor(reads).process(event)
        if expected is not None:
            assert result.status == expected, result
        return result

    def grants(self, customer: str) -> list[Grant]:
        return sorted(all_grants(self.ledger, customer), key=lambda g: (g.effective_at, g.grant_id))

    def balance(self, customer: str) -> Decimal:
        return assert_books_balance(self.ledger, customer)

    def failed(self, event_id: str) -> str | None:
        stored = PaymentRepository(self.client, self.table).failed_event(event_id)
        return stored.reason if stored else None


@pytest.fixture
def books(moto_tables: Any) -> Iterator[Books]:
    clock = FakeClock(T0)
    client, table = moto_tables.client, moto_tables["CreditsTable"]
    yield Books(Ledger(AccountRepository(client, table), clock), clock, parse_pricing(PRICING), client, table)


@pytest.fixture
def customer() -> str:
    return ev.uid("cus")


def cycle(customer: str, start: datetime = T0, end: datetime = FEB, **kw: Any) -> dict[str, Any]:
    price = kw.pop("price", "price_pro_month")
    amount = kw.pop("amount", 4900)
    line_kw = {k: kw.pop(k) for k in ("quantity", "item", "interval", "unit_amount", "line_id") if k in kw}
    line = ev.plan_line(price, start, end, amount, unit_amount=line_kw.pop("unit_amount", 4900), **line_kw)
    return ev.invoice_paid(customer, [line], created=ev.ts(start) + 60, **kw)


# ---- a month of credits per paid period ---------------------------------------------------------------
def test_a_paid_month_grants_the_plan_credits_times_quantity_for_that_month(
    books: Books, customer: str
) -> None:
    # Given a monthly Pro subscription item of quantity 2 / When its cycle invoice is paid
    books.send(cycle(customer, quantity=2, amount=9800))
    # Then one paid grant of 2 x 5000, effective at the period start and expiring at its end
    [grant] = books.grants(customer)
    assert (grant.amount, grant.category, grant.effective_at, grant.expires_at) == (
        D(10000),
        Category.PAID,
        T0,
        FEB,
    )
    assert grant.metadata["plan"] == "pro" and grant.cost_basis.amount == D(9800)
    assert books.balance(customer) == D(10000)


def test_a_month_is_granted_once_whichever_invoice_or_retry_announces_it(books: Books, customer: str) -> None:
    # Given the cycle invoice delivered twice, and a second invoice announcing the same item's period
    first = cycle(customer, line_id="il_a")
    books.send(first)
    books.send(first, expected="duplicate")
    books.send(cycle(customer, line_id="il_b"))
    # Then the month was granted once
    assert [g.amount for g in books.grants(customer)] == [D(5000)]
    assert books.balance(customer) == D(5000)


def test_a_yearly_period_is_released_as_one_grant_per_month(books: Books, customer: str) -> None:
    # Given a yearly price paid for Jan 31 2030 - Jan 31 2031
    start, end = datetime(2030, 1, 31, tzinfo=UTC), datetime(2031, 1, 31, tzinfo=UTC)
    books.clock.set(start)
    books.send(
        cycle(customer, start, end, price="price_pro_year", amount=49000, unit_amount=49000, interval="year")
    )
    # Then twelve grants of 5000, each from its month's start (day clamped: Feb 28) to the next month's
    grants = books.grants(customer)
    assert [g.amount for g in grants] == [D(5000)] * 12
    assert grants[1].effective_at == datetime(2030, 2, 28, tzinfo=UTC) == grants[0].expires_at
    assert grants[2].effective_at == datetime(2030, 3, 31, tzinfo=UTC)
    assert grants[-1].expires_at == end
    # the first is active, the later ones pending: only one month is available now
    assert [g.status for g in grants[:2]] == [GrantStatus.ACTIVE, GrantStatus.PENDING]
    balance = books.ledger.balance(customer)
    assert (balance.available, balance.pending, balance.ledger_balance) == (D(5000), D(55000), D(60000))
    assert sum(g.cost_basis.amount for g in grants) == D(49000)


def test_an_invoice_of_more_grants_than_a_convergence_may_lose_races_is_granted_in_one_delivery(
    books: Books, customer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a convergence that may lose 3 races, and a yearly price paid (twelve month grants to apply)
    monkeypatch.setattr(webhooks, "MAX_ROUNDS", 3)
    start, end = datetime(2030, 1, 31, tzinfo=UTC), datetime(2031, 1, 31, tzinfo=UTC)
    books.clock.set(start)
    # When its invoice is delivered once
    result = books.processor().process(
        cycle(customer, start, end, price="price_pro_year", amount=49000, unit_amount=49000, interval="year")
    )
    # Then every month is granted by that delivery (actions applied are progress, not lost races): no 500
    # for Stripe to retry
    assert result.status == "processed"
    assert [g.amount for g in books.grants(customer)] == [D(5000)] * 12


def test_a_weekly_period_grants_once_per_period(books: Books, customer: str) -> None:
    books.send(cycle(customer, T0, T0 + timedelta(days=7), amount=1200, interval="week"))
    assert [(g.amount, g.expires_at) for g in books.grants(customer)] == [(D(5000), T0 + timedelta(days=7))]


@pytest.mark.parametrize(
    ("quantity", "amount"),
    [(0, 4900), (1, 0), (1, -4900)],
    ids=["quantity 0", "amount 0 (trial invoice)", "negative non-proration line"],
)
def test_lines_that_bill_nothing_grant_nothing(
    books: Books, customer: str, quantity: int, amount: int
) -> None:
    result = books.send(cycle(customer, quantity=quantity, amount=amount), expected=None)
    assert result.status in {"ignored", "processed"}
    assert books.grants(customer) == [] and books.balance(customer) == 0


# ---- prorations ----------------------------------------------------------------------------------------
def upgrade(
    customer: str, old_amount: int, new_amount: int, *, created: datetime = MID, **kw: Any
) -> dict[str, Any]:
    old_price = kw.pop("old_price", "price_pro_month")
    new_price = kw.pop("new_price", "price_business_month")
    old_unit, new_unit = kw.pop("old_unit", 4900), kw.pop("new_unit", 14900)
    lines = [
        ev.plan_line(old_price, created, FEB, old_amount, proration=True, unit_amount=old_unit),
        ev.plan_line(new_price, created, FEB, new_amount, proration=True, unit_amount=new_unit),
    ]
    return ev.invoice_paid(
        customer, lines, created=ev.ts(created), billing_reason="subscription_update", **kw
    )


def downgrade(customer: str, old_amount: int, new_amount: int, **kw: Any) -> dict[str, Any]:
    """Business to Pro: an invoice paying 0 (the credit covers the charge)."""
    return upgrade(
        customer, old_amount, new_amount, old_price="price_business_month", old_unit=14900,
        new_price="price_pro_month", new_unit=4900, amount_paid=0, **kw,
    )  # fmt: skip


def test_an_upgrade_revokes_the_old_plans_share_and_grants_the_new_plans_share(
    books: Books, customer: str
) -> None:
    # Given a paid Pro month (5000) / When upgraded to Business at half the period
    books.send(cycle(customer))
    books.clock.set(MID)
    books.send(upgrade(customer, -2450, 7450))
    # Then half of Pro (2500) is revoked and half of Business (10000) granted until the period end
    grants = books.grants(customer)
    assert [(g.amount, g.remaining) for g in grants] == [(D(5000), D(2500)), (D(10000), D(10000))]
    assert grants[1].expires_at == FEB and grants[1].cost_basis.amount == D(7450)
    revokes = [e for e in all_entries(books.ledger, customer) if e.type is EntryType.REVOKE]
    assert [e.amount for e in revokes] == [D(-2500)]
    assert books.balance(customer) == D(12500)


def test_the_reviews_downgrade_invoice_revokes_the_period_given_back_and_grants_its_money_share(
    books: Books, customer: str
) -> None:
    # Given the review's case: a Business month, then a downgrade invoice paying 0 with lines -1400 and +600
    # for the second half of the period
    books.send(cycle(customer, price="price_business_month", amount=14900, unit_amount=14900))
    books.send(downgrade(customer, -1400, 600))
    # Then the half of the Business month given back is revoked (its credit of 14.00 is less than half of
    # 149.00, as a discount would make it) and 5000 x 600/4900 is granted (rounded down): never 13,000, and
    # no grant has a negative cost basis
    revoked, granted = D(10000), D("612.244897")
    assert books.balance(customer) == D(20000) - revoked + granted
    assert all(g.cost_basis.amount >= 0 for g in books.grants(customer))


@pytest.mark.parametrize(
    ("new_amount", "granted"),
    [
        (7450, D(10000)),  # a coupon on Pro only: Business's half at full price, its full half of 20000
        (3725, D(5000)),  # a coupon on both: Business's half at half price, what that money buys
    ],
)
def test_an_upgrade_under_a_coupon_revokes_the_whole_share_of_the_old_plans_period(
    books: Books, customer: str, new_amount: int, granted: Decimal
) -> None:
    # Given a Pro month at 50% off (the cycle grants the plan's 5000 whatever the discount)
    books.send(cycle(customer, amount=2450))
    # When upgraded half way, Stripe's default proration_discounts=included nets the discount into the lines:
    # Pro's unused half is credited 12.25, not 24.50
    books.clock.set(MID)
    books.send(upgrade(customer, -1225, new_amount))
    # Then half of Pro's month is revoked (2500, not the 1250 that 12.25 of 49.00 would take back)
    revokes = [e for e in all_entries(books.ledger, customer) if e.type is EntryType.REVOKE]
    assert [e.amount for e in revokes] == [D(-2500)]
    assert books.balance(customer) == D(2500) + granted


@pytest.mark.parametrize(
    ("period_start", "discount", "revoked"),
    [
        # anchored on the 31st (31 Jan - 28 Feb, 28 days), 5% and 9% off: half of Pro's month, never less
        (datetime(2031, 1, 31, tzinfo=UTC), Decimal("0.05"), D(2500)),
        (datetime(2031, 1, 31, tzinfo=UTC), Decimal("0.09"), D(2500)),
        # anchored on the 28th (28 Jan - 28 Feb, 31 days), no coupon: the 14 days' money share to the cent
        # (Stripe rounds 4900 x 14/31 = 2212.9 down to 2212), not a later start's share
        (datetime(2031, 1, 28, tzinfo=UTC), Decimal(0), D("2257.142858")),
    ],
)
def test_a_credit_on_a_period_ending_on_a_months_last_day_revokes_what_the_period_gave(
    books: Books, customer: str, period_start: datetime, discount: Decimal, revoked: Decimal
) -> None:
    # Given a Pro month ending 28 Feb, switched to Business on 14 Feb, the lines net of the discount
    end, change = datetime(2031, 2, 28, tzinfo=UTC), datetime(2031, 2, 14, tzinfo=UTC)
    books.clock.set(change)
    books.send(cycle(customer, start=period_start, end=end))
    share = Decimal((end - change).days) / Decimal((end - period_start).days)
    net = 1 - discount
    old, new = -int(4900 * share * net), int(14900 * share * net)
    lines = [
        ev.plan_line("price_pro_month", change, end, old, proration=True, unit_amount=4900),
        ev.plan_line("price_business_month", change, end, new, proration=True, unit_amount=14900),
    ]
    books.send(ev.invoice_paid(customer, lines, created=ev.ts(change), billing_reason="subscription_update"))
    revokes = [e for e in all_entries(books.ledger, customer) if e.type is EntryType.REVOKE]
    assert [-e.amount for e in revokes] == [revoked]


def test_a_downgrade_under_a_coupon_at_the_period_start_leaves_only_the_new_plans_month(
    books: Books, customer: str
) -> None:
    # Given a Business month at 50% off, downgraded to Pro as it starts (lines net of the discount)
    books.send(cycle(customer, price="price_business_month", amount=7450, unit_amount=14900))
    books.send(downgrade(customer, -7450, 2450, created=T0))
    # Then the whole Business month is revoked, not half of it: what is left is what the Pro line bought
    assert books.balance(customer) == D(2500)


def test_a_downgrade_then_upgrade_loop_never_leaves_more_than_was_paid_for(
    books: Books, customer: str
) -> None:
    books.send(cycle(customer))
    for _ in range(3):
        books.send(upgrade(customer, -2450, 7450))
        books.send(upgrade(customer, -7450, 2450, old_price="price_business_month", new_price="price_pro_month",
                           new_unit=4900))  # fmt: skip
    # each round trip: -2500 + 10000 - 10000 + 2500 (the Business line at its own unit amount)
    assert books.balance(customer) <= D(5000)


def test_a_proration_delivered_before_the_month_it_revokes_from_waits_for_it(
    books: Books, customer: str
) -> None:
    # Given the upgrade invoice delivered before the cycle invoice
    books.send(upgrade(customer, -2450, 7450))
    assert books.balance(customer) == D(10000)
    books.send(cycle(customer))
    # Then the end state is the in-order one
    assert books.balance(customer) == D(12500)


def test_a_proration_larger_than_the_whole_interval_is_capped(books: Books, customer: str) -> None:
    line = ev.plan_line("price_pro_month", MID, FEB, 100_000, proration=True, unit_amount=4900)
    books.send(ev.invoice_paid(customer, [line], created=ev.ts(MID)))
    assert books.balance(customer) == D(5000)


@pytest.mark.parametrize("quantity", [0])
def test_a_zero_quantity_proration_grants_nothing(books: Books, customer: str, quantity: int) -> None:
    line = ev.plan_line(
        "price_pro_month", MID, FEB, 2450, proration=True, unit_amount=4900, quantity=quantity
    )
    books.send(ev.invoice_paid(customer, [line], created=ev.ts(MID)), expected=None)
    assert books.balance(customer) == 0


def test_a_proration_naming_only_its_price_id_retrieves_the_price_once(books: Books, customer: str) -> None:
    # Given current-API lines that carry only the price id (no unit amount, no interval)
    lines = [
        ev.plan_line("price_business_month", MID, FEB, 7450, proration=True, embed_price=False),
        ev.plan_line("price_business_month", MID, FEB, 7450, proration=True, embed_price=False, item="si_2"),
    ]
    event = ev.invoice_paid(customer, lines, created=ev.ts(MID))
    # Without a Stripe API key the event is failed with the reason (kept for replay), nothing granted
    assert books.send(event, expected="failed").reason.startswith("price price_business_month")
    assert "STRIPE_API_KEY" in (books.failed(event["id"]) or "") and books.balance(customer) == 0
    # With one, the price is retrieved once for both lines
    stripe = FakeStripe(
        prices={"price_business_month": {"unit_amount": 14900, "recurring": {"interval": "month"}}}
    )
    books.send(event, reads=stripe)
    assert stripe.calls == ["price price_business_month"]
    assert books.balance(customer) == D("20000")


# ---- Stripe input that cannot mint ---------------------------------------------------------------------
def test_an_invoice_with_more_lines_fails_without_a_key_and_lists_them_with_one(
    books: Books, customer: str
) -> None:
    event = cycle(customer, has_more=True)
    result = books.send(event, expected="failed")
    assert "has_more" in (result.reason or "") and books.balance(customer) == 0
    extra = ev.plan_line("price_pro_month", T0, FEB, 4900, unit_amount=4900, item="si_2")
    stripe = FakeStripe(
        lines={event["data"]["object"]["id"]: [*event["data"]["object"]["lines"]["data"], extra]}
    )
    books.send(event, reads=stripe)
    assert books.balance(customer) == D(10000)


def test_pack_lines_that_prorate_credit_or_have_no_quantity_grant_nothing(
    books: Books, customer: str
) -> None:
    # The review's findings on one-off packs: a proration line, a negative line, a quantity-0 line
    lines = [
        {**ev.plan_line("price_starter", MID, FEB, 600, proration=True), "price": "price_starter"},
        {**ev.plan_line("price_starter", MID, FEB, -1400), "price": "price_starter"},
        {**ev.plan_line("price_starter", MID, FEB, 1900, quantity=0), "price": "price_starter"},
    ]
    books.send(ev.invoice_paid(customer, lines, created=ev.ts(MID)), expected="ignored")
    assert books.balance(customer) == 0


@pytest.mark.parametrize(
    "extra",
    [{"livemode": True}, {"account": "acct_1Connected"}],
    ids=["other mode", "connected account"],
)
def test_events_of_another_mode_or_a_connected_account_are_ignored(
    books: Books, customer: str, extra: dict
) -> None:
    event = {**cycle(customer), **extra}
    assert books.send(event, expected="ignored").reason
    assert books.balance(customer) == 0


def test_a_live_deployment_ignores_test_events(books: Books, customer: str) -> None:
    assert books.processor(mode="live").process(cycle(customer)).status == "ignored"


# ---- lifecycle -----------------------------------------------------------------------------------------
def created(customer: str, **kw: Any) -> dict[str, Any]:
    return ev.subscription_event(
        "customer.subscription.created", customer, kw.pop("price", "price_pro_month"), created=ev.ts(T0), **kw
    )


def test_a_trial_grants_trial_credits_once_expiring_at_trial_end(books: Books, customer: str) -> None:
    end = T0 + timedelta(days=14)
    books.send(created(customer, status="trialing", quantity=2, trial_start=T0, trial_end=end))
    books.send(
        ev.subscription_event(
            "customer.subscription.updated", customer, "price_pro_month", created=ev.ts(T0) + 5,
            status="trialing", quantity=2, trial_start=T0, trial_end=end,
        )
    )  # fmt: skip
    [grant] = books.grants(customer)
    assert (grant.amount, grant.category, grant.expires_at) == (D(1000), Category.PROMOTIONAL, end)
    assert grant.cost_basis.amount == 0


def yearly(customer: str) -> dict[str, Any]:
    end = datetime(2031, 1, 15, tzinfo=UTC)
    return cycle(customer, T0, end, price="price_pro_year", amount=49000, unit_amount=49000, interval="year")


def deleted(customer: str, at: datetime, price: str = "price_pro_year") -> dict[str, Any]:
    return ev.subscription_event(
        "customer.subscription.deleted", customer, price, created=ev.ts(at), status="canceled",
        canceled_at=at, ended_at=at,
    )  # fmt: skip


@pytest.mark.parametrize("cancel_first", [False, True], ids=["in order", "cancellation delivered first"])
def test_cancellation_voids_the_months_not_yet_started(
    books: Books, customer: str, cancel_first: bool
) -> None:
    # Given a yearly Pro subscription cancelled on Apr 1 (its 3rd month)
    at = datetime(2030, 4, 1, tzinfo=UTC)
    events = [yearly(customer), deleted(customer, at)]
    for event in reversed(events) if cancel_first else events:
        books.send(event)
    # Then the 9 months from Apr 15 on are voided; the current month stays until its end (period_end)
    books.clock.set(at)
    grants = books.grants(customer)
    assert [g.status for g in grants[:3]] == [GrantStatus.EXPIRED, GrantStatus.EXPIRED, GrantStatus.ACTIVE]
    assert [g.status for g in grants[3:]] == [GrantStatus.VOIDED] * 9
    assert books.ledger.balance(customer).available == D(5000)
    assert books.balance(customer) == D(15000)


def naming_the_account(event: dict[str, Any], account: str) -> dict[str, Any]:
    """``event`` of a subscription whose metadata names ``account`` (``credits_customer``): on the
    subscription itself, and where Stripe copies it on the subscription's invoices."""
    obj = event["data"]["object"]
    if obj["object"] == "subscription":
        obj["metadata"] = {"credits_customer": account}
    else:
        obj["parent"]["subscription_details"]["metadata"] = {"credits_customer": account}
    return event


def test_a_subscription_naming_an_account_grants_and_voids_its_months_on_that_account(
    books: Books, customer: str
) -> None:
    # Given a yearly Pro subscription whose metadata names the account org_acme, cancelled on Apr 1
    at = datetime(2030, 4, 1, tzinfo=UTC)
    books.send(naming_the_account(yearly(customer), "org_acme"))
    books.send(naming_the_account(deleted(customer, at), "org_acme"))
    # Then its months were granted to org_acme, and the 9 from Apr 15 on are voided there: the paying
    # customer's account got nothing, and no month outlives the cancellation
    books.clock.set(at)
    assert books.grants(customer) == []
    assert [g.status for g in books.grants("org_acme")[3:]] == [GrantStatus.VOIDED] * 9
    assert books.balance("org_acme") == D(15000)


def older_api_invoice_naming(event: dict[str, Any], account: str) -> dict[str, Any]:
    """``event``, an ``invoice.paid`` of a subscription whose metadata names ``account``, as API versions
    before 2025-03-31 send it: no ``parent``; the subscription in ``subscription`` and its metadata copied to
    the invoice's top-level ``subscription_details.metadata``."""
    obj = event["data"]["object"]
    obj["subscription"] = obj.pop("parent")["subscription_details"]["subscription"]
    obj["subscription_details"] = {"metadata": {"credits_customer": account}}
    event["api_version"] = "2024-06-20"
    return event


def test_an_older_api_invoice_of_a_subscription_naming_an_account_grants_its_months_on_that_account(
    books: Books, customer: str
) -> None:
    # Given a yearly Pro subscription whose metadata names org_acme, its invoice sent by an API version
    # before 2025-03-31, cancelled on Apr 1
    at = datetime(2030, 4, 1, tzinfo=UTC)
    books.send(older_api_invoice_naming(yearly(customer), "org_acme"))
    books.send(naming_the_account(deleted(customer, at), "org_acme"))
    # Then its months were granted to org_acme, where the cancellation is kept and voids the 9 from Apr 15
    # on: none went to the paying customer's account, out of the cancellation's reach
    books.clock.set(at)
    assert books.grants(customer) == []
    assert [g.status for g in books.grants("org_acme")[3:]] == [GrantStatus.VOIDED] * 9
    assert books.balance("org_acme") == D(15000)


def test_a_subscription_naming_an_account_the_api_could_not_address_fails_its_invoice(
    books: Books, customer: str
) -> None:
    ev = naming_the_account(yearly(customer), "org\nacme")
    assert books.send(ev, expected="failed").reason.endswith(
        f"(8 characters; at most 255, only {PATH_SEGMENT_CHARACTERS})"
    )
    assert books.grants(customer) == [] and books.grants("org\nacme") == []


def test_cancellation_immediately_voids_the_current_month_too(books: Books, customer: str) -> None:
    books.send(cycle(customer, price="price_business_month", amount=14900, unit_amount=14900))
    books.send(deleted(customer, MID, price="price_business_month"))
    books.clock.set(MID)
    assert [g.status for g in books.grants(customer)] == [GrantStatus.VOIDED]
    assert books.balance(customer) == 0


def with_item(event: dict[str, Any], price: str, item: str) -> dict[str, Any]:
    """``event`` of a subscription with one more item, of ``price``, after the ones it has."""
    items = event["data"]["object"]["items"]["data"]
    added = copy.deepcopy(items[0])
    added["id"], added["price"]["id"] = item, price
    items.append(added)
    return event


@pytest.mark.parametrize("first", ["pro", "business"], ids=["pro item first", "business item first"])
def test_cancellation_voids_the_current_month_of_each_plan_by_that_plans_rule(
    books: Books, customer: str, first: str
) -> None:
    # Given a subscription of a Pro item (period_end) and a Business item (immediately), their month paid
    prices = {"pro": ("price_pro_month", "si_pro"), "business": ("price_business_month", "si_biz")}
    lines = [
        ev.plan_line("price_pro_month", T0, FEB, 4900, unit_amount=4900, item="si_pro"),
        ev.plan_line("price_business_month", T0, FEB, 14900, unit_amount=14900, item="si_biz"),
    ]
    books.send(ev.invoice_paid(customer, lines, created=ev.ts(T0) + 60))
    # When it is cancelled half way, whichever item the subscription lists first
    [other] = set(prices) - {first}
    cancel = ev.subscription_event(
        "customer.subscription.deleted", customer, prices[first][0], item=prices[first][1],
        created=ev.ts(MID), status="canceled", canceled_at=MID, ended_at=MID,
    )  # fmt: skip
    books.send(with_item(cancel, *prices[other]))
    # Then Pro keeps its month until its end, and Business loses what remains of its month
    books.clock.set(MID)
    by_plan = {g.metadata["plan"]: g.status for g in books.grants(customer)}
    assert by_plan == {"pro": GrantStatus.ACTIVE, "business": GrantStatus.VOIDED}
    assert books.balance(customer) == D(5000)


def test_a_refund_of_a_yearly_invoice_takes_pending_months_first(books: Books, customer: str) -> None:
    event = yearly(customer)
    event["data"]["object"]["payments"]["data"] = [{"payment": {"payment_intent": "pi_year"}}]
    books.send(event)
    books.send(ev.charge_refunded("pi_year", 49000, 24500, created=ev.ts(MID)))
    grants = books.grants(customer)
    assert [g.remaining for g in grants[:6]] == [D(5000)] * 6
    assert all(g.remaining == 0 for g in grants[6:])
    assert books.balance(customer) == D(30000)


def test_a_change_to_quantity_zero_revokes_the_whole_remainder(books: Books, customer: str) -> None:
    # Given a Business month / When the quantity drops to 0 a minute in (found by the property test)
    books.send(cycle(customer, price="price_business_month", amount=14900, unit_amount=14900))
    at = T0 + timedelta(minutes=1)
    lines = [
        ev.plan_line("price_business_month", at, FEB, -14900, proration=True, unit_amount=14900),
        ev.plan_line("price_business_month", at, FEB, 0, proration=True, unit_amount=14900, quantity=0),
    ]
    books.send(ev.invoice_paid(customer, lines, created=ev.ts(at), amount_paid=0))
    # Then the whole month is revoked (the line credits the whole unit amount)
    assert books.balance(customer) == 0


# ---- review regressions on one-off payments -------------------------------------------------------------
def payment_intent(customer: str, metadata: dict[str, str], pi: str = "pi_meta") -> dict[str, Any]:
    obj = {
        "id": pi,
        "object": "payment_intent",
        "customer": customer,
        "amount": 1000,
        "amount_received": 1000,
        "currency": "eur",
        "status": "succeeded",
        "latest_charge": f"ch_{pi}",
        "metadata": metadata,
    }
    return ev.event("payment_intent.succeeded", obj, created=ev.ts(T0))


@pytest.mark.parametrize(
    "metadata",
    [
        {"credits": "-100"},
        {"credits": "lots"},
        {"credits": "100", "credits_valid_days": "0"},
        {"credits": "100", "credits_valid_days": "36501"},
        {"credits": "100", "credits_valid_days": "99999999999"},
        {"credits": "100", "credits_priority": "-1"},
        {"credits": "100", "credits_priority": "1000001"},
        {"credits": "100", "credits_priority": "high"},
    ],
)
def test_metadata_out_of_range_fails_the_event_and_later_refunds_still_work(
    books: Books, customer: str, metadata: dict[str, str]
) -> None:
    # Given a payment whose merchant metadata is out of range / Then failed with the reason, kept for replay
    event = payment_intent(customer, metadata)
    assert books.send(event, expected="failed").reason
    assert books.failed(event["id"]) and books.balance(customer) == 0
    # and a refund of that payment is processed (no 5xx loop blocks it)
    books.send(ev.charge_refunded("pi_meta", 1000, 500, created=ev.ts(T0) + 60))


def test_metadata_at_the_range_limits_is_accepted(books: Books, customer: str) -> None:
    books.send(
        payment_intent(
            customer, {"credits": "100", "credits_valid_days": "36500", "credits_priority": "1000000"}
        )
    )
    [grant] = books.grants(customer)
    assert grant.priority == 1_000_000 and grant.expires_at == T0 + timedelta(days=36500)


# What pays an invoice and names it: a payment-mode Checkout with invoice creation, or (API versions before
# 2025-03-31) a PaymentIntent; each carries the pack in its metadata.
PAYERS = {
    "checkout": (
        "checkout.session.completed",
        {
            "id": "cs_inv",
            "object": "checkout.session",
            "mode": "payment",
            "payment_status": "paid",
            "payment_intent": "pi_cs_inv",
            "amount_subtotal": 1900,
            "amount_total": 1900,
        },
    ),
    "payment intent": (
        "payment_intent.succeeded",
        {
            "id": "pi_old_api",
            "object": "payment_intent",
            "status": "succeeded",
            "amount": 1900,
            "amount_received": 1900,
        },
    ),
}


@pytest.mark.parametrize("payer_first", [True, False])
@pytest.mark.parametrize("payer", sorted(PAYERS))
def test_a_payment_that_names_its_invoice_is_one_payment_with_it(
    books: Books, customer: str, payer: str, payer_first: bool
) -> None:
    # Given the payer's event naming the invoice, and that invoice's invoice.paid (which names no payment
    # intent) with the pack's line
    event_type, fields = PAYERS[payer]
    obj = {**fields, "customer": customer, "invoice": "in_paid", "currency": "eur"}
    paying = ev.event(event_type, {**obj, "metadata": {"credits_pack": "starter"}}, created=ev.ts(T0))
    line = {**ev.plan_line("price_starter", T0, T0, 1900), "price": "price_starter", "parent": None}
    invoice = ev.invoice_paid(
        customer, [line], created=ev.ts(T0) + 5, invoice_id="in_paid", billing_reason="manual"
    )
    for event in (paying, invoice) if payer_first else (invoice, paying):
        books.send(event)
    # Then the pack is granted once
    assert [g.amount for g in books.grants(customer)] == [D(1000)]


# ---- plan rollover -----------------------------------------------------------------------------------------
def test_a_plan_month_rolls_over_by_the_plans_rules_and_the_rollover_does_not_roll_again(
    books: Books, customer: str
) -> None:
    from credits_ledger.jobs.expiry import ExpiryJob

    books.send(cycle(customer))
    [month] = books.grants(customer)
    job = ExpiryJob(books.ledger, None, None, books.pricing, reservations=None)  # type: ignore[arg-type]
    # When the month ends unspent: 50 % of 5,000 capped at 2,000, valid one calendar month from its end
    outcome = books.ledger.expire_with_rollover(month.grant_id, FEB, job._policy)
    assert outcome is not None and outcome.entry.metadata["rolled_over"] == "2000"
    rolled = [g for g in books.grants(customer) if g.source.type == "rollover"]
    assert [(g.amount, g.effective_at, g.expires_at) for g in rolled] == [(D(2000), FEB, MAR)]
    # and the rollover grant expires without rolling again
    again = books.ledger.expire_with_rollover(rolled[0].grant_id, MAR, job._policy)
    assert again is not None and "rolled_over" not in again.entry.metadata
    assert books.balance(customer) == 0


@pytest.mark.parametrize(
    "late", [False, True], ids=["delivered in time", "delivered after the month rolled over"]
)
def test_an_immediate_cancellation_leaves_nothing_of_the_month_whenever_it_is_delivered(
    books: Books, customer: str, late: bool
) -> None:
    from credits_ledger.jobs.expiry import ExpiryJob

    # Given a Team month (on_cancel immediately; 50 % of what is left rolls over), cancelled half way
    books.send(cycle(customer, price="price_team_month"))
    [month] = books.grants(customer)
    cancel = deleted(customer, MID, price="price_team_month")
    if not late:
        books.send(cancel)
    # When the month ends (unspent, 2,500 would roll over), before or after the cancellation is delivered
    job = ExpiryJob(books.ledger, None, None, books.pricing, reservations=None)  # type: ignore[arg-type]
    books.clock.set(FEB)
    books.ledger.expire_with_rollover(month.grant_id, FEB, job._policy)
    if late:
        books.send(cancel)
    # Then nothing of the month is left either way: in time the month is voided and never rolls over; late,
    # the cancellation voids the rollover grant the month's credits went to
    rolled = [g.status for g in books.grants(customer) if g.source.type == "rollover"]
    assert rolled == ([GrantStatus.VOIDED] if late else [])
    assert books.balance(customer) == 0
    # and a redelivery of the cancellation changes nothing
    books.send(cancel, expected="duplicate")
    assert books.balance(customer) == 0


def test_a_late_immediate_cancellation_voids_the_rollover_of_a_month_kept_live_by_a_reservation(
    books: Books, customer: str
) -> None:
    from credits_ledger.jobs.expiry import ExpiryJob
    from credits_ledger.reservations import Reservations, ReserveRequest

    # Given a Team month (on_cancel immediately; 50 % rolls over), 1,000 of it reserved over the month's end
    books.send(cycle(customer, price="price_team_month"))
    [month] = books.grants(customer)
    books.clock.set(FEB - timedelta(hours=1))
    Reservations.over(books.ledger.repository, books.clock).reserve(
        ReserveRequest("rsv_1", customer, D(1000), expires_in=7200)
    )
    # When the month ends (4,000 free: 2,000 roll over; the 1,000 reserved keep the month live), and the
    # cancellation of mid-January is delivered after that
    job = ExpiryJob(books.ledger, None, None, books.pricing, reservations=None)  # type: ignore[arg-type]
    books.clock.set(FEB)
    books.ledger.expire_with_rollover(month.grant_id, FEB, job._policy)
    [rolled] = [g for g in books.grants(customer) if g.source.type == "rollover"]
    assert rolled.remaining == 2000
    books.send(deleted(customer, MID, price="price_team_month"))
    # Then nothing of the month is left: the month and its rollover grant are voided
    assert books.ledger.grant_view(month.grant_id).status is GrantStatus.VOIDED
    assert books.ledger.grant_view(rolled.grant_id).status is GrantStatus.VOIDED


def test_a_period_note_that_loses_a_race_is_decided_again(
    books: Books, customer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credits_ledger.dal.payments import PaymentChanged, PaymentRepository
    from credits_ledger.jobs.expiry import ExpiryJob

    # Given a Team month that expired and rolled over before its cancellation is delivered, and the first
    # write of the period record alone failing its condition (another delivery acted on the period meanwhile)
    books.send(cycle(customer, price="price_team_month"))
    [month] = books.grants(customer)
    job = ExpiryJob(books.ledger, None, None, books.pricing, reservations=None)  # type: ignore[arg-type]
    books.clock.set(FEB)
    books.ledger.expire_with_rollover(month.grant_id, FEB, job._policy)
    write = PaymentRepository.transact
    lost: list[bool] = []

    def loses_the_first_race(repository: PaymentRepository, actions: list[Any]) -> None:
        if not lost:
            lost.append(True)
            raise PaymentChanged(0)
        write(repository, actions)

    monkeypatch.setattr(PaymentRepository, "transact", loses_the_first_race)
    # When the cancellation is delivered
    books.send(deleted(customer, MID, price="price_team_month"))
    # Then the period was read again and the cancellation finished: the rollover grant is voided, once
    assert lost == [True]
    assert [g.status for g in books.grants(customer) if g.source.type == "rollover"] == [GrantStatus.VOIDED]
    assert books.balance(customer) == 0
