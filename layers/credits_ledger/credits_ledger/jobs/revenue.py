"""The revenue report from the daily aggregate, and its rebuild from the ledger (docs/money.md §3-4).

``RevenueReport.lines(start, end)``: one Query of the day items up to ``end``; cost follows days.

``RevenueRebuild.run(start, end, write)``: the ledger is the truth and the aggregate is derived from it.
Replays every registered account's whole ledger (``revenue.Replay``: consumption per grant counted entry by
entry, so entries without ``remaining_after`` are exact too), compares the recomputed days of ``start..end``
with the stored ones and lists every difference; with ``write`` it replaces the differing days. Started as
``{"revenue_rebuild": {"from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "write": false}}`` on ReconcileFunction
(``credits report rebuild``). Cost: a read of every ledger entry and grant record; an operator's repair,
never scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.money import MoneyRepository
from credits_ledger.dal.reconcile import BUCKETS, ReconcileRepository
from credits_ledger.domain.money import format_amount
from credits_ledger.domain.revenue import Flow, Replay, RevenueLine, Totals, revenue_report
from credits_ledger.observability import logger

MAX_LISTED = 200


class RevenueReport:
    def __init__(self, money: MoneyRepository) -> None:
        self.money = money

    def lines(self, start: date, end: date) -> list[RevenueLine]:
        return revenue_report(self.money.days_until(end), start, end)


def line_view(line: RevenueLine) -> dict[str, Any]:
    """The wire form of a report line: amounts as strings of minor units."""
    return {
        "currency": line.currency,
        "opening_deferred": format_amount(line.opening_deferred),
        "sold": format_amount(line.sold),
        "recognized": format_amount(line.recognized),
        "breakage": format_amount(line.breakage),
        "refunded": format_amount(line.refunded),
        "closing_deferred": format_amount(line.closing_deferred),
    }


class UsageExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    start: date = Field(alias="from")
    end: date = Field(alias="to")


def export_usage(
    registry: ReconcileRepository, accounts: AccountRepository, request: UsageExportRequest
) -> dict[str, Any]:
    """Recorded usage of every registered account, per account, month and meter (``credits simulate``):
    usage debits keep their meter and quantity. Reads every ledger: an operator's tool, never scheduled."""
    totals: dict[tuple[str, str, str], Any] = {}
    for account_id in _registered(registry):
        state = accounts.state(account_id, consistent=True, next_expiry=False)  # its version
        for entry in registry.entries_between(account_id, 0, state.version):
            meter, quantity = entry.metadata.get("meter"), entry.metadata.get("quantity")
            day = entry.created_at.date()
            if (
                entry.type.value != "debit"
                or not meter
                or not quantity
                or not request.start <= day <= request.end
            ):
                continue
            key = (account_id, day.strftime("%Y-%m"), meter)
            totals[key] = totals.get(key, 0) + Decimal(quantity)
    return {
        "from": request.start.isoformat(),
        "to": request.end.isoformat(),
        "usage": [[a, m, meter, format_amount(q)] for (a, m, meter), q in sorted(totals.items())],
    }


def _registered(registry: ReconcileRepository) -> list[str]:
    found: list[str] = []
    for bucket in range(BUCKETS):
        cursor: str | None = None
        while True:
            page = registry.registry_page(bucket, cursor)
            found.extend(c.account_id for c in page.checkpoints)
            cursor = page.next_cursor
            if cursor is None:
                break
    return sorted(found)


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    start: date = Field(alias="from")
    end: date = Field(alias="to")
    write: bool = False


def _totals_view(totals: Totals | None) -> dict[str, str]:
    totals = totals or Totals()
    return {flow.value: format_amount(getattr(totals, flow.value)) for flow in Flow}


@dataclass
class RebuildSummary:
    start: date
    end: date
    write: bool
    accounts: int = 0
    entries: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    days_written: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "accounts": self.accounts,
            "entries": self.entries,
            "days_differing": len({d["day"] for d in self.differences}),
            "differences": self.differences[:MAX_LISTED],
            "written": self.write,
            "days_written": self.days_written,
        }


class RevenueRebuild:
    def __init__(
        self, registry: ReconcileRepository, accounts: AccountRepository, money: MoneyRepository
    ) -> None:
        self.registry = registry
        self.accounts = accounts
        self.money = money

    def run(self, request: RebuildRequest) -> RebuildSummary:
        if request.end < request.start:
            raise ValueError("the range ends before it starts")
        summary = RebuildSummary(request.start, request.end, request.write)
        recomputed: dict[tuple[date, str], Totals] = {}
        for account_id in self._accounts():
            summary.accounts += 1
            state = self.accounts.state(account_id, consistent=True, next_expiry=False)  # its version
            entries = list(self.registry.entries_between(account_id, 0, state.version))
            summary.entries += len(entries)
            grants = {a.grant_id for e in entries for a in e.allocations}
            replay = Replay(self.money.grant_costs(grants, consistent=True))
            for entry in entries:
                replay.add(entry)
            for key, totals in replay.days.items():
                if request.start <= key[0] <= request.end:
                    recomputed[key] = recomputed.get(key, Totals()).plus(totals)
        stored = self.money.stored_days(request.start, request.end)
        differing: set[date] = set()
        for key in sorted(set(recomputed) | set(stored)):
            want, have = recomputed.get(key, Totals()), stored.get(key, Totals())
            if want != have:
                differing.add(key[0])
                summary.differences.append(
                    {
                        "day": key[0].isoformat(),
                        "currency": key[1],
                        "stored": _totals_view(have),
                        "recomputed": _totals_view(want),
                    }
                )
        if request.write:
            for day in sorted(differing):
                self.money.replace_day(day, {cur: t for (d, cur), t in recomputed.items() if d == day})
                summary.days_written += 1
        logger.info("revenue rebuild", **{k: v for k, v in summary.as_dict().items() if k != "differences"})
        return summary

    def _accounts(self) -> list[str]:
        return _registered(self.registry)
