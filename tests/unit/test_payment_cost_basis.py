"""A payment announced twice (a bare PaymentIntent, then its Checkout Session): the grants keep the credits
of the first announcement, and the cost basis of the more precise one, whatever the order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from credits_ledger.domain.payments import (
    CostBasisAction,
    GrantAction,
    GrantLine,
    PaymentRecord,
    Purchase,
    applied,
    merge,
    next_action,
)

PAID_AT = datetime(2026, 11, 1, tzinfo=UTC)


def purchase(source_type: str, cost: int, credits: str = "1000") -> Purchase:
    line = GrantLine("line", Decimal(credits), cost_amount=cost, currency="eur")
    return Purchase("cus_A", (line,), PAID_AT, source_type, f"{source_type}_1", charged=2400)


INTENT = purchase("stripe_payment_intent", 2400)  # total, tax included
SESSION = purchase("stripe_checkout_session", 2000)  # amount_subtotal, before tax


def converge(record: PaymentRecord) -> tuple[PaymentRecord, list[object]]:
    """Apply next_action until none is left, as the webhook processor does (grants get fixed ids)."""
    done: list[object] = []
    while (action := next_action([record])) is not None:
        done.append(action)
        record = applied(record, action, "gr_1" if isinstance(action, GrantAction) else None)
    return record, done


def test_session_first_grants_its_cost_and_the_intent_changes_nothing() -> None:
    record, _ = converge(merge(PaymentRecord("pi_1"), SESSION))
    record, actions = converge(merge(record, INTENT))
    assert actions == []
    assert record.purchase is not None and record.purchase.lines[0].cost_amount == 2000


def test_intent_first_then_session_corrects_the_cost_basis_once() -> None:
    # Given credits granted from the bare PaymentIntent (cost incl. tax)
    record, actions = converge(merge(PaymentRecord("pi_1"), INTENT))
    assert [type(a) for a in actions] == [GrantAction]
    # When the Checkout Session arrives (and again, duplicated)
    record, actions = converge(merge(record, SESSION))
    record, again = converge(merge(record, SESSION))
    # Then one cost correction to the amount before tax, the grant itself unchanged, and nothing on replay
    assert len(actions) == 1 and isinstance(actions[0], CostBasisAction)
    assert actions[0].costs == (("gr_1", 2000, "eur"),)
    assert again == []
    assert record.purchase is not None
    assert (record.purchase.lines[0].credits, record.purchase.lines[0].cost_amount) == (Decimal(1000), 2000)
    assert record.granted == {"line": "gr_1"}


def test_a_different_purchase_does_not_rewrite_granted_credits() -> None:
    record, _ = converge(merge(PaymentRecord("pi_1"), INTENT))
    other = replace(SESSION, lines=(replace(SESSION.lines[0], credits=Decimal(5000)),))
    record, actions = converge(merge(record, other))
    assert actions == []
    assert record.purchase is not None and record.purchase.lines[0].cost_amount == 2400
