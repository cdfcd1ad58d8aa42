"""The revenue aggregate rebuilt from the ledger (ReconcileFunction, ``{"revenue_rebuild": ...}``): lists the
days whose stored totals differ from a replay of every ledger, replaces them with ``write``, and finds nothing
to do afterwards."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.dal.money import MoneyRepository
from credits_ledger.dal.reconcile import ReconcileRepository
from credits_ledger.domain.burn import Tracker
from credits_ledger.domain.revenue import Totals
from credits_ledger.ledger import DebitRequest
from tests.support.expiry import load_handler
from tests.support.ledger import FakeClock, make_ledger, spec

D = Decimal
T0 = datetime(2030, 3, 1, 8, tzinfo=UTC)
TABLE = "CreditsTable"


def test_rebuild_lists_and_replaces_the_days_that_differ_from_the_ledger(moto_tables: Any) -> None:
    client = moto_tables.client
    clock = FakeClock(T0)
    ledger = make_ledger(client, TABLE, clock)
    registry = ReconcileRepository(client, TABLE)
    money = MoneyRepository(client, TABLE)
    # Given two accounts' ledgers over two days (spec(): paid grants cost their amount, in usd cents)
    ledger.grant("cus_r1", spec("r1", "300"), key="g:r1")
    ledger.grant("cus_r2", spec("r2", "50"), key="g:r2")
    clock.set(T0 + timedelta(days=1))
    ledger.debit("cus_r1", DebitRequest(key="u1", amount=D("120")))
    ledger.void("r2")
    for account in ("cus_r1", "cus_r2"):
        registry.register(account, T0)
    # and an aggregate that missed day 1 entirely and counted 7 cents too many on day 2 (a bug)
    money.record(Tracker("cus_r1", version=1), 0, {(date(2030, 3, 2), "usd"): Totals(recognized=D(127))})
    handler = load_handler("reconcile")
    handler.rebuild.cache_clear()

    def run(write: bool) -> dict[str, Any]:
        event = {"revenue_rebuild": {"from": "2030-03-01", "to": "2030-03-02", "write": write}}
        result: dict[str, Any] = handler.lambda_handler(event, FakeLambdaContext("ReconcileFunction"))
        return result

    # When it runs without write / Then it lists both days, and changes nothing
    dry = run(False)
    assert (dry["accounts"], dry["entries"], dry["days_differing"], dry["days_written"]) == (2, 4, 2, 0)
    assert dry["differences"][0] == {
        "day": "2030-03-01",
        "currency": "usd",
        "stored": {"sold": "0", "recognized": "0", "breakage": "0", "refunded": "0"},
        "recomputed": {"sold": "350", "recognized": "0", "breakage": "0", "refunded": "0"},
    }
    assert dry["differences"][1]["recomputed"] == {
        "sold": "0",
        "recognized": "120",
        "breakage": "50",
        "refunded": "0",
    }
    assert money.stored_days(date(2030, 3, 1), date(2030, 3, 2)) == {
        (date(2030, 3, 2), "usd"): Totals(recognized=D(127))
    }
    # When it runs with write / Then the days are the ledger's, and a second run finds nothing
    assert run(True)["days_written"] == 2
    assert money.stored_days(date(2030, 3, 1), date(2030, 3, 2)) == {
        (date(2030, 3, 1), "usd"): Totals(sold=D(350)),
        (date(2030, 3, 2), "usd"): Totals(recognized=D(120), breakage=D(50)),
    }
    again = run(False)
    assert (again["days_differing"], again["differences"]) == (0, [])


def test_usage_export_sums_usage_debits_per_account_month_and_meter(moto_tables: Any) -> None:
    client = moto_tables.client
    clock = FakeClock(T0)
    ledger = make_ledger(client, TABLE, clock)
    ledger.grant("cus_u", spec("gu", "1000"), key="g:gu")
    ReconcileRepository(client, TABLE).register("cus_u", T0)

    def usage(key: str, meter: str, quantity: str) -> None:
        metadata = {"meter": meter, "quantity": quantity}
        ledger.debit("cus_u", DebitRequest(key=key, amount=D(quantity), metadata=metadata))

    usage("u1", "api_call", "10")
    usage("u2", "api_call", "2.5")
    usage("u3", "storage_gb_hour", "7")
    clock.set(T0 + timedelta(days=31))  # April
    usage("u4", "api_call", "1")
    ledger.debit("cus_u", DebitRequest(key="plain", amount=D(3)))  # not usage: no meter
    handler = load_handler("reconcile")
    event = {"usage_export": {"from": "2030-03-01", "to": "2030-04-30"}}
    result = handler.lambda_handler(event, FakeLambdaContext("ReconcileFunction"))
    assert result["usage"] == [
        ["cus_u", "2030-03", "api_call", "12.5"],
        ["cus_u", "2030-03", "storage_gb_hour", "7"],
        ["cus_u", "2030-04", "api_call", "1"],
    ]
    march = handler.lambda_handler(
        {"usage_export": {"from": "2030-03-01", "to": "2030-03-31"}}, FakeLambdaContext("ReconcileFunction")
    )
    assert [row[1] for row in march["usage"]] == ["2030-03", "2030-03"]
