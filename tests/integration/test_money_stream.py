"""The money side of LedgerStreamFunction on moto: daily revenue totals from real ledger operations, counted
once whatever the redeliveries and the order of records, burn per day, and credits.usage.anomaly at most
once per account and day."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from credits_ledger.dal.money import MoneyRepository
from credits_ledger.domain.models import Category
from credits_ledger.domain.revenue import Totals, revenue_report
from credits_ledger.ledger import DebitRequest
from credits_ledger.pricing import load_pricing
from tests.support.expiry import StreamEnv, StreamRecorder, load_handler, pricing_and_bus
from tests.support.ledger import FakeClock, make_ledger, spec

D = Decimal
T0 = datetime(2030, 1, 1, 10, tzinfo=UTC)
TABLE = "CreditsTable"
ANOMALY = "credits.usage.anomaly"
PRICING = '[meters.api_call]\ncredits_per_unit = "1"\n\n[alerts]\nlow_balance_threshold = "100"\n'


@dataclass
class Env(StreamEnv):
    money: MoneyRepository

    def debit(self, account: str, key: str, amount: str, meter: str = "api_call") -> None:
        request = DebitRequest(key=key, amount=D(amount), metadata={"meter": meter})
        self.do(lambda: self.ledger.debit(account, request))


@pytest.fixture
def env(moto_tables: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    bus = pricing_and_bus(monkeypatch, tmp_path, PRICING)
    clock = FakeClock(T0)
    handler = load_handler("ledger_stream")
    handler.stream.cache_clear()
    yield Env(
        handler,
        make_ledger(moto_tables.client, TABLE, clock),
        clock,
        bus,
        StreamRecorder(moto_tables.client, TABLE, clock),
        MoneyRepository(moto_tables.client, TABLE),
    )
    handler.stream.cache_clear()
    load_pricing.cache_clear()


def test_sold_recognized_breakage_and_refunds_are_counted_once_per_day(env: Env) -> None:
    # Given a paid grant of 3 credits for 100 cents (33.33 cents each) and a free one, on day 1
    env.do(lambda: env.ledger.grant("cus_m", spec("paid", "3", priority=60), key="g:paid"))
    env.do(lambda: env.ledger.grant("cus_m", spec("promo", "10", category=Category.PROMOTIONAL), key="g:p"))
    # (spec() gives paid grants a cost of their amount in usd: re-cost "paid" to 100 cents)
    env.ledger.repository._client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "GRANT#paid"}, "sk": {"S": "GRANT"}},
        UpdateExpression="SET cost_amount = :c",
        ExpressionAttributeValues={":c": {"N": "100"}},
    )
    day1 = env.event()
    # day 2: 10 free credits and 1 paid one spent (33 cents), then 1 more (33 cents: 66 so far)
    env.clock.set(T0 + timedelta(days=1))
    env.debit("cus_m", "u1", "11")
    env.debit("cus_m", "u2", "1")
    day2 = env.event()
    # day 3: the last paid credit is voided: the remaining 34 cents are breakage (100 in all, nothing lost)
    env.clock.set(T0 + timedelta(days=2))
    env.do(lambda: env.ledger.void("paid"))
    day3 = env.event()

    # When the batches are delivered out of order, one of them twice, and one split and re-sent whole
    assert env.deliver(day2) == {"batchItemFailures": []}
    assert env.deliver(day3) == {"batchItemFailures": []}
    assert env.deliver({"Records": day1["Records"][:1]}) == {"batchItemFailures": []}
    assert env.deliver(day1) == {"batchItemFailures": []}
    assert env.deliver(day2) == {"batchItemFailures": []}

    # Then each day holds exactly its money, in cents
    stored = env.money.stored_days(date(2030, 1, 1), date(2030, 1, 3))
    assert stored == {
        (date(2030, 1, 1), "usd"): Totals(sold=D(100)),
        (date(2030, 1, 2), "usd"): Totals(recognized=D(66)),
        (date(2030, 1, 3), "usd"): Totals(breakage=D(34)),
    }
    (line,) = revenue_report(env.money.days_until(date(2030, 1, 3)), date(2030, 1, 2), date(2030, 1, 3))
    assert (line.opening_deferred, line.recognized, line.breakage, line.closing_deferred) == (
        D(100),
        D(66),
        D(34),
        D(0),
    )
    # and the tracker counted every entry (1..5) and the day's burn by meter
    tracker = env.money.tracker("cus_m", consistent=True)
    assert (tracker.applied.upto, tracker.applied.above) == (5, frozenset())
    assert tracker.burn == {date(2030, 1, 2): {"api_call": D(12)}}


def test_an_anomaly_is_published_once_for_a_day_above_three_medians_and_the_threshold(env: Env) -> None:
    env.do(lambda: env.ledger.grant("cus_a", spec("g", "100000"), key="g:g"))
    for day in range(10):  # ten days of 40 credits a day
        env.clock.set(T0 + timedelta(days=day))
        env.debit("cus_a", f"d{day}", "40")
    env.deliver()
    env.clock.set(T0 + timedelta(days=10))
    env.debit("cus_a", "big1", "100")  # 100 + 0: not above 3 x 40
    first = env.event()
    assert env.deliver(first) == {"batchItemFailures": []}
    assert env.bus.events(ANOMALY) == []
    # When the day's burn passes 120 (3x the median) and the threshold 100
    env.debit("cus_a", "big2", "21")
    env.debit("cus_a", "big3", "500", meter="storage")
    second = env.event()
    assert env.deliver(second) == {"batchItemFailures": []}
    # Then one anomaly, with the day's burn by meter; more usage that day and redeliveries raise no other
    env.debit("cus_a", "big4", "900")
    assert env.deliver() == {"batchItemFailures": []}
    assert env.deliver(second) == {"batchItemFailures": []}
    (anomaly,) = env.bus.events(ANOMALY)
    assert anomaly["detail"] == {
        "anomaly_id": "cus_a:2030-01-11",
        "account": "cus_a",
        "day": "2030-01-11",
        "burn": "621",
        "median_30d": "40",
        "threshold": "100",
        "by_meter": {"api_call": "121", "storage": "500"},
    }


def test_a_busy_day_below_the_low_balance_threshold_is_no_anomaly(env: Env) -> None:
    env.do(lambda: env.ledger.grant("cus_q", spec("g", "1000"), key="g:g"))
    env.clock.set(T0 + timedelta(days=1))
    env.debit("cus_q", "d1", "1")
    env.deliver()
    env.clock.set(T0 + timedelta(days=2))
    env.debit("cus_q", "d2", "100")  # 100x the median, but not above the threshold 100
    env.deliver()
    assert env.bus.events(ANOMALY) == []
