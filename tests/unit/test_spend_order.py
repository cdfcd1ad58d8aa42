"""Spend order (contract section 1): only grants active at that instant; lowest priority first, then earliest
expires_at (never-expiring last), then promotional before paid, then oldest effective_at, then grant id.
Allocation is all or nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import Allocation, Category, GrantsNotLoaded, LiveGrant
from credits_ledger.domain.spend import MoreGrantsNeeded, allocate, available_at, order_key, spend_order

NOW = datetime(2030, 6, 1, 12, tzinfo=UTC)
PAST = NOW - timedelta(days=30)
PAID, PROMO = Category.PAID, Category.PROMOTIONAL


def g(
    grant_id: str,
    remaining: str = "10",
    *,
    category: Category = PAID,
    priority: int = 50,
    effective_at: datetime = PAST,
    expires_at: datetime | None = None,
    held: bool = False,
) -> LiveGrant:
    return LiveGrant(grant_id, Decimal(remaining), category, priority, effective_at, expires_at, held)


def ids(grants: list[LiveGrant]) -> list[str]:
    return [x.grant_id for x in grants]


def days(n: float) -> datetime:
    return NOW + timedelta(days=n)


# ---- each tie-break on its own -----------------------------------------------------------------------------
def test_lowest_priority_is_spent_first_whatever_the_other_keys() -> None:
    # Given a priority-10 paid never-expiring grant and a priority-50 promotional grant expiring tomorrow
    grants = [g("a", category=PROMO, priority=50, expires_at=days(1)), g("b", priority=10)]
    # When ordered / Then priority wins over expiry and category
    assert ids(spend_order(grants, NOW)) == ["b", "a"]


def test_earliest_expiry_first_and_never_expiring_last() -> None:
    grants = [g("never"), g("late", expires_at=days(10)), g("soon", expires_at=days(1))]
    assert ids(spend_order(grants, NOW)) == ["soon", "late", "never"]


def test_never_expiring_is_last_even_against_far_future_expiry() -> None:
    grants = [
        g("never", category=PROMO, effective_at=PAST - timedelta(days=300)),
        g("far", expires_at=days(36500)),
    ]
    assert ids(spend_order(grants, NOW)) == ["far", "never"]


def test_promotional_before_paid_at_same_priority_and_expiry() -> None:
    grants = [
        g("paid", expires_at=days(5), effective_at=PAST - timedelta(days=9)),
        g("promo", category=PROMO, expires_at=days(5)),
    ]
    assert ids(spend_order(grants, NOW)) == ["promo", "paid"]


def test_promotional_before_paid_when_both_never_expire() -> None:
    grants = [g("paid", effective_at=PAST - timedelta(days=9)), g("promo", category=PROMO)]
    assert ids(spend_order(grants, NOW)) == ["promo", "paid"]


def test_oldest_effective_at_first_when_all_else_ties() -> None:
    grants = [g("newer", effective_at=PAST + timedelta(days=1)), g("older", effective_at=PAST)]
    assert ids(spend_order(grants, NOW)) == ["older", "newer"]


def test_grant_id_breaks_the_last_tie() -> None:
    grants = [g("gr_c"), g("gr_a"), g("gr_b")]
    assert ids(spend_order(grants, NOW)) == ["gr_a", "gr_b", "gr_c"]


def test_full_order_over_every_key() -> None:
    # Given grants that differ in each key of the order
    grants = [
        g("p60", priority=60, category=PROMO, expires_at=days(1)),
        g("p50-never-promo", category=PROMO),
        g("p50-x2-paid-old", expires_at=days(2), effective_at=PAST - timedelta(days=5)),
        g("p50-x2-paid-new-b", expires_at=days(2)),
        g("p50-x2-paid-new-a", expires_at=days(2)),
        g("p50-x2-promo", category=PROMO, expires_at=days(2), effective_at=PAST + timedelta(days=3)),
        g("p50-x1-paid", expires_at=days(1)),
        g("p0-never-paid", priority=0),
    ]
    # Then the order is exactly the contract's
    assert ids(spend_order(grants, NOW)) == [
        "p0-never-paid",
        "p50-x1-paid",
        "p50-x2-promo",
        "p50-x2-paid-old",
        "p50-x2-paid-new-a",
        "p50-x2-paid-new-b",
        "p50-never-promo",
        "p60",
    ]


# ---- what is never spent -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "unspendable",
    [
        g("expired", expires_at=NOW - timedelta(seconds=1)),
        g("expires-now", expires_at=NOW),  # expires_at <= now: already expired
        g("held", held=True),
        g("pending", effective_at=NOW + timedelta(microseconds=1)),
        g("empty", remaining="0"),
    ],
    ids=lambda x: x.grant_id,
)
def test_expired_held_pending_and_empty_grants_are_never_spent(unspendable: LiveGrant) -> None:
    # Given an unspendable grant that would otherwise come first (priority 0) and a spendable one
    first = LiveGrant(
        unspendable.grant_id,
        unspendable.remaining,
        PAID,
        0,
        unspendable.effective_at,
        unspendable.expires_at,
        unspendable.held,
    )
    grants = [first, g("ok", remaining="5")]
    # When ordered / allocated
    # Then only the spendable grant is used, and a debit beyond it is refused
    assert ids(spend_order(grants, NOW)) == ["ok"]
    assert allocate("acct", grants, Decimal("5"), NOW) == [Allocation("ok", Decimal("5"))]
    with pytest.raises(InsufficientCredits):
        allocate("acct", grants, Decimal("5.000001"), NOW)


def test_grant_becoming_effective_exactly_now_is_spendable() -> None:
    assert ids(spend_order([g("x", effective_at=NOW)], NOW)) == ["x"]


def test_available_counts_only_spendable_grants() -> None:
    grants = [
        g("a", "10"),
        g("h", "100", held=True),
        g("p", "7", effective_at=days(1)),
        g("x", "3", expires_at=NOW),
        g("b", "0.5", category=PROMO),
    ]
    assert available_at(grants, NOW) == Decimal("10.5")


# ---- allocate ----------------------------------------------------------------------------------------------
def test_allocate_spans_grants_in_order_taking_part_of_the_last() -> None:
    # Given three grants in a known order
    grants = [
        g("c", "30"),
        g("a", "10", expires_at=days(1)),
        g("b", "20", category=PROMO, expires_at=days(2)),
    ]
    # When 25.5 is allocated
    allocations = allocate("acct", grants, Decimal("25.5"), NOW)
    # Then the first two are emptied and the third is touched only for the rest, in spend order
    assert allocations == [Allocation("a", Decimal("10")), Allocation("b", Decimal("15.5"))]


def test_allocate_exactly_everything() -> None:
    grants = [g("a", "10"), g("b", "0.000001", category=PROMO)]
    allocations = allocate("acct", grants, Decimal("10.000001"), NOW)
    assert allocations == [Allocation("b", Decimal("0.000001")), Allocation("a", Decimal("10"))]


def test_allocate_stops_at_the_first_grant_that_covers_the_amount() -> None:
    allocations = allocate("acct", [g("a", "10"), g("b", "10")], Decimal("10"), NOW)
    assert allocations == [Allocation("a", Decimal("10"))]


def test_allocate_is_all_or_nothing() -> None:
    # Given 12 spendable credits (and 100 held ones)
    grants = [g("a", "10"), g("b", "2"), g("h", "100", held=True)]
    # When 12.5 is asked for
    with pytest.raises(InsufficientCredits) as caught:
        allocate("acct", grants, Decimal("12.5"), NOW)
    # Then nothing is allocated and the error says what was asked and what is available
    assert caught.value.account_id == "acct"
    assert caught.value.requested == Decimal("12.5")
    assert caught.value.available == Decimal("12")


def test_allocate_on_no_grants_raises_with_zero_available() -> None:
    with pytest.raises(InsufficientCredits) as caught:
        allocate("acct", [], Decimal("1"), NOW)
    assert caught.value.available == 0


# ---- property: allocate against an independent reference ---------------------------------------------------
_EXPIRIES = [None, days(-1), days(0), days(1), days(2), days(30)]
_EFFECTIVE = [PAST, NOW - timedelta(hours=1), NOW, days(1)]


@st.composite
def live_grants(draw: st.DrawFn) -> list[LiveGrant]:
    count = draw(st.integers(min_value=0, max_value=8))
    grants = []
    for index in range(count):
        grants.append(
            LiveGrant(
                grant_id=f"g{draw(st.integers(0, 99)):02d}-{index}",
                remaining=draw(st.decimals(min_value="0.000001", max_value="1000", places=6)),
                category=draw(st.sampled_from([PAID, PROMO])),
                priority=draw(st.sampled_from([0, 10, 50, 50, 50, 100])),
                effective_at=draw(st.sampled_from(_EFFECTIVE)),
                expires_at=draw(st.sampled_from(_EXPIRIES)),
                held=draw(st.booleans()) and draw(st.booleans()),
            )
        )
    return grants


def _reference_order(grants: list[LiveGrant], now: datetime) -> list[LiveGrant]:
    """The contract's spend order, written independently of credits_ledger.domain.spend."""
    usable = [
        x
        for x in grants
        if not x.held
        and x.effective_at <= now
        and (x.expires_at is None or x.expires_at > now)
        and x.remaining > 0
    ]
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(
        usable,
        key=lambda x: (
            x.priority,
            x.expires_at is None,
            x.expires_at or far,
            0 if x.category == Category.PROMOTIONAL else 1,
            x.effective_at,
            x.grant_id,
        ),
    )


