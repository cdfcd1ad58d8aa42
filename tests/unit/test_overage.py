"""Overage in the debit transition (pure): what is taken, what is recorded, the monthly limit, and a property
over random debits: never below zero, the ledger sums to the balance, the month's overage never passes the
limit and equals the overage recorded on that month's entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits_ledger.domain import transitions as tr
from credits_ledger.domain.balance import balance
from credits_ledger.domain.errors import InsufficientCredits
from credits_ledger.domain.models import AccountState, Source
from credits_ledger.domain.overage import (
    OverageLimitReached,
    OveragePolicy,
    OverageSettings,
    meter_time,
    month_of,
    used_in,
)
from credits_ledger.domain.transitions import EntryContext, GrantSpec

NOW = datetime(2030, 1, 31, 23, 0, tzinfo=UTC)
D = Decimal
ALLOW = OverageSettings(OveragePolicy.ALLOW)


def funded(amount: str) -> AccountState:
    spec = GrantSpec(grant_id="g1", amount=D(amount), source=Source("admin"))
    return tr.grant(AccountState("acct"), spec, EntryContext("grant:g1", NOW)).state


def debit(state: AccountState, amount: str, key: str, settings: OverageSettings | None, now: datetime = NOW):
    return tr.debit(state, D(amount), EntryContext(key, now), overage=settings)


def test_without_a_policy_or_with_reject_nothing_changes() -> None:
    state = funded("10")
    for settings in (None, OverageSettings()):
        with pytest.raises(InsufficientCredits) as raised:
            debit(state, "15", "u1", settings)
        assert not isinstance(raised.value, OverageLimitReached)


def test_allow_takes_all_available_and_records_the_rest() -> None:
    change = debit(funded("10"), "15", "u1", ALLOW)
    [entry] = change.entries
    assert (entry.amount, entry.balance_after, entry.metadata["overage"]) == (D(-10), D(0), "5")
    assert sum(a.amount for a in entry.allocations) == D(10)
    assert change.state.ledger_balance == 0 and change.state.overage_used == D(5)
    assert change.state.overage_month == "2030-01"
    assert [c.grant_id for c in change.closed_grants] == ["g1"]  # the spent grant is closed as usual


def test_a_covered_debit_records_no_overage() -> None:
    change = debit(funded("10"), "4", "u1", ALLOW)
    assert "overage" not in change.entries[0].metadata
    assert change.state.overage_month is None


def test_the_limit_counts_per_utc_month_and_allows_the_limit_itself() -> None:
    limited = OverageSettings(OveragePolicy.ALLOW, limit=D(10))
    state = debit(AccountState("acct"), "6", "u1", limited).state
    state = debit(state, "4", "u2", limited).state
    assert used_in(state, "2030-01") == D(10)
    with pytest.raises(OverageLimitReached) as raised:
        debit(state, "0.000001", "u3", limited)
    assert (raised.value.limit, raised.value.used) == (D(10), D(10))
    # an hour later it is February (UTC): the month starts again
    february = debit(state, "7", "u4", limited, now=NOW + timedelta(hours=1)).state
    assert (february.overage_month, february.overage_used) == ("2030-02", D(7))


def test_month_is_utc() -> None:
    from datetime import timezone

    paris_morning = datetime(2030, 2, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert month_of(paris_morning.astimezone(UTC)) == "2030-01"


@given(
    grants=st.lists(st.integers(min_value=1, max_value=50), max_size=4),
    debits=st.lists(
        st.tuples(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=20)), max_size=25
    ),
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=100)),
)
def test_random_debits_with_overage_keep_every_invariant(
    grants: list[int], debits: list[tuple[int, int]], limit: int | None
) -> None:
    settings = OverageSettings(OveragePolicy.ALLOW, D(limit) if limit is not None else None)
    state = AccountState("acct")
    entries = []
    for index, amount in enumerate(grants):
        spec = GrantSpec(grant_id=f"g{index}", amount=D(amount), source=Source("admin"))
        change = tr.grant(state, spec, EntryContext(f"grant:{index}", NOW))
        state, entries = change.state, entries + list(change.entries)
    now = NOW
    for index, (amount, hours) in enumerate(debits):
        now += timedelta(minutes=hours)  # the clock moves on; some debits fall in February
        before = balance(state, now).available
        try:
            change = tr.debit(state, D(amount), EntryContext(f"usage:{index}", now), overage=settings)
        except OverageLimitReached:
            assert limit is not None and amount > before
            continue
        [entry] = change.entries
        overage = D(entry.metadata.get("overage", "0"))
        assert -entry.amount + overage == amount
        assert overage == max(D(0), amount - before)
        state, entries = change.state, entries + [entry]
        assert state.ledger_balance >= 0 and balance(state, now).available >= 0
    assert sum(e.amount for e in entries) == state.ledger_balance
    if state.overage_month is not None:
        recorded = sum(
            D(e.metadata.get("overage", "0"))
            for e in entries
            if month_of(e.created_at) == state.overage_month
        )
        assert recorded == state.overage_used
        assert limit is None or state.overage_used <= limit


@pytest.mark.parametrize(
    ("usage", "recorded", "billed"),
    [
        # inside the month it was counted in: the usage time itself
        ("2030-02-10T08:00:00+00:00", "2030-02-10T08:00:05+00:00", "2030-02-10T08:00:00+00:00"),
        # a late usage of last month (counted in this one): the first second of this month
        ("2030-01-31T23:55:00+00:00", "2030-02-01T00:10:00+00:00", "2030-02-01T00:00:00+00:00"),
        # sent 35 days late: still this month, so within the 35 days Stripe accepts
        ("2030-01-06T12:00:00+00:00", "2030-02-10T11:00:00+00:00", "2030-02-01T00:00:00+00:00"),
        # stamped a little ahead, into next month: the last second of this month
        ("2030-02-01T00:02:00+00:00", "2030-01-31T23:58:00+00:00", "2030-01-31T23:59:59+00:00"),
        # December into January
        ("2030-12-31T23:59:00+00:00", "2031-01-01T00:00:30+00:00", "2031-01-01T00:00:00+00:00"),
    ],
)
def test_a_meter_event_is_stamped_in_the_month_its_overage_counted_in(
    usage: str, recorded: str, billed: str
) -> None:
    assert meter_time(
        datetime.fromisoformat(usage), datetime.fromisoformat(recorded)
    ) == datetime.fromisoformat(billed)
