"""Rollover as a pure transition: the expire and the rollover grant are one Change, decided from the pack's
policy; a rollover grant rolls again only when the policy repeats."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from credits_ledger.domain import rollover as ro
from credits_ledger.domain import transitions as tr
from credits_ledger.domain.errors import GrantNotDue, GrantNotLive
from credits_ledger.domain.models import AccountState, Category, EntryType, Grant, GrantStatus, Source
from credits_ledger.domain.rollover import RolloverPolicy
from credits_ledger.domain.transitions import EntryContext, GrantSpec

D = Decimal
T0 = datetime(2030, 1, 1, tzinfo=UTC)
EXPIRES = T0 + timedelta(days=30)
JOB = EXPIRES + timedelta(minutes=15)


def ctx(key: str, now: datetime) -> EntryContext:
    return EntryContext(entry_key=key, now=now)


def account_with_pack_grant(
    amount: str = "1000", spent: str = "0", pack: str = "pro"
) -> tuple[AccountState, Grant]:
    spec = GrantSpec(
        grant_id="gr_1",
        amount=D(amount),
        source=Source("stripe_payment", "pi_1"),
        category=Category.PAID,
        priority=40,
        expires_at=EXPIRES,
        metadata={"pack": pack},
    )
    change = tr.grant(AccountState("acct"), spec, ctx("grant:gr_1", T0))
    state = change.state
    if D(spent):
        state = tr.debit(state, D(spent), ctx("use", T0 + timedelta(days=1))).state
    return state, change.new_grants[0]


POLICY = RolloverPolicy(valid_days=90, percent=D(50), max_amount=D(300))


def test_rollover_amount_takes_the_percentage_rounded_down_and_caps_it() -> None:
    # Given a 50% policy capped at 300 (and one without a cap)
    uncapped = RolloverPolicy(valid_days=10, percent=D("33.333333"))
    # When amounts are computed / Then half, capped, and never rounded up to create credits
    assert ro.rollover_amount(D(400), POLICY) == D(200)
    assert ro.rollover_amount(D(1000), POLICY) == D(300)
    assert ro.rollover_amount(D("0.000001"), POLICY) == D(0)
    assert ro.rollover_amount(D(1), uncapped) == D("0.333333")


def test_expire_with_rollover_is_one_change_with_expire_then_rollover_entries() -> None:
    # Given a pack grant of 1000 with 400 left when it expires
    state, record = account_with_pack_grant(spent="600")
    # When the job expires it under a 50% / max 300 / 90 days policy
    change = ro.expire_with_rollover(state, record, ctx("expire:gr_1", JOB), POLICY)
    # Then one change holds both entries, in order, with consecutive seqs and a running balance
    expire, roll = change.entries
    assert (expire.type, expire.entry_key, expire.amount) == (EntryType.EXPIRE, "expire:gr_1", D(-400))
    assert (roll.type, roll.entry_key, roll.amount) == (EntryType.ROLLOVER, "rollover:gr_1", D(200))
    assert (expire.seq, roll.seq) == (state.version + 1, state.version + 2)
    assert expire.balance_after == D(0) and roll.balance_after == D(200)
    assert expire.metadata["rolled_over"] == "200" and expire.metadata["rollover_grant"] == "gr_1-ro1"
    # And the original grant is closed as expired, the new one is live from the original expiry for 90 days
    assert [(c.grant_id, c.status) for c in change.closed_grants] == [("gr_1", GrantStatus.EXPIRED)]
    (new,) = change.new_grants
    assert new.grant_id == "gr_1-ro1" and new.amount == D(200)
    assert new.source == Source("rollover", "gr_1")
    assert (new.effective_at, new.expires_at) == (EXPIRES, EXPIRES + timedelta(days=90))
    assert (new.category, new.priority) == (Category.PAID, 40)
    assert new.metadata == {
        "pack": "pro",
        "rollover_generation": "1",
        "rollover_of": "gr_1",
        "rollover_root": "gr_1",
    }
    assert change.state.version == state.version + 2
    assert change.state.ledger_balance == D(200) == sum(g.remaining for g in change.state.grants.values())
    assert set(change.state.grants) == {"gr_1-ro1"}


def test_without_policy_it_is_exactly_expire() -> None:
    # Given a due grant and no rollover policy for its pack
    state, record = account_with_pack_grant()
    # When it expires with and without the rollover transition
    plain = tr.expire(state, record, ctx("expire:gr_1", JOB))
    composed = ro.expire_with_rollover(state, record, ctx("expire:gr_1", JOB), None)
    # Then both decide the very same change
    assert composed == plain


def test_a_rollover_grant_does_not_roll_again_unless_the_policy_repeats() -> None:
    # Given the rollover grant created by a first expiry, itself expiring later
    state, record = account_with_pack_grant(spent="600")
    first = ro.expire_with_rollover(state, record, ctx("expire:gr_1", JOB), POLICY)
    rolled = first.new_grants[0]
    later = rolled.expires_at + timedelta(minutes=15)  # type: ignore[operator]
    # When it expires under the non-repeating policy
    second = ro.expire_with_rollover(first.state, rolled, ctx("expire:gr_1-ro1", later), POLICY)
    # Then it only expires
    assert [e.type for e in second.entries] == [EntryType.EXPIRE]
    assert second.new_grants == ()
    # When the policy repeats, Then it rolls once more as generation 2 named after the root grant
    repeating = replace(POLICY, repeat=True)
    third = ro.expire_with_rollover(first.state, rolled, ctx("expire:gr_1-ro1", later), repeating)
    assert [e.type for e in third.entries] == [EntryType.EXPIRE, EntryType.ROLLOVER]
    assert third.new_grants[0].grant_id == "gr_1-ro2"
    assert third.new_grants[0].metadata["rollover_generation"] == "2"
    assert third.new_grants[0].amount == D(100)  # 50% of 200


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        (
            "held (disputed) grant",
            lambda s, r: (replace(s, grants={"gr_1": replace(s.grants["gr_1"], held=True)}), r),
        ),
        ("validity already over at job time", lambda s, r: (s, r)),
    ],
)
def test_no_rollover_when_held_or_when_the_new_validity_has_passed(case: str, mutate: object) -> None:
    # Given a due grant that is held, or a job running long after the rollover would have expired
    state, record = account_with_pack_grant(spent="600")
    state, record = mutate(state, record)  # type: ignore[operator]
    now = JOB if case.startswith("held") else EXPIRES + timedelta(days=91)
    # When it expires
    change = ro.expire_with_rollover(state, record, ctx("expire:gr_1", now), POLICY)
    # Then nothing carries over
    assert [e.type for e in change.entries] == [EntryType.EXPIRE]
    assert change.new_grants == ()


def test_not_due_or_not_live_grants_raise_like_expire() -> None:
    # Given a grant not yet due, and one already closed
    state, record = account_with_pack_grant()
    # When / Then the composed transition refuses like transitions.expire
    with pytest.raises(GrantNotDue):
        ro.expire_with_rollover(state, record, ctx("expire:gr_1", EXPIRES - timedelta(seconds=1)), POLICY)
    closed = tr.expire(state, record, ctx("expire:gr_1", JOB)).state
    with pytest.raises(GrantNotLive):
        ro.expire_with_rollover(closed, record, ctx("expire:gr_1", JOB), POLICY)


def test_policy_validation() -> None:
    # Given / When / Then invalid policies are refused at construction
    with pytest.raises(ValueError):
        RolloverPolicy(valid_days=0)
    with pytest.raises(ValueError):
        RolloverPolicy(valid_days=5, percent=D(101))
    with pytest.raises(ValueError):
        RolloverPolicy(valid_days=5, max_amount=D(0))


def test_a_refund_takes_back_what_remains_of_the_grant_then_of_its_rollover() -> None:
    # Given a grant with 400 left and a grant its credits rolled over into, with 150 (both live, as when the
    # grant expired in part: credits a reservation holds stay live)
    state, record = account_with_pack_grant(spent="600")
    spec = GrantSpec(
        grant_id="gr_1-ro1",
        amount=D(150),
        source=Source("rollover", "gr_1"),
        expires_at=JOB + timedelta(days=90),
    )
    rolled = tr.grant(state, spec, ctx("rollover:gr_1", JOB))
    state, rollover = rolled.state, rolled.new_grants[0]
    # When a refund asks 500 back
    change = tr.revoke(state, record, D(500), ctx("refund", JOB), rolled_over=[rollover])
    # Then the grant's 400 go first, then 100 of the rollover grant; nothing is short
    (entry,) = change.entries
    assert entry.amount == D(-500)
    assert [(a.grant_id, a.amount) for a in entry.allocations] == [("gr_1", D(400)), ("gr_1-ro1", D(100))]
    assert (entry.metadata["requested"], entry.metadata["shortfall"]) == ("500", "0")
    assert [(c.grant_id, c.status) for c in change.closed_grants] == [("gr_1", GrantStatus.VOIDED)]
    assert change.state.grants["gr_1-ro1"].remaining == D(50) == change.state.ledger_balance
    # And asking more than both hold takes all of both and records the rest as short
    change = tr.revoke(state, record, D(1000), ctx("refund", JOB), rolled_over=[rollover])
    (entry,) = change.entries
    assert entry.amount == D(-550) and entry.metadata["shortfall"] == "450"
    assert {c.grant_id for c in change.closed_grants} == {"gr_1", "gr_1-ro1"}
    assert change.state.grants == {} and change.state.ledger_balance == D(0)


def test_the_ids_a_grants_credits_roll_over_into() -> None:
    _, record = account_with_pack_grant()
    ids = ro.rollover_ids(record)
    assert [next(ids), next(ids)] == ["gr_1-ro1", "gr_1-ro2"]
    second = replace(record, grant_id="gr_1-ro1", source=Source("rollover", "gr_1"),
                     metadata={"rollover_generation": "1", "rollover_root": "gr_1"})  # fmt: skip
    assert next(ro.rollover_ids(second)) == "gr_1-ro2"