@given(grants=live_grants(), amount=st.decimals(min_value="0.000001", max_value="3000", places=6))
def test_allocate_property_against_reference(grants: list[LiveGrant], amount: Decimal) -> None:
    # Given random live grants (some expired, held or pending) and a random amount
    expected_order = _reference_order(grants, NOW)
    available = sum((x.remaining for x in expected_order), Decimal(0))
    by_id = {x.grant_id: x for x in grants}
    # When the amount is allocated
    if amount > available:
        # Then it raises when amount > available, saying how much is available
        with pytest.raises(InsufficientCredits) as caught:
            allocate("acct", grants, amount, NOW)
        assert caught.value.available == available
        return
    allocations = allocate("acct", grants, amount, NOW)
    # Then it sums exactly to the amount
    assert sum((a.amount for a in allocations), Decimal(0)) == amount
    # ...never takes more than a grant's remaining, nor zero, nor a grant twice
    assert len({a.grant_id for a in allocations}) == len(allocations)
    for allocation in allocations:
        assert 0 < allocation.amount <= by_id[allocation.grant_id].remaining
    # ...follows spend order: it is a prefix of the reference order, every grant but the last emptied
    assert [a.grant_id for a in allocations] == [x.grant_id for x in expected_order[: len(allocations)]]
    for allocation in allocations[:-1]:
        assert allocation.amount == by_id[allocation.grant_id].remaining


