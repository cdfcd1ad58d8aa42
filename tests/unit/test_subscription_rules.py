"""The pure plan rules of domain/subscriptions.py: months of a period, proration arithmetic and rounding,
revocation allocation, cancellation, rollover validity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits_ledger.domain import subscriptions as subs
from credits_ledger.domain.subscriptions import PoolGrant, PoolRecord

D = Decimal


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def test_a_month_is_one_slot_and_a_year_twelve_anchored_on_the_start_day() -> None:
    assert subs.months_of(at(2030, 1, 15), at(2030, 2, 15)) == [
        subs.MonthSlot(0, at(2030, 1, 15), at(2030, 2, 15))
    ]
    slots = subs.months_of(at(2030, 1, 31), at(2031, 1, 31))
    assert len(slots) == 12
    assert [s.start.day for s in slots[:4]] == [31, 28, 31, 30]  # clamped, then back to the anchor day
    assert all(a.end == b.start for a, b in zip(slots, slots[1:], strict=False))
    assert slots[-1].end == at(2031, 1, 31)


def test_a_february_period_and_a_week_are_one_slot_and_a_quarter_three() -> None:
    assert len(subs.months_of(at(2030, 2, 28), at(2030, 3, 31))) == 1
    assert len(subs.months_of(at(2030, 1, 1), at(2030, 1, 8))) == 1
    assert len(subs.months_of(at(2030, 1, 1), at(2030, 4, 1))) == 3
    assert subs.months_of(at(2030, 1, 2), at(2030, 1, 1)) == []


@pytest.mark.parametrize(
    ("interval", "count", "months"),
    [("month", 1, 1), ("month", 3, 3), ("year", 1, 12), ("week", 2, 0), ("day", 1, 0), (None, 1, None)],
)
def test_interval_months(interval: str | None, count: int, months: int | None) -> None:
    assert subs.interval_months(interval, count) == months


def test_proration_grants_round_down_and_revocations_round_up() -> None:
    # 5000 x 600 / 4900 = 612.2448979...; 20000 x 1400 / 14900 = 1879.1946308...
    assert subs.proration_credits(600, D(4900), 1, D(5000), 1) == D("612.244897")
    assert subs.proration_credits(-1400, D(14900), 1, D(20000), 1) == D("1879.194631")


def test_proration_is_capped_at_the_whole_interval_and_free_prices_move_nothing() -> None:
    assert subs.proration_credits(10**9, D(4900), 1, D(5000), 1) == D(5000)
    assert subs.proration_credits(500, D(0), 1, D(5000), 1) == 0
    assert subs.proration_credits(500, D(4900), 0, D(5000), 1) == 0


def test_a_yearly_prorations_credits_are_the_share_of_twelve_months() -> None:
    # half of a 490 EUR yearly price of a 5000-credit plan, quantity 2: half of 2 x 12 x 5000
    assert subs.proration_credits(49000, D(49000), 2, D(5000), 12) == D(60000)


@given(
    amount=st.integers(1, 10**7),
    unit=st.integers(1, 10**6),
    quantity=st.integers(1, 50),
    credits=st.decimals(min_value=1, max_value=10**6, places=6),
    months=st.sampled_from([0, 1, 3, 12]),
)
def test_a_grant_and_the_matching_revocation_never_leave_credits_behind(
    amount: int, unit: int, quantity: int, credits: Decimal, months: int
) -> None:
    granted = subs.proration_credits(amount, D(unit), quantity, credits, months)
    revoked = subs.proration_credits(-amount, D(unit), quantity, credits, months)
    exact = (
        min(Fraction(1), Fraction(amount, unit * quantity)) * Fraction(credits) * quantity * max(months, 1)
    )
    assert Fraction(granted) <= exact <= Fraction(revoked)
    assert revoked - granted <= D("0.000001")


@pytest.mark.parametrize(
    ("end", "interval", "count", "starts"),
    [
        (at(2030, 2, 15), "month", 1, [at(2030, 1, 15)]),  # anchored mid-month: one start
        (at(2030, 4, 30), "month", 1, [at(2030, 3, 30), at(2030, 3, 31)]),  # anchored on the 30th or the 31st
        (at(2030, 2, 28), "month", 1, [at(2030, 1, d) for d in (28, 29, 30, 31)]),  # the 28th to the 31st
        (at(2032, 2, 29), "month", 1, [at(2032, 1, d) for d in (29, 30, 31)]),  # a leap year's February
        (at(2030, 3, 31), "month", 1, [at(2030, 2, 28)]),  # only the 31st ends on 31 Mar
        (at(2031, 4, 30), "year", 1, [at(2030, 4, 30)]),
        (at(2030, 7, 31), "month", 3, [at(2030, 4, 30)]),
        (at(2030, 1, 15), "week", 2, [at(2030, 1, 1)]),
        (at(2030, 1, 15), "day", 1, [at(2030, 1, 14)]),
    ],
)
def test_the_starts_the_billing_period_a_line_ends_with_can_have(
    end: datetime, interval: str, count: int, starts: list[datetime]
) -> None:
    assert subs.period_starts(end, interval, count) == starts


CENT = Fraction(1, 4900)  # one minor unit of a 49.00 price


def test_a_credit_line_revokes_its_money_share_when_that_is_the_periods_share_for_a_possible_start() -> None:
    half = Fraction(1, 2)
    assert subs.revoked_share(half, [half], CENT) == half
    # Stripe rounded the line to the cent: still its money share, not the period's (no over-revocation)
    assert subs.revoked_share(half - CENT / 2, [half], CENT) == half - CENT / 2
    # an ambiguous month-end period: the money share of the true start (here the 28th of 28 to 31) is kept
    shares = [Fraction(16, 31), Fraction(16, 30), Fraction(16, 29), Fraction(16, 28)]
    assert subs.revoked_share(Fraction(2529, 4900), shares, CENT) == Fraction(2529, 4900)
    # a line that credits more than its time keeps its money share
    assert subs.revoked_share(Fraction(3, 4), [half], CENT) == Fraction(3, 4)


def test_a_discounted_credit_line_revokes_the_periods_share_with_its_latest_possible_start() -> None:
    assert subs.revoked_share(Fraction(1, 3), [Fraction(1, 2)], CENT) == Fraction(1, 2)
    # anchored on the 31st, 14 of 28 days given back at 5% off: 23.28 credited, never less than half revoked
    shares = [Fraction(14, 31), Fraction(14, 30), Fraction(14, 29), Fraction(14, 28)]
    assert subs.revoked_share(Fraction(2328, 4900), shares, CENT) == Fraction(1, 2)


def test_a_credit_line_under_a_coupon_revokes_the_whole_share_a_grant_only_what_its_money_buys() -> None:
    # Pro at 50% off, half of Jan 15 - Feb 15 given back: 12.25 credited for 24.50 of time
    shares = subs.time_shares(datetime(2030, 1, 30, 12, tzinfo=UTC), at(2030, 2, 15), "month", 1)
    assert shares == [Fraction(1, 2)]
    assert subs.proration_credits(-1225, D(4900), 1, D(5000), 1, shares) == D(2500)
    assert subs.proration_credits(1225, D(4900), 1, D(5000), 1, shares) == D(1250)
    assert subs.proration_credits(-1225, D(4900), 1, D(5000), 1) == D(1250)  # no period known: money
    # a month-end period anchored on the 31st, 5% off: 2,500 revoked, not the 2,375.5 that 23.28 would take
    shares = subs.time_shares(at(2031, 2, 14), at(2031, 2, 28), "month", 1)
    assert subs.proration_credits(-2328, D(4900), 1, D(5000), 1, shares) == D(2500)
    # anchored on the 28th, no coupon, Stripe's cent rounded down: its money share, not a later start's
    shares = subs.time_shares(at(2031, 2, 12), at(2031, 2, 28), "month", 1)
    assert subs.proration_credits(-2529, D(4900), 1, D(5000), 1, shares) == D("2580.612245")


@given(
    part=st.integers(1, 31 * 86_400),
    end=st.datetimes(min_value=datetime(2030, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
    interval=st.sampled_from([("month", 1), ("month", 3), ("year", 1), ("week", 1), ("day", 7)]),
)
def test_time_shares_are_shares_least_first(part: int, end: datetime, interval: tuple[str, int]) -> None:
    shares = subs.time_shares(end - timedelta(seconds=part), end, *interval)
    assert shares and shares == sorted(shares) and all(0 <= share <= 1 for share in shares)


@given(total=st.decimals(min_value=0, max_value=10**9, places=6), parts=st.integers(1, 36))
def test_split_evenly_sums_exactly(total: Decimal, parts: int) -> None:
    shares = subs.split_evenly(total, parts)
    assert len(shares) == parts and sum(shares) == total and all(s >= 0 for s in shares)


def grant(name: str, month: int, credits: str = "5000", plan: str = "pro") -> PoolGrant:
    return PoolGrant(name, D(credits), at(2030, month, 1), at(2030, month + 1, 1), plan)


def test_revocations_take_the_revoked_plans_latest_months_first_and_never_more_than_granted() -> None:
    grants = [grant("jan", 1), grant("feb", 2), grant("mar", 3), grant("biz", 2, "20000", "business")]
    assert subs.allocate_revocation(D(7000), grants, {}, "pro") == [("mar", D(5000)), ("feb", D(2000))]
    assert subs.allocate_revocation(D(7000), grants, {"mar": D(4000)}, "pro") == [
        ("mar", D(1000)),
        ("feb", D(5000)),
        ("jan", D(1000)),
    ]
    assert subs.allocate_revocation(D(1), grants, {}, "other") == []


def test_next_pool_action_waits_for_grants_that_do_not_exist_yet() -> None:
    pool = PoolRecord("si#1", grants={"jan": grant("jan", 1)}, revocations={"il_1": ("pro", D(2500))})
    assert subs.next_pool_action(pool, set(), None, "period_end") is None
    action = subs.next_pool_action(pool, {"jan"}, None, "period_end")
    assert action == subs.RevokeFromPool("si#1", "jan", D(2500), D(2500), "pro")
    done = subs.pool_applied(pool, action)
    assert (
        done.outstanding() == {"pro": 0} and subs.next_pool_action(done, {"jan"}, None, "period_end") is None
    )


def test_cancellation_voids_months_not_started_and_the_current_one_only_immediately() -> None:
    grants = [grant("jan", 1), grant("feb", 2), grant("mar", 3)]
    ended = at(2030, 2, 10)
    assert subs.voided_on_cancel(grants, ended, "period_end") == ["mar"]
    assert subs.voided_on_cancel(grants, ended, "immediately") == ["feb", "mar"]
    assert subs.voided_on_cancel(grants, at(2030, 3, 1), "period_end") == [
        "mar"
    ]  # starts at the end: not started


def test_cancellation_voids_each_grants_current_month_by_its_own_plans_rule() -> None:
    # Given a period's grants of a period_end plan, of an immediately plan, and one naming no plan (a period
    # recorded before its grants named their plan)
    grants = [
        grant("pro", 2),
        grant("biz", 2, "20000", "business"),
        grant("old", 2, plan=""),
        grant("mar", 3),
    ]
    rules = {"pro": "period_end", "business": "immediately"}
    ended = at(2030, 2, 10)
    # Then each current month follows its plan's rule; the one naming no plan follows the subscription's
    assert subs.voided_on_cancel(grants, ended, "period_end", rules) == ["biz", "mar"]
    assert subs.voided_on_cancel(grants, ended, "immediately", rules) == ["biz", "old", "mar"]
    pool = PoolRecord("si#2", grants={g.grant_id: g for g in grants})
    granted = {g.grant_id for g in grants}
    action = subs.next_pool_action(pool, granted, ended, "period_end", rules)
    assert action == subs.VoidInPool("si#2", "biz")
    voided = subs.pool_applied(subs.pool_applied(pool, action), subs.VoidInPool("si#2", "mar"))
    assert subs.next_pool_action(voided, granted, ended, "period_end", rules) is None


def test_keys_are_stable_and_grant_ids_sort_by_month() -> None:
    key = subs.month_key("si_1", at(2030, 1, 15), 3)
    assert key == f"stripe:subscription:si_1:{int(at(2030, 1, 15).timestamp())}:3"
    assert subs.grant_id_for(key, at(2030, 4, 15)) == subs.grant_id_for(key, at(2030, 4, 15))
    assert subs.grant_id_for("a", at(2030, 1, 1)) < subs.grant_id_for("a", at(2030, 2, 1))


def test_rollover_days_count_calendar_months_from_the_months_end() -> None:
    assert subs.rollover_days(at(2030, 1, 31), 1) == 28
    assert subs.rollover_days(at(2030, 3, 15), 2) == (at(2030, 5, 15) - at(2030, 3, 15)).days
    assert subs.add_months(at(2030, 12, 31), 2) == at(2031, 2, 28)
    assert subs.add_months(at(2030, 1, 1), 0) + timedelta(days=1) == at(2030, 1, 2)
