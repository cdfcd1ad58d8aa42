"""Balance parts: available (split by category), held, pending, past-expiry-not-yet-expired; they never overlap
and always add up to the ledger balance. next_expiry is the earliest future expiry and what expires then."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits_ledger.domain import transitions as tr
from credits_ledger.domain.balance import available, balance
from credits_ledger.domain.models import AccountState, Category, ExpiryAt, GrantsNotLoaded, Source
from credits_ledger.domain.transitions import EntryContext, GrantSpec

NOW = datetime(2030, 1, 1, tzinfo=UTC)
D = Decimal
PAID, PROMO = Category.PAID, Category.PROMOTIONAL


def add(
    state: AccountState,
    grant_id: str,
    amount: str,
    *,
    at: datetime = NOW,
    held: bool = False,
    **kwargs: object,
) -> AccountState:
    spec = GrantSpec(grant_id=grant_id, amount=D(amount), source=Source("admin"), **kwargs)  # type: ignore[arg-type]
    change = tr.grant(state, spec, EntryContext(entry_key=f"grant:{grant_id}", now=at))
    state = change.state
    if held:
        state = tr.hold(state, change.new_grants[0], EntryContext(entry_key=f"hold:{grant_id}", now=at)).state
    return state


def days(n: float) -> datetime:
    return NOW + timedelta(days=n)


def test_never_seen_account_reads_as_zero() -> None:
    # Given an account nothing was ever granted to
    result = balance(AccountState(account_id="cus_new"), NOW)
    # Then every part is zero and there is no next expiry
    assert (result.available, result.ledger_balance, result.paid, result.promotional) == (0, 0, 0, 0)
    assert (result.held, result.pending, result.next_expiry_at, result.next_expiry_amount) == (0, 0, None, 0)
    assert result.account_id == "cus_new" and result.as_of == NOW


def test_each_part_of_the_balance() -> None:
    # Given one grant in each situation
    state = AccountState(account_id="acct")
    state = add(state, "paid", "100")
    state = add(state, "promo", "20.5", category=PROMO, expires_at=days(10))
    state = add(state, "held", "7", held=True)
    state = add(state, "pending", "3", effective_at=days(1))
    state = add(state, "past", "11", at=days(-5), effective_at=days(-5), expires_at=days(-1))
    # When the balance is read now
    result = balance(state, NOW)
    # Then each grant counts in exactly its part
    assert result.ledger_balance == D("141.5")
    assert result.paid == D("100")
    assert result.promotional == D("20.5")
    assert result.available == D("120.5")
    assert result.held == D("7")
    assert result.pending == D("3")
    # the past-expiry 11 is in the ledger balance but in no visible part
    assert result.available + result.held + result.pending + D("11") == result.ledger_balance
    assert result.next_expiry_at == days(10) and result.next_expiry_amount == D("20.5")


def test_pending_grant_becomes_available_when_effective() -> None:
    state = add(AccountState(account_id="acct"), "p", "5", effective_at=days(1))
    assert balance(state, days(1) - timedelta(microseconds=1)).pending == D("5")
    later = balance(state, days(1))
    assert (later.pending, later.available, later.paid) == (0, D("5"), D("5"))


def test_grant_leaves_available_at_its_expires_at_even_before_the_job() -> None:
    state = add(AccountState(account_id="acct"), "x", "5", expires_at=days(1))
    assert balance(state, days(1) - timedelta(microseconds=1)).available == D("5")
    at_expiry = balance(state, days(1))
    assert at_expiry.available == 0 and at_expiry.ledger_balance == D("5")
    assert at_expiry.next_expiry_at is None and at_expiry.next_expiry_amount == 0


def test_next_expiry_sums_grants_expiring_at_the_same_instant_and_skips_past_ones() -> None:
    state = AccountState(account_id="acct")
    state = add(state, "gone", "1", at=days(-3), effective_at=days(-3), expires_at=days(-1))
    state = add(state, "a", "2", expires_at=days(3))
    state = add(state, "b", "4.25", category=PROMO, expires_at=days(2))
    state = add(state, "c", "0.75", expires_at=days(2))
    state = add(state, "never", "100")
    result = balance(state, NOW)
    assert result.next_expiry_at == days(2)
    assert result.next_expiry_amount == D("5")


def test_debits_reduce_available_by_category() -> None:
    state = AccountState(account_id="acct")
    state = add(state, "paid", "10")
    state = add(state, "promo", "10", category=PROMO)
    state = tr.debit(state, D("12"), EntryContext(entry_key="use", now=NOW)).state
    result = balance(state, NOW)
    assert (result.promotional, result.paid, result.available, result.ledger_balance) == (
        0,
        D("8"),
        D("8"),
        D("8"),
    )


# ---- property: the parts always add up ---------------------------------------------------------------------
@st.composite
def accounts(draw: st.DrawFn) -> tuple[AccountState, datetime]:
    state = AccountState(account_id="acct")
    for index in range(draw(st.integers(0, 8))):
        effective = days(draw(st.integers(-10, 5)))
        expires = draw(st.one_of(st.none(), st.integers(1, 15)))
        state = add(
            state,
            f"g{index}",
            str(draw(st.decimals(min_value="0.000001", max_value="500", places=6))),
            at=days(-20),
            effective_at=effective,
            expires_at=effective + timedelta(days=expires) if expires is not None else None,
            category=draw(st.sampled_from([PAID, PROMO])),
            held=draw(st.booleans()),
        )
    if state.grants and draw(st.booleans()):
        spent_at = days(draw(st.integers(-10, 5)))
        spendable = [g for g in state.grants.values() if g.is_spendable(spent_at)]
        total = sum((g.remaining for g in spendable), D(0))
        if total > 0:
            amount = draw(st.decimals(min_value="0.000001", max_value=str(total), places=6))
            state = tr.debit(state, amount, EntryContext(entry_key="use", now=spent_at)).state
    return state, days(draw(st.integers(-12, 20)))


@given(accounts())
def test_balance_parts_always_add_up_to_the_ledger_balance(account: tuple[AccountState, datetime]) -> None:
    state, now = account
    result = balance(state, now)
    # The part past expiry but not yet expired by the job, computed here from the raw grants
    past_expiry = sum(
        (g.remaining for g in state.grants.values() if g.expires_at is not None and g.expires_at <= now), D(0)
    )
    assert result.available + result.held + result.pending + past_expiry == result.ledger_balance
    assert result.paid + result.promotional == result.available
    for part in (result.available, result.paid, result.promotional, result.held, result.pending):
        assert part >= 0
    assert result.available <= result.ledger_balance
    # available is exactly what a debit could spend right now
    spendable = sum(
        (
            g.remaining
            for g in state.grants.values()
            if not g.held and g.effective_at <= now and (g.expires_at is None or g.expires_at > now)
        ),
        D(0),
    )
    assert result.available == spendable
    if result.next_expiry_at is not None:
        assert result.next_expiry_at > now
        assert result.next_expiry_amount == sum(
            (g.remaining for g in state.grants.values() if g.expires_at == result.next_expiry_at), D(0)
        )
    else:
        assert all(g.expires_at is None or g.expires_at <= now for g in state.grants.values())


# ---- grants stored apart from the account item ------------------------------------------------------------
def _with_apart(state: AccountState, **apart: object) -> AccountState:
    return replace(state, unloaded=GrantsNotLoaded(**apart))  # type: ignore[arg-type]


def test_grants_stored_apart_count_as_available_by_category() -> None:
    # Given 10 paid in the item and, stored apart, 30 paid and 5 promotional (all active, as promised)
    state = _with_apart(add(AccountState("a"), "g1", "10"), count=3, paid=D(30), promotional=D(5))
    # When the balance is read / Then they are available, split by category
    result = balance(state, NOW)
    assert (result.available, result.paid, result.promotional) == (45, 40, 5)
    assert available(state, NOW) == 45


def test_next_expiry_takes_the_earliest_of_the_item_and_the_grants_stored_apart() -> None:
    item = add(AccountState("a"), "g1", "10", expires_at=days(5))
    # Given grants stored apart expiring earlier / at the same instant / later
    earlier = _with_apart(item, count=1, paid=D(7), next_expiry=ExpiryAt(days(2), D(7)))
    same = _with_apart(item, count=1, paid=D(7), next_expiry=ExpiryAt(days(5), D(7)))
    later = _with_apart(item, count=1, paid=D(7), next_expiry=ExpiryAt(days(9), D(7)))
    # Then the earliest wins, and what expires at one instant adds up
    assert (balance(earlier, NOW).next_expiry_at, balance(earlier, NOW).next_expiry_amount) == (days(2), 7)
    assert (balance(same, NOW).next_expiry_at, balance(same, NOW).next_expiry_amount) == (days(5), 17)
    assert (balance(later, NOW).next_expiry_at, balance(later, NOW).next_expiry_amount) == (days(5), 10)


def test_a_balance_needs_the_next_expiry_of_the_grants_stored_apart() -> None:
    # Given a state loaded for a debit, which did not look at the expiries of the grants stored apart
    state = _with_apart(AccountState("a"), count=1, paid=D(7), expiry_known=False)
    # Then what is available is known, the balance (with its next expiry) is refused rather than wrong
    assert available(state, NOW) == 7
    with pytest.raises(ValueError):
        balance(state, NOW)
