"""Bench section ``report``: the money view's cost (docs/money.md).

    python -m tools.bench --only report        # within make bench
    python -m tools.bench_report [ENDPOINT]    # alone (starts DynamoDB Local when no endpoint is given)

* the stream side: request units of one stream batch of 100 ledger entries, for a busy account (100
  debits of one account) and for 100 accounts with one debit each (trackers, grants, one transaction each);
* the report side: ``GET /v1/reports/revenue`` reads every day item from the first day to ``to``: 30 days
  and 1 year of history of a busy account (one bucket per day), and 1 year of many accounts (4 buckets),
  2 currencies.

Units are AWS figures from ``tools.bench.counted_client``; time is wall time on DynamoDB Local, median.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tools.bench import counted_client, credits_table, median_units, section_main

SECTION = "report"
RUNS = 5
BATCH = 100


class ReportRow:
    def __init__(self, name: str, read_units: float, write_units: float, ms: float, note: str = "") -> None:
        self.name, self.read_units, self.write_units, self.ms, self.note = (
            name,
            read_units,
            write_units,
            ms,
            note,
        )

    def __str__(self) -> str:
        return (
            f"{SECTION:8} {self.name:52} {self.read_units:8.2f} RRU {self.write_units:7.2f} WRU "
            f"{self.ms:8.2f} ms  {self.note}"
        )


def _stream_event(entries: list[Any]) -> dict[str, Any]:
    from credits_ledger.dal import items as it

    return {
        "Records": [
            {
                "eventID": uuid.uuid4().hex,
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": it.entry_key(entry.entry_key),
                    "NewImage": it.to_dynamo(it.entry_to_item(entry)),
                    "SequenceNumber": f"{index:024d}",
                },
            }
            for index, entry in enumerate(entries)
        ]
    }


def _seed_days(client: Any, table: str, days: int, buckets: int, end: date) -> None:
    from credits_ledger.dal.money import REVENUE_PK

    requests = []
    for n in range(days):
        day = end - timedelta(days=n)
        for bucket in range(buckets):
            item = {"pk": {"S": REVENUE_PK}, "sk": {"S": f"DAY#{day.isoformat()}#{bucket}"}}
            for currency in ("eur", "usd"):
                item[f"sold_{currency}"] = {"N": "1250000"}
                item[f"recognized_{currency}"] = {"N": "987654"}
                item[f"breakage_{currency}"] = {"N": "12345"}
                item[f"refunded_{currency}"] = {"N": "5000"}
            requests.append({"PutRequest": {"Item": item}})
    for start in range(0, len(requests), 25):
        client.batch_write_item(RequestItems={table: requests[start : start + 25]})


def run(endpoint: str, runs: int = RUNS) -> list[ReportRow]:
    from credits_ledger.bus import LogOnlyBus
    from credits_ledger.dal.account_settings import AccountSettingsRepository
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.dal.money import MoneyRepository
    from credits_ledger.domain.models import CostBasis, Source
    from credits_ledger.domain.transitions import GrantSpec
    from credits_ledger.jobs.money_stream import MoneyStream
    from credits_ledger.jobs.revenue import RevenueReport
    from credits_ledger.ledger import DebitRequest, Ledger

    client, counter = counted_client(endpoint)
    rows: list[ReportRow] = []

    # ---- stream side ---------------------------------------------------------------------------------------
    table = credits_table(client, "report")
    ledger = Ledger(AccountRepository(client, table))
    money = MoneyRepository(client, table)
    stream = MoneyStream(money, AccountSettingsRepository(client, table), LogOnlyBus(), lambda: Decimal(100))

    def paid(grant_id: str) -> GrantSpec:
        return GrantSpec(
            grant_id, Decimal(10_000_000), Source("bench"), cost_basis=CostBasis(Decimal(3_000_000), "eur")
        )

    busy = f"cus_busy{uuid.uuid4().hex[:6]}"
    ledger.grant(busy, paid(f"g-{busy}"), key=f"g:{busy}")
    many = [f"cus_m{i:03d}{uuid.uuid4().hex[:4]}" for i in range(BATCH)]
    for account in many:
        ledger.grant(account, paid(f"g-{account}"), key=f"g:{account}")

    def busy_entries(run: int) -> dict[str, Any]:
        entries = [
            ledger.debit(
                busy, DebitRequest(key=f"b{run}-{i}", amount=Decimal(3), metadata={"meter": "api_call"})
            ).entry
            for i in range(BATCH)
        ]
        return _stream_event(entries)

    def many_entries(run: int) -> dict[str, Any]:
        entries = [
            ledger.debit(
                a, DebitRequest(key=f"m{run}-{a}", amount=Decimal(3), metadata={"meter": "api_call"})
            ).entry
            for a in many
        ]
        return _stream_event(entries)

    def busy_batch(event: dict[str, Any]) -> None:
        stream.batch(event).account(busy)

    def many_batch(event: dict[str, Any]) -> None:
        batch = stream.batch(event)
        for account in many:
            batch.account(account)

    # the ledger writes that make a run's entries are its setup, not counted
    for name, op, setup in (
        (f"stream batch: {BATCH} debits of one busy account", busy_batch, busy_entries),
        (f"stream batch: {BATCH} accounts, one debit each", many_batch, many_entries),
    ):
        reads, writes, ms = median_units(counter, runs, op, setup)
        rows.append(
            ReportRow(
                name, reads, writes, ms, note=f"per entry: {reads / BATCH:.3f} RRU, {writes / BATCH:.3f} WRU"
            )
        )

    # ---- report side --------------------------------------------------------------------------------------
    end = datetime.now(UTC).date()
    for label, days, buckets in (
        ("30 days of a busy account", 30, 1),
        ("1 year of a busy account", 365, 1),
        ("1 year of many accounts (4 buckets a day)", 365, 4),
    ):
        table = credits_table(client, "report")
        _seed_days(client, table, days, buckets, end)
        report = RevenueReport(MoneyRepository(client, table))
        start = end - timedelta(days=days - 1)
        reads, writes, ms = median_units(counter, runs, lambda _run, r=report, s=start: r.lines(s, end))
        rows.append(
            ReportRow(f"report {label}", reads, writes, ms, note=f"{days * buckets} day items, 2 currencies")
        )
        tail = end - timedelta(days=29)
        if days > 30:
            reads, writes, ms = median_units(counter, runs, lambda _run, r=report, t=tail: r.lines(t, end))
            rows.append(
                ReportRow(
                    f"report last 30 days of {label}",
                    reads,
                    writes,
                    ms,
                    note="the opening balance reads every earlier day",
                )
            )
    return rows


if __name__ == "__main__":
    section_main(run)