# ---- grants stored apart from the account item: their sort key, and deciding on part of them --------------
_ANY_INSTANT = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@st.composite
def any_grants(draw: st.DrawFn) -> list[LiveGrant]:
    """Grants over the whole range of what a grant may hold: any instant, priority and id."""
    ids_ = draw(
        st.lists(st.text("#-_:.aAzZ09~", min_size=1, max_size=6), min_size=0, max_size=12, unique=True)
    )
    return [
        LiveGrant(
            grant_id=grant_id,
            remaining=Decimal(1),
            category=draw(st.sampled_from([PAID, PROMO])),
            priority=draw(st.sampled_from([0, 1, 9, 10, 50, 999_999, 1_000_000])),
            effective_at=draw(_ANY_INSTANT),
            expires_at=draw(st.none() | _ANY_INSTANT),
        )
        for grant_id in ids_
    ]


@given(grants=any_grants())
def test_order_key_sorts_grants_in_spend_order(grants: list[LiveGrant]) -> None:
    # Given any grants / When sorted by their stored sort key as text / Then in the contract's spend order
    far = datetime.max.replace(tzinfo=UTC)

    def reference(x: LiveGrant) -> tuple[object, ...]:
        kind = 0 if x.category == Category.PROMOTIONAL else 1
        return (x.priority, x.expires_at is None, x.expires_at or far, kind, x.effective_at, x.grant_id)

    by_text = sorted(grants, key=lambda x: order_key(x).encode("utf-8"))  # DynamoDB compares UTF-8 bytes
    assert ids(by_text) == ids(sorted(grants, key=reference))


