"""Reservations as pure transitions: what they pin, how they end, and how they meet debits, expiry, voids and
refunds (domain/reservations.py, domain/reserved.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from credits_ledger.dal import items as it
from credits_ledger.domain import reservations as rv
from credits_ledger.domain import transitions as tr
from credits_ledger.domain.balance import balance
from credits_ledger.domain.errors import GrantNotLive, InsufficientCredits
from credits_ledger.domain.idempotency import reserve_key
from credits_ledger.domain.models import (
    AccountState,
    Allocation,
    Category,
    Change,
    CostBasis,
    EntryType,
    Grant,
    GrantStatus,
    Source,
)
from credits_ledger.domain.reconcile import OpenReservation, reservation_problems
from credits_ledger.domain.reservations import ReservationError, ReservationNotDue, ReservationStatus
from credits_ledger.domain.reserved import pinned
from credits_ledger.domain.rollover import RolloverPolicy, expire_with_rollover
from credits_ledger.domain.transitions import EntryContext, GrantSpec

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
D = Decimal


def ctx(key: str, now: datetime = NOW) -> EntryContext:
    return EntryContext(entry_key=key, now=now)


def granted(state: AccountState, grant_id: str, amount: str, **kwargs: object) -> tuple[AccountState, Grant]:
    spec = GrantSpec(grant_id=grant_id, amount=D(amount), source=Source("admin"), **kwargs)  # type: ignore[arg-type]
    change = tr.grant(state, spec, ctx(f"grant:{grant_id}"))
    return change.state, change.new_grants[0]


def reserve(
    state: AccountState, rid: str, amount: str, hours: float = 1, now: datetime = NOW
) -> AccountState:
    return rv.reserve(state, rid, D(amount), now + timedelta(hours=hours), ctx(reserve_key(rid), now)).state


def books(state: AccountState, changes: list[Change], start: Decimal) -> None:
    """Entries continue the balance, and the live grants hold exactly the ledger balance."""
    running = start
    for change in changes:
        for entry in change.entries:
            running += entry.amount
            assert entry.balance_after == running
    assert running == state.ledger_balance
    assert sum((g.remaining for g in state.grants.values()), D(0)) == state.ledger_balance


def parts_add_up(state: AccountState, now: datetime) -> None:
    """available + held + pending + reserved + awaiting expiry == ledger balance, with no overlap."""
    b = balance(state, now)
    pins = pinned(state, now)
    awaiting = sum(
        (g.remaining - pins.get(g.grant_id, D(0)) for g in state.grants.values() if g.is_expired(now)), D(0)
    )
    assert b.available + b.held + b.pending + b.reserved + awaiting == b.ledger_balance


def g1_record(state: AccountState) -> Grant:
    live = state.grants["g1"]
    return Grant("g1", "cus_1", D(100), live.category, 50, NOW, None, Source("admin"), CostBasis(), NOW)


@pytest.fixture
def funded() -> AccountState:
    state, _ = granted(AccountState("cus_1"), "g1", "100")
    return state


def test_reserve_pins_credits_without_changing_the_ledger_balance(funded: AccountState) -> None:
    change = rv.reserve(funded, "job1", D("30"), NOW + HOUR, ctx("reserve:job1"))
    entry = change.entries[0]
    assert (entry.type, entry.amount, entry.balance_after) == (EntryType.RESERVE, D(0), D(100))
    assert entry.allocations == (Allocation("g1", D(30)),)
    b = balance(change.state, NOW)
    assert (b.ledger_balance, b.available, b.reserved, b.paid) == (D(100), D(70), D(30), D(70))
    assert change.state.grants["g1"].remaining == D(100)


def test_reserve_more_than_available_holds_nothing(funded: AccountState) -> None:
    state = reserve(funded, "a", "60")
    with pytest.raises(InsufficientCredits) as raised:
        rv.reserve(state, "b", D("41"), NOW + HOUR, ctx("reserve:b"))
    assert raised.value.available == D(40)


def test_debits_cannot_spend_what_is_reserved(funded: AccountState) -> None:
    state = reserve(funded, "a", "60")
    with pytest.raises(InsufficientCredits):
        tr.debit(state, D("41"), ctx("usage:1"))
    assert tr.debit(state, D("40"), ctx("usage:2")).state.grants["g1"].remaining == D(60)


def test_a_reservation_past_its_expiry_holds_nothing_before_the_sweep(funded: AccountState) -> None:
    state = reserve(funded, "a", "60", hours=1)
    later = NOW + HOUR
    assert balance(state, later).available == D(100)
    assert balance(state, later).reserved == D(0)
    spent = tr.debit(state, D("100"), ctx("usage:1", later))
    assert spent.state.ledger_balance == D(0)
    with pytest.raises(ReservationError, match="expired"):
        rv.capture(spent.state, "a", None, False, ctx("unreserve:a", later))


def test_capture_debits_what_was_used_and_releases_the_rest_in_one_change(funded: AccountState) -> None:
    state = reserve(funded, "a", "60")
    ended = rv.capture(state, "a", D("25"), False, ctx("unreserve:a"))
    types = [(e.entry_key, e.type, e.amount) for e in ended.change.entries]
    assert types == [
        ("capture:a", EntryType.DEBIT, D(-25)),
        ("unreserve:a", EntryType.UNRESERVE, D(0)),
    ]
    assert ended.change.entries[0].reference is None or ended.change.entries[0].metadata["reservation"] == "a"
    assert ended.change.entries[1].allocations == (Allocation("g1", D(35)),)
    assert (ended.status, ended.captured, ended.released) == (ReservationStatus.CAPTURED, D(25), D(35))
    b = balance(ended.change.state, NOW)
    assert (b.ledger_balance, b.available, b.reserved) == (D(75), D(75), D(0))
    assert ended.change.state.reservations == {}
    books(ended.change.state, [ended.change], D(100))


def test_capture_defaults_to_everything_reserved(funded: AccountState) -> None:
    ended = rv.capture(reserve(funded, "a", "60"), "a", None, False, ctx("unreserve:a"))
    assert (ended.captured, ended.released) == (D(60), D(0))
    assert ended.change.state.ledger_balance == D(40)


def test_capture_above_the_reservation_needs_allow_overrun(funded: AccountState) -> None:
    state = reserve(funded, "a", "60")
    with pytest.raises(ReservationError, match="allow_overrun"):
        rv.capture(state, "a", D("61"), False, ctx("unreserve:a"))
    ended = rv.capture(state, "a", D("90"), True, ctx("unreserve:a"))
    assert ended.change.entries[0].amount == D(-90)
    assert ended.change.entries[0].metadata["overrun"] == "30"
    assert ended.change.entries[0].allocations == (Allocation("g1", D(90)),)
    assert ended.change.state.ledger_balance == D(10)


def test_overrun_beyond_available_changes_nothing(funded: AccountState) -> None:
    state = reserve(reserve(funded, "a", "60"), "b", "30")
    with pytest.raises(InsufficientCredits):
        rv.capture(state, "a", D("71"), True, ctx("unreserve:a"))
    # what another reservation holds is not available to an overrun
    assert rv.capture(state, "a", D("70"), True, ctx("unreserve:a")).change.state.ledger_balance == D(30)


def test_release_gives_everything_back(funded: AccountState) -> None:
    ended = rv.release(reserve(funded, "a", "60"), "a", ctx("unreserve:a"))
    assert ended.status is ReservationStatus.RELEASED
    assert [e.type for e in ended.change.entries] == [EntryType.UNRESERVE]
    assert balance(ended.change.state, NOW).available == D(100)


def test_release_after_expiry_ends_it_as_expired_and_the_sweep_waits_for_the_expiry(
    funded: AccountState,
) -> None:
    state = reserve(funded, "a", "60", hours=2)
    with pytest.raises(ReservationNotDue):
        rv.release(state, "a", ctx("unreserve:a", NOW + HOUR), sweep=True)
    ended = rv.release(state, "a", ctx("unreserve:a", NOW + 2 * HOUR), sweep=True)
    assert ended.status is ReservationStatus.EXPIRED
    assert ended.change.state.reservations == {}


def test_credits_reserved_from_a_grant_that_expires_stay_capturable() -> None:
    state, g1 = granted(AccountState("cus_1"), "g1", "100", expires_at=NOW + HOUR)
    state = reserve(state, "a", "60", hours=5)
    at = NOW + 2 * HOUR
    expired = tr.expire(state, g1, ctx("expire:g1", at))
    assert expired.entries[0].amount == D(-40)
    assert expired.state.grants["g1"].remaining == D(60)
    assert balance(expired.state, at).reserved == D(60)
    assert balance(expired.state, at).available == D(0)
    # a second run finds nothing free to expire
    with pytest.raises(GrantNotLive):
        tr.expire(expired.state, g1, ctx("expire:g1", at))
    ended = rv.capture(expired.state, "a", D("20"), False, ctx("unreserve:a", at))
    keys = [(e.entry_key, e.type, e.amount) for e in ended.change.entries]
    assert keys == [
        ("capture:a", EntryType.DEBIT, D(-20)),
        ("unreserve:a", EntryType.UNRESERVE, D(0)),
        ("unreserve:a:expire", EntryType.EXPIRE, D(-40)),
    ]
    assert ended.expired == D(40)
    assert "g1" not in ended.change.state.grants
    assert [(c.grant_id, c.status) for c in ended.change.closed_grants] == [("g1", GrantStatus.EXPIRED)]
    books(ended.change.state, [expired, ended.change], D(100))


def test_expiry_job_before_the_reservation_ends_expires_all_when_it_lapsed() -> None:
    state, g1 = granted(AccountState("cus_1"), "g1", "100", expires_at=NOW + 2 * HOUR)
    state = reserve(state, "a", "60", hours=1)
    at = NOW + 3 * HOUR  # the reservation lapsed before the grant expired: nothing holds any more
    expired = tr.expire(state, g1, ctx("expire:g1", at))
    assert expired.entries[0].amount == D(-100)
    swept = rv.release(expired.state, "a", ctx("unreserve:a", at), sweep=True)
    assert swept.expired == D(0)
    assert [e.type for e in swept.change.entries] == [EntryType.UNRESERVE]
    books(swept.change.state, [expired, swept.change], D(100))


def test_release_of_a_grant_not_yet_expired_by_the_job_expires_only_what_it_gives_back() -> None:
    state, _ = granted(AccountState("cus_1"), "g1", "100", expires_at=NOW + HOUR)
    state = reserve(state, "a", "60", hours=5)
    at = NOW + 2 * HOUR
    ended = rv.release(state, "a", ctx("unreserve:a", at))
    assert ended.expired == D(60)
    assert ended.change.state.grants["g1"].remaining == D(40)  # the job's to expire (and roll over)


def test_rollover_counts_only_what_expires_now() -> None:
    state, g1 = granted(AccountState("cus_1"), "g1", "100", expires_at=NOW + HOUR)
    state = reserve(state, "a", "60", hours=5)
    change = expire_with_rollover(state, g1, ctx("expire:g1", NOW + 2 * HOUR), RolloverPolicy(valid_days=30))
    assert [e.amount for e in change.entries] == [D(-40), D(40)]


def test_a_void_takes_the_reserved_credits_and_the_next_capture_sees_less() -> None:
    state, _ = granted(AccountState("cus_1"), "g1", "50")
    state, g2 = granted(state, "g2", "50", priority=60)
    state = reserve(state, "a", "80")  # 50 from g1, 30 from g2
    voided = tr.void(state, g2, ctx("void:g2"))
    assert voided.state.reservations["a"].allocations == (Allocation("g1", D(50)),)
    assert balance(voided.state, NOW).reserved == D(50)
    ended = rv.capture(voided.state, "a", None, False, ctx("unreserve:a"))
    assert ended.captured == D(50)


def test_a_refund_takes_what_is_free_first_then_shrinks_the_reservation(funded: AccountState) -> None:
    state = reserve(funded, "a", "60")
    record = g1_record(funded)
    refunded = tr.revoke(state, record, D("30"), ctx("revoke:1"))
    assert refunded.state.reservations["a"].credits == D(60)
    refunded = tr.revoke(refunded.state, record, D("50"), ctx("revoke:2"))
    assert refunded.state.reservations["a"].credits == D(20)
    assert balance(refunded.state, NOW).reserved == D(20)
    assert balance(refunded.state, NOW).available == D(0)


def test_refund_shrinks_the_reservation_ending_last_first(funded: AccountState) -> None:
    state = reserve(reserve(funded, "early", "40", hours=1), "late", "40", hours=3)
    record = g1_record(funded)
    refunded = tr.revoke(state, record, D("50"), ctx("revoke:1"))
    assert refunded.state.reservations["late"].credits == D(10)
    assert refunded.state.reservations["early"].credits == D(40)


def test_extend_moves_the_end_within_30_days_of_creation(funded: AccountState) -> None:
    state = reserve(funded, "a", "60")
    change = rv.extend(state, "a", NOW + 10 * HOUR, NOW, ctx("reserve:a:extend:3"))
    assert change.state.reservations["a"].expires_at == NOW + 10 * HOUR
    assert (change.entries[0].type, change.entries[0].amount, change.entries[0].allocations) == (
        EntryType.RESERVE,
        D(0),
        (),
    )
    with pytest.raises(ReservationError, match="30 days"):
        rv.extend(state, "a", NOW + timedelta(days=30, seconds=1), NOW, ctx("x"))
    with pytest.raises(ReservationError, match="expired"):
        rv.extend(state, "a", NOW + 10 * HOUR, NOW, ctx("x", NOW + HOUR))


def test_open_reservations_per_account_are_bounded(funded: AccountState) -> None:
    state = funded
    for index in range(rv.MAX_OPEN_RESERVATIONS):
        state = reserve(state, f"r{index}", "0.5")
    with pytest.raises(ReservationError, match="open reservations"):
        rv.reserve(state, "one-more", D("1"), NOW + HOUR, ctx("reserve:one-more"))


def test_account_item_round_trips_reservations(funded: AccountState) -> None:
    state = reserve(reserve(funded, "a", "60"), "b", "0.000001", hours=2)
    item = it.from_dynamo(it.to_dynamo(it.state_to_item(state)))
    assert it.state_from_item("cus_1", item) == state
    assert "reservations" not in it.state_to_item(funded)


def test_balance_parts_add_up_with_reservations_held_and_expired_grants() -> None:
    state, _ = granted(AccountState("cus_1"), "g1", "100", expires_at=NOW + HOUR)
    state, g2 = granted(state, "g2", "50", category=Category.PROMOTIONAL)
    state = reserve(state, "a", "120", hours=4)
    state = tr.hold(state, g2, ctx("hold:g2")).state
    for at in (NOW, NOW + 2 * HOUR, NOW + 5 * HOUR):
        parts_add_up(state, at)
    b = balance(state, NOW + 2 * HOUR)
    assert b.reserved == D(120)  # capturable although g1 expired and g2 is disputed
    assert b.available == D(0)


# ---- reconciliation: reserved credits against the open reservations ----------------------------------------
def test_reconcile_accepts_open_reservations_that_match_their_records(funded: AccountState) -> None:
    state = reserve(funded, "a", "60")
    records = {"a": OpenReservation("cus_1", "active", D(60))}
    assert reservation_problems(state, records, NOW) == []


def test_reconcile_flags_reservations_that_do_not_match(funded: AccountState) -> None:
    state = reserve(reserve(funded, "a", "60"), "b", "10")
    codes = {
        p.code
        for p in reservation_problems(
            state,
            {"a": OpenReservation("cus_1", "captured", D(60)), "b": OpenReservation("cus_1", "active", D(5))},
            NOW,
        )
    }
    assert codes == {"reservation_record", "reservation_credits"}
    assert {p.code for p in reservation_problems(state, {}, NOW)} == {"reservation_record"}
    # pins above what the grant holds: reserved credits that are not there
    broken = replace(state, grants={"g1": replace(state.grants["g1"], remaining=D(50))})
    records = {"a": OpenReservation("cus_1", "active", D(60)), "b": OpenReservation("cus_1", "active", D(10))}
    assert [p.code for p in reservation_problems(broken, records, NOW)] == ["reserved"]
