"""Issue 4, "done when": a duplicated, reordered stream of 1,000 random purchase / refund / dispute deliveries
over 20 accounts and 100 payments leaves every account's balance equal to the sum of its ledger and to an
independent calculation done here from the final facts.

Backend: DynamoDB Local (the real engine, ~10x faster than moto for this many transactions) when Java is
available; otherwise moto with a shorter stream (120 deliveries over 12 payments and 6 accounts), because
moto deep-copies the whole table on every TransactWriteItems. Every 25th delivery goes through the signed
Lambda handler, the rest straight to ``StripeWebhookProcessor.process`` (the code the handler calls).
``STRIPE_STREAM_SEED`` replays one stream.
"""

from __future__ import annotations

import os
import random
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Any

import pytest

from credits_dev import stripe_events as se
from credits_ledger.domain.models import EntryType
from credits_ledger.ledger import Ledger
from credits_ledger.webhooks import StripeWebhookProcessor
from tests.support.ledger import all_entries, assert_books_balance
from tests.support.webhook import deliver, webhook_on_fast_tables

SECRET = "whsec_test_stream_7d3e9f01b2c4"
PRICING_FILE = Path(__file__).resolve().parents[2] / "config" / "pricing.toml"
ACCOUNTS = 20
PAYMENTS = 100
HANDLER_EVERY = 25
SEED = int(os.environ.get("STRIPE_STREAM_SEED", "20261123"))

# Charge amounts include ones with prime factors other than 2 and 5 (3000, 7000), so refunded shares like
# 1/3 or 3/7 are not terminating decimals: the service must compute them exactly (floor to 6 decimals once).
AMOUNTS = [1000, 1250, 2000, 2500, 3000, 3200, 4000, 5000, 6400, 7000, 8000, 10_000, 12_500, 20_000, 50_000]


# ---------------------------------------------------------------------------------------------- the packs
def packs() -> dict[str, tuple[Fraction, Fraction, list[str]]]:
    """{pack: (credits, bonus credits, prices)} read straight from the TOML (not the service's parser)."""
    data = tomllib.loads(PRICING_FILE.read_text(encoding="utf-8"))
    return {
        name: (Fraction(spec["credits"]), Fraction(spec.get("bonus_credits", "0")), spec["stripe_prices"])
        for name, spec in data["packs"].items()
    }


# ---------------------------------------------------------------------------------------------- the facts
@dataclass
class Payment:
    """One payment as the test generated it: what it grants and what happened to its money."""

    account: str
    amount: int  # what was charged (refund shares are of this)
    lines: list[Fraction]  # credits of each grant it funds (a bonus is its own line)
    refund_levels: list[int] = field(default_factory=list)  # cumulative amount_refunded values sent
    disputes: dict[str, str] = field(default_factory=dict)  # dispute id -> open | won | lost (final)

    @property
    def share(self) -> Fraction:
        return min(Fraction(1), Fraction(max(self.refund_levels, default=0), self.amount))

    def revoke_target(self, credits: Fraction) -> Fraction:
        """floor to 6 fractional digits of (refunded share x credits): what refunds take back in total."""
        return Fraction(floor(self.share * credits * 10**6), 10**6)

    @property
    def lost(self) -> bool:
        return "lost" in self.disputes.values()

    @property
    def held(self) -> bool:
        return not self.lost and "open" in self.disputes.values()


def expected_books(payments: list[Payment]) -> dict[str, dict[str, Fraction]]:
    """Per account, from the final facts alone:

    - ``balance``: for each funded grant, its credits minus the refunded share (floor6(share x credits)),
      or 0 when a dispute of its payment was lost. Why this holds whatever the order: the service applies
      refunds before dispute effects, so with both a refund and a lost dispute it either revokes the refunded
      share and then voids the rest, or (the loss arrived first) voids everything and then records the refund
      as a zero revoke with a shortfall. Both end at 0 for that grant; no credits are spent in this test, so
      without a loss nothing else can reduce a grant.
    - ``held``: what remains of grants whose payment has an open (never closed) dispute and no lost one;
      ``available`` = balance - held (nothing is pending or expired: effective now, valid 365 days or more).
    - ``requested``: the sum of the revoke entries' ``requested`` metadata = the sum of the final revoke
      targets (each refund asks for the difference from what was already asked, taken or not);
      ``taken_or_voided`` = granted - balance: what revoke and void entries removed between them.
    - ``granted``: the sum of all lines, each granted exactly once however many events announced it.
    """
    books: dict[str, dict[str, Fraction]] = defaultdict(lambda: defaultdict(Fraction))
    for payment in payments:
        account = books[payment.account]
        for credits in payment.lines:
            remaining = Fraction(0) if payment.lost else credits - payment.revoke_target(credits)
            account["granted"] += credits
            account["grants"] += 1
            account["balance"] += remaining
            account["held"] += remaining if payment.held else 0
            account["requested"] += payment.revoke_target(credits)
    for account in books.values():
        account["available"] = account["balance"] - account["held"]
        account["taken_or_voided"] = account["granted"] - account["balance"]
    return books


