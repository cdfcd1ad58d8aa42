"""Issue 4, "any order": the events of one purchase (grant, partial refund, second partial refund, dispute
opened, dispute closed won or lost), delivered in every order hypothesis picks, with random duplicates,
always end in the same money state.

The money state is the ledger balance, each grant's remaining / status / held, and the bookkeeping identity
(sum of the ledger amounts == balance). It is compared with the state the facts alone determine: per grant,
``credits - revoke_target(refunded share)`` (the domain's own floor-to-6-digits rule: this test is about
order, tests/property/test_stripe_stream.py checks the arithmetic independently), voided when the dispute is
lost, held while it is open.

Each example gets fresh customer / payment / event ids, so the examples share one table (DynamoDB Local when
Java is there, else moto with fewer examples: moto copies the whole table on every transaction).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits_dev import stripe_events as se
from credits_ledger.domain.models import GrantStatus
from credits_ledger.domain.payments import revoke_target
from credits_ledger.ledger import Ledger
from tests.support.ledger import all_entries, all_grants, assert_books_balance
from tests.support.webhook import WebhookBackend, deliver, webhook_backend

D = Decimal
SECRET = "whsec_test_permutations_5b1f0c7e9a2d"
PRICING_FILE = Path(__file__).resolve().parents[2] / "config" / "pricing.toml"

# what a purchase buys: (pack, credits metadata) -> the lines it grants {line id: credits}
PURCHASES = {
    "starter": ("starter", None, {"session": D(1000)}),
    "enterprise": ("enterprise", None, {"session": D(100_000), "session:bonus": D(20_000)}),
    "odd credits": (None, "1234.567891", {"session": D("1234.567891")}),
}


@dataclass(frozen=True)
class Purchase:
    kind: str
    amount: int  # the charge, tax included (what refunds are a share of)
    first_refund: int
    second_refund: int  # cumulative, >= first_refund
    outcome: str  # how the dispute closed: won | lost


@st.composite
def purchases(draw: st.DrawFn) -> Purchase:
    amount = draw(st.integers(min_value=100, max_value=2_000_000))
    first = draw(st.integers(min_value=1, max_value=amount - 1))
    second = draw(st.integers(min_value=first, max_value=amount))
    return Purchase(
        kind=draw(st.sampled_from(sorted(PURCHASES))),
        amount=amount,
        first_refund=first,
        second_refund=second,
        outcome=draw(st.sampled_from(["won", "lost"])),
    )


@st.composite
def deliveries(draw: st.DrawFn, count: int = 5) -> list[int]:
    """A permutation of ``range(count)`` with up to 4 duplicates inserted anywhere."""
    order: list[int] = draw(st.permutations(range(count)))
    for duplicate in draw(st.lists(st.integers(0, count - 1), max_size=4)):
        order.insert(draw(st.integers(0, len(order))), duplicate)
    return order


def purchase_events(purchase: Purchase) -> tuple[str, list[dict[str, Any]]]:
    customer = se.new_id.customer()
    pack, credits, _ = PURCHASES[purchase.kind]
    subtotal = purchase.amount * 100 // 119  # what the 19 % VAT was added to
    session = se.checkout_session_completed(
        customer, pack, credits, amount_subtotal=subtotal, amount_tax=purchase.amount - subtotal,
        event_created=se.now() - 60,
    )  # fmt: skip
    pi = session["data"]["object"]["payment_intent"]
    dispute_id = se.new_id("dp")
    events = [
        session,
        se.charge_refunded(pi, purchase.amount, purchase.first_refund),
        se.charge_refunded(pi, purchase.amount, purchase.second_refund),
        se.dispute_created(pi, amount=purchase.amount, dispute_id=dispute_id),
        se.dispute_closed(pi, purchase.outcome, amount=purchase.amount, dispute_id=dispute_id),
    ]
    return customer, events


def expected_state(purchase: Purchase) -> dict[str, tuple[Decimal, GrantStatus, bool]]:
    """{line: (remaining, status, held)} from the final facts."""
    share = min(Fraction(1), Fraction(purchase.second_refund, purchase.amount))
    result = {}
    for line, credits in PURCHASES[purchase.kind][2].items():
        left = credits - revoke_target(share, credits)
        if purchase.outcome == "lost" or left == 0:
            result[line] = (D(0), GrantStatus.VOIDED, False)
        else:
            result[line] = (left, GrantStatus.ACTIVE, False)
    return result


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookBackend]:
    """DynamoDB Local when Java is there (40 examples), else moto (slow: 12 examples)."""
    with webhook_backend(request, monkeypatch, SECRET, PRICING_FILE, (40, 12)) as backend:
        yield backend


def money_state(ledger: Ledger, customer: str) -> dict[str, tuple[Decimal, GrantStatus, bool]]:
    state = ledger.repository.state(customer, consistent=True, all_grants=True)
    result = {}
    for grant in all_grants(ledger, customer):
        live = state.grants.get(grant.grant_id)
        result[grant.metadata["line"]] = (grant.remaining, grant.status, bool(live and live.held))
    return result


@pytest.mark.slow
def test_every_order_with_duplicates_ends_in_the_same_money_state(backend: WebhookBackend) -> None:
    ledger = backend.ledger

    @settings(
        max_examples=backend.examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,  # examples depend on the backend's size; keep no cross-run state
    )
    @given(purchase=purchases(), order=deliveries(), via_handler=st.booleans())
    def every_order(purchase: Purchase, order: list[int], via_handler: bool) -> None:
        customer, events = purchase_events(purchase)  # fresh ids: examples share the table
        for index in order:
            if via_handler:  # signed, through the Lambda handler
                status, reply = deliver(events[index], SECRET)
                assert status == 200 and reply["status"] in {"processed", "duplicate"}, reply
            else:
                assert backend.processor.process(events[index]).status in {"processed", "duplicate"}

        expected = expected_state(purchase)
        assert money_state(ledger, customer) == expected
        balance = assert_books_balance(ledger, customer)  # sum of ledger amounts == balance == live
        assert balance == sum(remaining for remaining, _, _ in expected.values())
        assert ledger.balance(customer).held == 0
        grant_entries = [e for e in all_entries(ledger, customer) if e.type.value == "grant"]
        assert len(grant_entries) == len(expected)  # granted exactly once per line

    every_order()
