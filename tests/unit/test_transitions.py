"""Pure state transitions: each one's ledger entry (amount, balance_after, allocations, seq), the new live set
and the grants it closes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from credits_ledger.domain import transitions as tr
from credits_ledger.domain.errors import (
    GrantNotDue,
    GrantNotLive,
    InsufficientCredits,
    InvalidGrant,
    InvalidTransition,
)
from credits_ledger.domain.models import (
    AccountState,
    Allocation,
    Category,
    Change,
    ClosedGrant,
    EntryType,
    Grant,
    GrantStatus,
    Source,
)
from credits_ledger.domain.transitions import EntryContext, GrantSpec

NOW = datetime(2030, 1, 1, tzinfo=UTC)
D = Decimal


def ctx(key: str, now: datetime = NOW, **kwargs: object) -> EntryContext:
    return EntryContext(entry_key=key, now=now, **kwargs)  # type: ignore[arg-type]


def grant_spec(grant_id: str, amount: str, **kwargs: object) -> GrantSpec:
    return GrantSpec(grant_id=grant_id, amount=D(amount), source=Source("admin"), **kwargs)  # type: ignore[arg-type]


def granted(state: AccountState, grant_id: str, amount: str, **kwargs: object) -> tuple[AccountState, Grant]:
    change = tr.grant(state, grant_spec(grant_id, amount, **kwargs), ctx(f"grant:{grant_id}"))
    return change.state, change.new_grants[0]


def sum_entries(changes: list[Change]) -> Decimal:
    return sum((e.amount for c in changes for e in c.entries), D(0))


EMPTY = AccountState(account_id="acct")


# ---- grant -------------------------------------------------------------------------------------------------
def test_grant_entry_and_state() -> None:
    # Given an account with 5 credits and one entry
    state, _ = granted(EMPTY, "g0", "5")
    # When 100 credits are granted
    change = tr.grant(
        state,
        grant_spec("g1", "100", expires_at=NOW + timedelta(days=30)),
        ctx("k1", reference="pi_1", fingerprint="fp"),
    )
    # Then one grant entry with +100, balance_after 105, the whole amount allocated to the new grant, seq 2
    (entry,) = change.entries
    assert entry.type is EntryType.GRANT
    assert entry.amount == D("100")
    assert entry.balance_after == D("105")
    assert entry.allocations == (Allocation("g1", D("100")),)
    assert entry.seq == 2
    assert (entry.entry_key, entry.reference, entry.fingerprint, entry.created_at) == (
        "k1",
        "pi_1",
        "fp",
        NOW,
    )
    # ...the new grant record is active, effective now, with remaining == amount
    (record,) = change.new_grants
    assert (record.status, record.remaining, record.amount) == (GrantStatus.ACTIVE, D("100"), D("100"))
    assert record.effective_at == NOW
    # ...and the state gained the live grant, the balance and a version
    assert change.state.version == 2
    assert change.state.ledger_balance == D("105")
    assert change.state.grants["g1"].remaining == D("100")
    assert change.closed_grants == ()


def test_grant_in_the_future_is_pending() -> None:
    change = tr.grant(EMPTY, grant_spec("g1", "10", effective_at=NOW + timedelta(hours=1)), ctx("k"))
    assert change.new_grants[0].status is GrantStatus.PENDING
    # the ledger balance counts it at once (available will not)
    assert change.entries[0].balance_after == D("10")


def test_a_grant_whose_window_has_passed_is_written_live_so_the_expiry_job_can_close_it() -> None:
    # Given a late announcement of a month that is already over (effective and expiry in the past)
    spec = grant_spec("g1", "10", effective_at=NOW - timedelta(days=40), expires_at=NOW - timedelta(days=9))
    change = tr.grant(EMPTY, spec, ctx("k"))
    # Then its item says active (the readers' view says expired), and expiring it later closes it
    assert change.new_grants[0].status is GrantStatus.ACTIVE
    assert change.state.grants["g1"].status(NOW) is GrantStatus.EXPIRED
    expired = tr.expire(change.state, change.new_grants[0], ctx("expire:g1"))
    assert expired.closed_grants[0].status is GrantStatus.EXPIRED and expired.state.ledger_balance == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"priority": -1}, "priority"),
        ({"expires_at": NOW}, "expires_at"),
        ({"expires_at": NOW - timedelta(days=1)}, "expires_at"),
        ({"effective_at": NOW + timedelta(days=2), "expires_at": NOW + timedelta(days=1)}, "expires_at"),
    ],
)
def test_grant_refuses_invalid_specs(kwargs: dict[str, object], field: str) -> None:
    amount = str(kwargs.pop("amount", "10"))
    with pytest.raises(InvalidGrant) as caught:
        tr.grant(EMPTY, grant_spec("g", amount, **kwargs), ctx("k"))
    assert caught.value.field == field


# ---- debit -------------------------------------------------------------------------------------------------
def test_debit_spans_grants_closes_the_depleted_one() -> None:
    # Given a promotional 10 and a paid 50
    state, _ = granted(EMPTY, "paid", "50")
    state, _ = granted(state, "promo", "10", category=Category.PROMOTIONAL)
    # When 25 is debited
    change = tr.debit(state, D("25"), ctx("use-1", reference="evt-1"))
    # Then the promotional grant is spent first and depleted, the rest comes from paid
    (entry,) = change.entries
    assert entry.type is EntryType.DEBIT
    assert entry.amount == D("-25")
    assert entry.balance_after == D("35")
    assert entry.allocations == (Allocation("promo", D("10")), Allocation("paid", D("15")))
    assert entry.seq == 3
    assert change.closed_grants == (ClosedGrant("promo", GrantStatus.DEPLETED, NOW),)
    assert set(change.state.grants) == {"paid"}
    assert change.state.grants["paid"].remaining == D("35")
    assert change.state.ledger_balance == D("35")


def test_debit_refuses_more_than_available_and_leaves_state_alone() -> None:
    state, _ = granted(EMPTY, "g", "10")
    with pytest.raises(InsufficientCredits) as caught:
        tr.debit(state, D("10.000001"), ctx("k"))
    assert caught.value.available == D("10")
    assert state.grants["g"].remaining == D("10") and state.ledger_balance == D("10")


@pytest.mark.parametrize("amount", ["0", "-1"])
def test_debit_refuses_non_positive_amounts(amount: str) -> None:
    state, _ = granted(EMPTY, "g", "10")
    with pytest.raises(InvalidGrant):
        tr.debit(state, D(amount), ctx("k"))


def test_debit_skips_expired_grant_not_yet_expired_by_the_job() -> None:
    # Given a grant past its expires_at (the job has not run) and a never-expiring one
    state, _ = granted(EMPTY, "old", "100", expires_at=NOW + timedelta(days=1))
    state, _ = granted(state, "new", "5")
    later = NOW + timedelta(days=2)
    # When debiting after the expiry / Then only the live grant is used
    change = tr.debit(state, D("5"), ctx("k", now=later))
    assert change.entries[0].allocations == (Allocation("new", D("5")),)
    with pytest.raises(InsufficientCredits):
        tr.debit(state, D("6"), ctx("k", now=later))


# ---- expire ------------------------------------------------------------------------------------------------
def test_expire_takes_what_remains_once_due() -> None:
    state, record = granted(EMPTY, "g", "10", expires_at=NOW + timedelta(days=1))
    state = tr.debit(state, D("4"), ctx("use")).state
    due = NOW + timedelta(days=1)  # expires_at <= now: due exactly at expires_at
    change = tr.expire(state, record, ctx("expire:g", now=due))
    (entry,) = change.entries
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.EXPIRE, D("-6"), D("0"))
    assert entry.allocations == (Allocation("g", D("6")),)
    assert change.closed_grants == (ClosedGrant("g", GrantStatus.EXPIRED, due),)
    assert change.state.grants == {}


def test_expire_before_due_is_refused() -> None:
    state, record = granted(EMPTY, "g", "10", expires_at=NOW + timedelta(days=1))
    with pytest.raises(GrantNotDue):
        tr.expire(state, record, ctx("expire:g", now=NOW + timedelta(days=1) - timedelta(microseconds=1)))


def test_expire_of_a_never_expiring_grant_is_refused() -> None:
    state, record = granted(EMPTY, "g", "10")
    with pytest.raises(GrantNotDue):
        tr.expire(state, record, ctx("expire:g", now=NOW + timedelta(days=3650)))


def test_expire_of_a_depleted_grant_is_not_live() -> None:
    state, record = granted(EMPTY, "g", "10", expires_at=NOW + timedelta(days=1))
    state = tr.debit(state, D("10"), ctx("use")).state
    with pytest.raises(GrantNotLive):
        tr.expire(state, record, ctx("expire:g", now=NOW + timedelta(days=2)))


# ---- void --------------------------------------------------------------------------------------------------
def test_void_takes_what_remains() -> None:
    state, record = granted(EMPTY, "g", "10")
    state, _ = granted(state, "h", "1")
    state = tr.debit(state, D("3"), ctx("use")).state
    change = tr.void(state, record, ctx("void:g"))
    (entry,) = change.entries
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.VOID, D("-7"), D("1"))
    assert entry.allocations == (Allocation("g", D("7")),)
    assert change.closed_grants == (ClosedGrant("g", GrantStatus.VOIDED, NOW),)
    assert set(change.state.grants) == {"h"}
    with pytest.raises(GrantNotLive):
        tr.void(change.state, record, ctx("void:g"))


# ---- hold / release ----------------------------------------------------------------------------------------
def test_hold_moves_remaining_out_of_spendable_with_a_zero_entry() -> None:
    state, record = granted(EMPTY, "g", "10")
    change = tr.hold(state, record, ctx("hold:1"))
    (entry,) = change.entries
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.HOLD, D("0"), D("10"))
    assert entry.allocations == (Allocation("g", D("10")),)
    assert change.state.grants["g"].held is True
    assert change.state.ledger_balance == D("10") and change.state.version == 2
    with pytest.raises(InsufficientCredits):
        tr.debit(change.state, D("1"), ctx("use"))
    with pytest.raises(InvalidTransition):
        tr.hold(change.state, record, ctx("hold:2"))


def test_release_makes_held_credits_spendable_again() -> None:
    state, record = granted(EMPTY, "g", "10")
    state = tr.debit(state, D("2"), ctx("use")).state
    with pytest.raises(InvalidTransition):
        tr.release(state, record, ctx("release:0"))
    held = tr.hold(state, record, ctx("hold:1")).state
    change = tr.release(held, record, ctx("release:1"))
    (entry,) = change.entries
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.RELEASE, D("0"), D("8"))
    assert entry.allocations == (Allocation("g", D("8")),)
    assert change.state.grants["g"].held is False
    assert tr.debit(change.state, D("8"), ctx("use-2")).state.ledger_balance == 0


# ---- revoke ------------------------------------------------------------------------------------------------
def test_revoke_partial() -> None:
    state, record = granted(EMPTY, "g", "100")
    change = tr.revoke(state, record, D("30"), ctx("refund:1"))
    (entry,) = change.entries
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.REVOKE, D("-30"), D("70"))
    assert entry.allocations == (Allocation("g", D("30")),)
    assert entry.metadata["requested"] == "30" and D(entry.metadata["shortfall"]) == 0
    assert change.state.grants["g"].remaining == D("70")
    assert change.closed_grants == ()


def test_revoke_more_than_remaining_never_goes_below_zero_and_records_shortfall() -> None:
    # Given 100 granted and 80 already spent
    state, record = granted(EMPTY, "g", "100")
    state = tr.debit(state, D("80"), ctx("use")).state
    # When the whole 100 is refunded
    change = tr.revoke(state, record, D("100"), ctx("refund:1"))
    # Then only the 20 that remain are taken; 80 is the shortfall; the grant is closed
    (entry,) = change.entries
    assert (entry.amount, entry.balance_after) == (D("-20"), D("0"))
    assert entry.allocations == (Allocation("g", D("20")),)
    assert D(entry.metadata["requested"]) == D("100")
    assert D(entry.metadata["shortfall"]) == D("80")
    assert change.closed_grants == (ClosedGrant("g", GrantStatus.VOIDED, NOW),)
    assert change.state.ledger_balance == 0 and change.state.grants == {}


def test_revoke_of_a_closed_grant_records_only_the_shortfall() -> None:
    state, record = granted(EMPTY, "g", "10")
    state, _ = granted(state, "other", "5")
    state = tr.void(state, record, ctx("void:g")).state
    change = tr.revoke(state, record, D("10"), ctx("refund:1"))
    (entry,) = change.entries
    assert entry.amount == 0 and entry.balance_after == D("5")
    assert entry.allocations == ()
    assert D(entry.metadata["shortfall"]) == D("10")
    assert change.state.grants == state.grants


def test_revoke_refuses_non_positive_amount() -> None:
    state, record = granted(EMPTY, "g", "10")
    with pytest.raises(InvalidGrant):
        tr.revoke(state, record, D("0"), ctx("refund:1"))


# ---- adjust ------------------------------------------------------------------------------------------------
def test_adjust_positive_adds_a_promotional_grant() -> None:
    change = tr.adjust(EMPTY, D("12.5"), ctx("adj:1"), "gr_adj")
    (entry,) = change.entries
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.ADJUSTMENT, D("12.5"), D("12.5"))
    assert entry.allocations == (Allocation("gr_adj", D("12.5")),)
    (record,) = change.new_grants
    assert record.category is Category.PROMOTIONAL and record.remaining == D("12.5")
    assert change.state.grants["gr_adj"].category is Category.PROMOTIONAL


def test_adjust_negative_spends_like_a_debit() -> None:
    state, _ = granted(EMPTY, "a", "5", priority=1)
    state, _ = granted(state, "b", "5")
    change = tr.adjust(state, D("-7"), ctx("adj:1"), "unused")
    (entry,) = change.entries
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.ADJUSTMENT, D("-7"), D("3"))
    assert entry.allocations == (Allocation("a", D("5")), Allocation("b", D("2")))
    assert change.closed_grants == (ClosedGrant("a", GrantStatus.DEPLETED, NOW),)
    with pytest.raises(InsufficientCredits):
        tr.adjust(change.state, D("-3.1"), ctx("adj:2"), "unused")
    with pytest.raises(InvalidGrant):
        tr.adjust(change.state, D("0"), ctx("adj:3"), "unused")


# ---- combine and the bookkeeping identity ------------------------------------------------------------------
def test_combine_chains_debits_into_one_change() -> None:
    state, _ = granted(EMPTY, "g", "10")
    first = tr.debit(state, D("3"), ctx("u1"))
    second = tr.debit(first.state, D("7"), ctx("u2"))
    combined = tr.combine(state, [first, second])
    assert [e.seq for e in combined.entries] == [2, 3]
    assert [e.balance_after for e in combined.entries] == [D("7"), D("0")]
    assert combined.state == second.state
    assert combined.closed_grants == (ClosedGrant("g", GrantStatus.DEPLETED, NOW),)
    assert tr.combine(state, []).state == state and tr.combine(state, []).entries == ()


def test_every_transition_keeps_balance_equal_to_entries_and_live_remaining() -> None:
    # Given a long mixed history
    changes: list[Change] = []
    state = EMPTY

    def step(change: Change) -> None:
        nonlocal state
        changes.append(change)
        state = change.state

    step(tr.grant(state, grant_spec("a", "100", expires_at=NOW + timedelta(days=1)), ctx("1")))
    record_a = changes[-1].new_grants[0]
    step(tr.grant(state, grant_spec("b", "50", category=Category.PROMOTIONAL), ctx("2")))
    record_b = changes[-1].new_grants[0]
    step(tr.grant(state, grant_spec("c", "0.000001"), ctx("3")))
    step(tr.debit(state, D("30.5"), ctx("4")))
    step(tr.hold(state, record_b, ctx("5")))
    step(tr.revoke(state, record_b, D("5"), ctx("6")))
    step(tr.release(state, record_b, ctx("7")))
    step(tr.adjust(state, D("-1"), ctx("8"), "x"))
    step(tr.adjust(state, D("2"), ctx("9"), "adj"))
    step(tr.expire(state, record_a, ctx("10", now=NOW + timedelta(days=1))))
    step(tr.void(state, record_b, ctx("11")))
    # Then after every step: balance == sum of entries so far == sum of live remaining, seq without gaps
    running = D(0)
    for index, change in enumerate(changes, start=1):
        running += change.entries[0].amount
        assert change.entries[0].seq == index
        assert change.entries[0].balance_after == running == change.state.ledger_balance
        assert sum((g.remaining for g in change.state.grants.values()), D(0)) == running
        assert change.state.ledger_balance >= 0
    assert state.ledger_balance == D("2.000001")
