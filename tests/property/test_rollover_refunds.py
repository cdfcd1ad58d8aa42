"""No sequence of a purchase's events leaves the customer more credits than the money kept paid for, when its
credits expire and roll over at any point of the sequence.

One purchase is granted, part of it spent, then its refunds (cumulative) and its dispute arrive in order,
with the expiry job running at any point among them, under a rollover policy hypothesis draws (any share, or
none). The bound is computed from the facts alone, without the domain's rules: the credits the customer
still holds, in every live grant (rollovers included), are at most each line's credits times the share of
the charge not refunded (plus the one millionth a floored revocation may leave), none once the dispute is
lost; and the ledger sums to the balance.

Each example gets fresh customer / payment / event ids, so the examples share one table (DynamoDB Local when
Java is there, else moto with fewer examples).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits_dev import stripe_events as se
from credits_ledger.domain.rollover import RolloverPolicy
from credits_ledger.ledger import DebitRequest, Ledger
from tests.support.ledger import all_grants, assert_books_balance
from tests.support.webhook import WebhookBackend, webhook_backend

D = Decimal
SECRET = "whsec_test_rollover_refunds_2c9e41"
PRICING_FILE = Path(__file__).resolve().parents[2] / "config" / "pricing.toml"
MICRO = D("0.000001")

# what a purchase buys: (pack, credits metadata) -> the credits of each line it grants
PURCHASES = {
    "starter": ("starter", None, [D(1000)]),
    "enterprise": ("enterprise", None, [D(100_000), D(20_000)]),
    "odd credits": (None, "1234.567891", [D("1234.567891")]),
}
EXPIRY = "expiry"  # the expiry job's runs, placed among the Stripe events


@dataclass(frozen=True)
class Story:
    kind: str
    amount: int  # the charge, tax included (what refunds are a share of)
    refunds: tuple[int, ...]  # cumulative amounts refunded, in delivery order
    dispute: str | None  # how the dispute closes: won | lost | open; None: no dispute
    spent: Fraction  # share of the credits spent before anything else
    rollover_percent: Decimal | None  # None: the pack does not roll over
    repeat: bool  # a rollover grant rolls over again
    expiry_at: tuple[int, ...]  # positions of the expiry job's runs among the Stripe events (one or two)


@st.composite
def stories(draw: st.DrawFn) -> Story:
    amount = draw(st.integers(min_value=100, max_value=2_000_000))
    refunds = tuple(sorted(draw(st.lists(st.integers(min_value=1, max_value=amount), max_size=2))))
    dispute = draw(st.sampled_from([None, "won", "lost", "open"]))
    events = len(refunds) + (0 if dispute is None else 1 if dispute == "open" else 2)
    return Story(
        kind=draw(st.sampled_from(sorted(PURCHASES))),
        amount=amount,
        refunds=refunds,
        dispute=dispute,
        spent=draw(st.sampled_from([Fraction(0), Fraction(1, 3), Fraction(1, 2), Fraction(1)])),
        rollover_percent=draw(st.sampled_from([None, D(25), D(50), D("33.333333"), D(100)])),
        repeat=draw(st.booleans()),
        expiry_at=tuple(sorted(draw(st.lists(st.integers(0, events), min_size=1, max_size=2)))),
    )


def story_events(story: Story) -> tuple[str, dict[str, Any], list[Any]]:
    """(customer, the purchase's session event, the later steps in order: Stripe events and EXPIRY)."""
    customer = se.new_id.customer()
    pack, credits, _ = PURCHASES[story.kind]
    subtotal = story.amount * 100 // 119  # what the 19 % VAT was added to
    session = se.checkout_session_completed(
        customer, pack, credits, amount_subtotal=subtotal, amount_tax=story.amount - subtotal,
        event_created=se.now() - 60,
    )  # fmt: skip
    pi = session["data"]["object"]["payment_intent"]
    steps: list[Any] = [se.charge_refunded(pi, story.amount, refunded) for refunded in story.refunds]
    if story.dispute is not None:
        dispute_id = se.new_id("dp")
        steps.append(se.dispute_created(pi, amount=story.amount, dispute_id=dispute_id))
        if story.dispute != "open":
            steps.append(se.dispute_closed(pi, story.dispute, amount=story.amount, dispute_id=dispute_id))
    for shift, position in enumerate(story.expiry_at):
        steps.insert(position + shift, EXPIRY)
    return customer, session, steps


def held_at_most(story: Story) -> Decimal:
    """What the customer may still hold of the purchase, from the facts: each line's credits times the share
    not refunded (and what a revocation floored to 6 digits may leave), nothing once the dispute is lost."""
    if story.dispute == "lost":
        return D(0)
    kept = 1 - min(Fraction(1), Fraction(story.refunds[-1] if story.refunds else 0, story.amount))
    return sum((millionths(Fraction(str(c)) * kept) + MICRO for c in PURCHASES[story.kind][2]), D(0))


def millionths(value: Fraction) -> Decimal:
    """``value`` rounded down to 6 digits."""
    return D(math.floor(value * 1_000_000)).scaleb(-6)


def run_expiry(ledger: Ledger, customer: str, policy: RolloverPolicy | None, run: int) -> None:
    """The expiry job's ``run``-th run (0: just after the purchase's grants expired; 1: 91 days later, when
    their rollover grants expired too): every live grant due by then expires and rolls over by ``policy``."""
    grants = all_grants(ledger, customer)
    expiring = [g.expires_at for g in grants if g.expires_at is not None and g.source.type != "rollover"]
    if not expiring:  # credits that never expire (a purchase without a pack)
        return
    at = max(expiring) + timedelta(minutes=1) + timedelta(days=91) * run
    for grant in grants:
        due = grant.expires_at is not None and grant.expires_at < at
        if due and grant.status.value in {"active", "pending", "held"}:
            ledger.expire_with_rollover(grant.grant_id, at, lambda _: policy)


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookBackend]:
    """DynamoDB Local when Java is there (60 examples), else moto (20 examples)."""
    with webhook_backend(request, monkeypatch, SECRET, PRICING_FILE, (60, 20)) as backend:
        yield backend


@pytest.mark.slow
def test_no_rollover_keeps_credits_the_refunds_and_disputes_took_back(backend: WebhookBackend) -> None:
    ledger = backend.ledger

    @settings(
        max_examples=backend.examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,  # examples depend on the backend's size; keep no cross-run state
    )
    @given(story=stories())
    def story_ends_within_the_money(story: Story) -> None:
        customer, session, steps = story_events(story)
        assert backend.processor.process(session).status == "processed"
        total = sum(PURCHASES[story.kind][2], D(0))
        spend = millionths(Fraction(str(total)) * story.spent)
        if spend > 0:
            ledger.debit(customer, DebitRequest(f"use:{customer}", spend, fingerprint="use"))
        policy = None
        if story.rollover_percent is not None:
            policy = RolloverPolicy(valid_days=90, percent=story.rollover_percent, repeat=story.repeat)
        runs = 0
        for step in steps:
            if step == EXPIRY:
                run_expiry(ledger, customer, policy, runs)
                runs += 1
            else:
                assert backend.processor.process(step).status in {"processed", "duplicate"}

        held = sum((g.remaining for g in all_grants(ledger, customer)), D(0))
        assert held <= held_at_most(story), (held, story)
        assert assert_books_balance(ledger, customer) == held  # the ledger sums to the balance and the grants

    story_ends_within_the_money()