# ---------------------------------------------------------------------------------------------- the stream
def build_stream(
    rng: random.Random, deliveries: int, payment_count: int = PAYMENTS, account_count: int = ACCOUNTS
) -> tuple[list[dict[str, Any]], list[Payment]]:
    """The deliveries (each distinct event at least once, then redeliveries, shuffled) and the payments."""
    ids = se.Ids(seed=rng.getrandbits(64))
    pack_table = packs()
    accounts = [ids.customer() for _ in range(account_count)]
    now = se.now()
    events: list[dict[str, Any]] = []
    payments: list[Payment] = []

    def created() -> int:
        return now - rng.randint(60, 3_000)

    def new_event(builder: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        ev = builder(*args, ids=ids, event_id=ids("evt"), event_created=created(), **kwargs)
        events.append(ev)
        return ev

    for _ in range(payment_count):
        account = rng.choice(accounts)
        amount = rng.choice(AMOUNTS)
        pi = ids("pi")
        kind = rng.choice(["checkout", "checkout", "checkout_async", "both", "topup", "invoice", "invoice"])
        if kind in ("checkout", "checkout_async", "both"):
            pack = rng.choice(sorted(pack_table))
            credits, bonus, _ = pack_table[pack]
            lines = [credits] + ([bonus] if bonus else [])
            tax = amount // 5 if rng.random() < 0.5 else 0
            session = dict(payment_intent=pi, amount_subtotal=amount - tax, amount_tax=tax)
            if rng.random() < 0.2:  # someone else's Stripe customer pays for this account
                session["metadata"] = {"credits_customer": account}
                stripe_customer = ids.customer()
            else:
                stripe_customer = account
            if kind == "checkout_async":
                new_event(
                    se.checkout_session_completed, stripe_customer, pack, payment_status="unpaid", **session
                )
                new_event(
                    se.checkout_session_completed, stripe_customer, pack,
                    type="checkout.session.async_payment_succeeded", **session,
                )  # fmt: skip
            else:
                new_event(se.checkout_session_completed, stripe_customer, pack, **session)
            if kind == "both":  # the same payment announced again by its PaymentIntent
                new_event(
                    se.payment_intent_succeeded, stripe_customer, amount, pack=pack, payment_intent=pi,
                    metadata=session.get("metadata"),
                )  # fmt: skip
        elif kind == "topup":
            cents = rng.randint(1, 500_000)  # up to 5,000.00 credits, 2 decimals
            lines = [Fraction(cents, 100)]
            new_event(
                se.payment_intent_succeeded, account, amount, credits=f"{cents // 100}.{cents % 100:02d}",
                payment_intent=pi,
            )  # fmt: skip
        else:  # an invoice paid by a PaymentIntent, linked by invoice_payment.paid (API 2025-03-31+)
            names = rng.sample(sorted(pack_table), rng.randint(1, 2))
            # a line priced by metadata on some invoices; a free one (amount 0) grants nothing (contract)
            metadata_credits = rng.randint(1, 99) if rng.random() < 0.3 else None
            metadata_amount = amount // 4 if metadata_credits and rng.random() < 0.5 else 0
            pack_money = amount - metadata_amount  # the lines add up to what the invoice's payment paid
            specs, lines = [], []
            for index, name in enumerate(names):
                credits, bonus, prices = pack_table[name]
                quantity = rng.randint(1, 3)
                half = pack_money // 2 if len(names) == 2 else 0
                line_amount = half if index == 0 and len(names) == 2 else pack_money - half
                specs.append((rng.choice(prices), quantity, line_amount))
                lines += [credits * quantity] + ([bonus * quantity] if bonus else [])
            if metadata_credits:
                metadata_line = {"price": ids("price"), "quantity": 2, "amount": metadata_amount}
                specs.append({**metadata_line, "price_metadata": {"credits": metadata_credits}})
                if metadata_amount > 0:
                    lines.append(Fraction(metadata_credits * 2))
            invoice = new_event(se.invoice_paid, account, specs, link="none")
            new_event(se.invoice_payment_paid, invoice["data"]["object"]["id"], pi, amount)
        payment = Payment(account, amount, lines)
        payments.append(payment)

        # refunds: cumulative levels, sometimes up to the whole amount
        if rng.random() < 0.5:
            levels = sorted(rng.randint(1, amount) for _ in range(rng.randint(1, 3)))
            if rng.random() < 0.25:
                levels.append(amount)  # refunded in full in the end
            for level in levels:
                new_event(se.charge_refunded, pi, amount, level)
            payment.refund_levels = levels
        # disputes: opened, then closed won / lost, or still open
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            dispute_id = ids("dp")
            new_event(se.dispute_created, pi, amount=amount, dispute_id=dispute_id)
            outcome = rng.choice(["won", "lost", "open"])
            if outcome != "open":
                new_event(se.dispute_closed, pi, outcome, amount=amount, dispute_id=dispute_id)
            payment.disputes[dispute_id] = outcome

    # noise that must change nothing: ignored types and an event for an unknown pack (recorded as failed)
    events.append(se.event("customer.created", se.fixture("customer"), ids("evt"), ids=ids))
    events.append(
        se.checkout_session_completed(rng.choice(accounts), "no_such_pack", ids=ids, event_id=ids("evt"))
    )

    stream = list(events)
    while len(stream) < deliveries:
        stream.append(rng.choice(events))  # Stripe redelivers: the very same event (same id)
    rng.shuffle(stream)
    return stream, payments


# ---------------------------------------------------------------------------------------------- backend
@dataclass
class Backend:
    ledger: Ledger
    processor: StripeWebhookProcessor
    deliveries: int
    payments: int
    accounts: int


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    with webhook_on_fast_tables(request, monkeypatch, SECRET, PRICING_FILE) as (ledger, processor, local):
        deliveries, payments, accounts = (1000, PAYMENTS, ACCOUNTS) if local else (120, 12, 6)
        deliveries = int(os.environ.get("STRIPE_STREAM_DELIVERIES", deliveries))
        yield Backend(ledger, processor, deliveries, payments, accounts)


# ---------------------------------------------------------------------------------------------- the test
@pytest.mark.slow
def test_duplicated_reordered_stream_matches_the_independent_books(backend: Backend) -> None:
    rng = random.Random(SEED)
    stream, payments = build_stream(rng, backend.deliveries, backend.payments, backend.accounts)
    assert len(stream) >= backend.deliveries and len({ev["id"] for ev in stream}) < len(stream)
    ledger, processor = backend.ledger, backend.processor
    statuses: dict[str, int] = defaultdict(int)
    for index, ev in enumerate(stream):
        if index % HANDLER_EVERY == 0:
            code, reply = deliver(ev, SECRET)
            assert code == 200, reply
            status = reply["status"]
        else:
            status = processor.process(ev).status
        statuses[status] += 1
    assert statuses["processed"] > 0 and statuses["duplicate"] > 0 and statuses["failed"] > 0, statuses

    expected = expected_books(payments)
    assert len(expected) > 1
    for account, books in expected.items():
        balance = assert_books_balance(ledger, account)  # sum of the ledger amounts == balance, seq, ...
        entries = all_entries(ledger, account)
        by_type: dict[EntryType, Decimal] = defaultdict(Decimal)
        for entry in entries:
            by_type[entry.type] += entry.amount
        requested = sum(
            (Decimal(e.metadata["requested"]) for e in entries if e.type is EntryType.REVOKE), Decimal(0)
        )
        got = ledger.balance(account)
        actual = {
            "balance": balance,
            "held": got.held,
            "available": got.available,
            "granted": by_type[EntryType.GRANT],
            "grants": sum(1 for e in entries if e.type is EntryType.GRANT),
            "requested": requested,
            "taken_or_voided": -(by_type[EntryType.REVOKE] + by_type[EntryType.VOID]),
        }
        want = {key: books[key] for key in actual}
        assert {k: Fraction(v) for k, v in actual.items()} == want, account
        assert got.pending == 0 and by_type[EntryType.DEBIT] == 0