def test_order_key_refuses_a_priority_it_cannot_spell_in_order() -> None:
    with pytest.raises(ValueError):
        order_key(g("a", priority=10_000_000_000))


def _apart(grants: list[LiveGrant], spend_from: str) -> GrantsNotLoaded:
    """What a loader says of ``grants`` when it leaves them stored apart."""
    return GrantsNotLoaded(
        count=len(grants),
        paid=sum((x.remaining for x in grants if x.category is PAID), Decimal(0)),
        promotional=sum((x.remaining for x in grants if x.category is PROMO), Decimal(0)),
        spend_from=spend_from,
    )


@given(
    grants=live_grants(),
    amount=st.decimals(min_value="0.000001", max_value="3000", places=6),
    split=st.integers(0, 8),
)
def test_deciding_on_the_grants_before_a_split_agrees_with_deciding_on_all(
    grants: list[LiveGrant], amount: Decimal, split: int
) -> None:
    # Given an account's grants, those from the split on in spend order (all spendable) stored apart
    usable = sorted((x for x in grants if x.is_spendable(NOW) and x.remaining > 0), key=order_key)
    if split >= len(usable):
        return
    spend_from = order_key(usable[split])
    apart = [x for x in usable if order_key(x) >= spend_from]
    loaded = [x for x in grants if x not in apart]
    # When the amount is allocated on the loaded grants and what is said of the rest
    try:
        expected = allocate("acct", grants, amount, NOW)
    except InsufficientCredits as refused:
        # Then a refusal is the same refusal, with the same available
        with pytest.raises(InsufficientCredits) as caught:
            allocate("acct", loaded, amount, NOW, _apart(apart, spend_from))
        assert caught.value.available == refused.available
        return
    # Then it is the same allocation, or MoreGrantsNeeded exactly when it would reach a grant stored apart
    reaches_apart = any(a.grant_id in {x.grant_id for x in apart} for a in expected)
    if reaches_apart:
        with pytest.raises(MoreGrantsNeeded) as short:
            allocate("acct", loaded, amount, NOW, _apart(apart, spend_from))
        taken_before = sum(
            (a.amount for a in expected if a.grant_id not in {x.grant_id for x in apart}), Decimal(0)
        )
        assert short.value.missing == amount - taken_before
    else:
        assert allocate("acct", loaded, amount, NOW, _apart(apart, spend_from)) == expected


def test_a_grant_sorting_after_the_grants_stored_apart_is_not_spent_before_them() -> None:
    # Given a loaded grant that sorts after the grants stored apart (e.g. read for a void) and 10 apart
    late = g("late", priority=90)
    apart = GrantsNotLoaded(count=1, paid=Decimal(10), spend_from=order_key(g("x", priority=60)))
    # When 5 are debited / Then the loaded grant is not spent first: more grants must be read
    with pytest.raises(MoreGrantsNeeded):
        allocate("acct", [late], Decimal(5), NOW, apart)
    # ...and what is available counts both
    with pytest.raises(InsufficientCredits) as caught:
        allocate("acct", [late], Decimal(21), NOW, apart)
    assert caught.value.available == 20
