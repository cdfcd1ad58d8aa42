"""The pricing simulator on a fixture ledger with known cohorts (domain/simulate.py, credits_dev/simulate.py)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from credits_dev.simulate import SimulationInputError, price_book, records, render_html
from credits_ledger.domain.simulate import PackOffer, UsageRecord, cheapest, cohorts, percentile, simulate

D = Decimal
TODAY = """
[meters.api_call]
credits_per_unit = "1"
[meters.storage_gb_hour]
credits_per_unit = "0.05"
[packs.starter]
credits = "1000"
prices = { eur = 1900, usd = 2100 }
[packs.pro]
credits = "10000"
bonus_credits = "2000"
prices = { eur = 15000 }
"""
PROPOSAL = """
[meters.api_call]
credits_per_unit = "2"
[meters.storage_gb_hour]
credits_per_unit = "0.05"
[packs.starter]
credits = "1000"
prices = { eur = 1500, usd = 1700 }
"""


def fixture_usage() -> list[UsageRecord]:
    """10 accounts over 2 months: 5 light (100 api_call a month), 4 average (900 a month), 1 heavy
    (6,000 api_call + 20,000 storage_gb_hour = 7,000 credits a month)."""
    rows = []
    for month in ("2026-10", "2026-11"):
        rows += [UsageRecord(f"cus_l{i}", month, "api_call", D(100)) for i in range(5)]
        rows += [UsageRecord(f"cus_a{i}", month, "api_call", D(900)) for i in range(4)]
        rows += [
            UsageRecord("cus_h", month, "api_call", D(6000)),
            UsageRecord("cus_h", month, "storage_gb_hour", D(20000)),
            UsageRecord("cus_h", month, "unknown_meter", D(5)),  # not priced: costs nothing
        ]
    return rows


def test_cohorts_and_purchases_per_cohort_today_and_proposed(tmp_path: Path) -> None:
    (tmp_path / "today.toml").write_text(TODAY)
    (tmp_path / "proposal.toml").write_text(PROPOSAL)
    today, proposal = price_book(tmp_path / "today.toml"), price_book(tmp_path / "proposal.toml")
    result = simulate(fixture_usage(), 2, today, proposal)
    light, average, heavy = result["today"]
    assert [(r.cohort, r.accounts, r.credits_per_month) for r in result["today"]] == [
        ("light", 5, D("100.00")),
        ("average", 4, D("900.00")),
        ("heavy", 1, D("7000.00")),
    ]
    # today: light and average need one starter (eur 1900); heavy: 7 starters (13,300) beat a pro (15,000)
    assert (light.purchase["eur"].pack, light.purchase["eur"].count, light.revenue_per_month["eur"]) == (
        "starter",
        1,
        D(9500),
    )
    assert (heavy.purchase["eur"].pack, heavy.purchase["eur"].count, heavy.purchase["eur"].cost) == (
        "starter",
        7,
        D(13300),
    )
    assert heavy.purchase["usd"].cost == D(14700)  # the pro pack has no usd price
    # proposal: api_call costs 2 credits; the same cohorts (decided under today's pricing)
    p_light, p_average, p_heavy = result["proposal"]
    assert (p_light.accounts, p_average.accounts, p_heavy.accounts) == (5, 4, 1)
    assert (p_light.credits_per_month, p_average.credits_per_month, p_heavy.credits_per_month) == (
        D("200.00"),
        D("1800.00"),
        D("13000.00"),
    )
    assert (p_average.purchase["eur"].count, p_average.revenue_per_month["eur"]) == (2, D(12000))
    assert p_heavy.revenue_per_month == {"eur": D(19500), "usd": D(22100)}
    page = render_html(result, "proposal vs today")
    assert page.count("<svg") == 3 and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_cohort_edges_follow_the_percentile_thresholds() -> None:
    totals = {f"a{i}": D(i) for i in range(1, 11)}  # 1..10
    assert percentile(list(totals.values()), D(50)) == D(5)
    groups = cohorts(totals, D(50), D(90))
    assert groups["light"] == [f"a{i}" for i in (1, 2, 3, 4, 5)]
    assert groups["heavy"] == ["a10"]
    assert len(groups["average"]) == 4
    narrower = cohorts(totals, D(20), D(70))
    assert (len(narrower["light"]), len(narrower["average"]), len(narrower["heavy"])) == (2, 5, 3)
    with pytest.raises(ValueError):
        cohorts(totals, D(90), D(50))


def test_cheapest_purchase_covers_the_credits_with_one_kind_of_pack() -> None:
    packs = [PackOffer("small", D(100), {"eur": D(10)}), PackOffer("big", D(1000), {"eur": D(80)})]
    assert cheapest(D(250), packs, "eur").cost == D(30)  # 3 small (30) < 1 big (80)
    assert cheapest(D(950), packs, "eur").pack == "big"
    assert cheapest(D(0), packs, "eur").count == 0
    assert cheapest(D(5), packs, "usd").pack is None


def test_the_export_shape_and_a_bad_pricing_file(tmp_path: Path) -> None:
    export = {"usage": [["cus_1", "2026-11", "api_call", "12.5"]]}
    assert records(export) == [UsageRecord("cus_1", "2026-11", "api_call", D("12.5"))]
    (tmp_path / "bad.toml").write_text("[packs.x]\nprices = {eur = 1}\n")
    with pytest.raises(SimulationInputError):
        price_book(tmp_path / "bad.toml")
