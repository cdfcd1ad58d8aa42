"""MoneyRepository: the daily revenue aggregate and the ledger stream's per-account tracker.

  daily revenue   pk=REVENUE               sk=DAY#<YYYY-MM-DD>#<bucket 0..3>
                  attributes ``<flow>_<currency>`` (sold_eur, recognized_eur, breakage_eur, refunded_eur)
  money tracker   pk=ACCOUNT#<account>     sk=MONEY
                  ``upto``/``above`` (entries counted), ``burn`` {day: {meter: credits}}, ``since``,
                  ``anomaly_day`` (the last) and ``anomalies`` (days raised, last 31 days), ``v``

A stream batch's contribution of one account is ONE transaction: the tracker ``Put`` conditioned on the
version it was decided on, plus an ``ADD`` to each day item it touches. Either both commit or neither, and
a redelivered record finds its seq in the tracker, so nothing counts twice. Day items are spread over four
buckets (by account) so that concurrent batches of different accounts rarely conflict on one item; the
report reads all buckets of a day. Neither item carries ``account_id``: they are in no index.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import (
    TRANSACTION_CANCELLED,
    TableRepository,
    cancellation_codes,
    error_code,
    failed_condition,
)
from credits_ledger.domain.burn import Applied, Tracker
from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.revenue import Flow, GrantCost, Totals

REVENUE_PK = "REVENUE"
TRACKER_SK = "MONEY"
BUCKETS = 4
FLOWS = tuple(Flow)


class TrackerMoved(CreditsError):
    """The tracker is not at the version this contribution was decided on (a concurrent or replayed batch):
    re-read and decide again."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"money tracker of {account_id} changed concurrently")
        self.account_id = account_id


class AggregateBusy(CreditsError):
    """A day item stayed contended by concurrent transactions through every retry."""


def bucket_of(account_id: str) -> int:
    return zlib.crc32(account_id.encode("utf-8")) % BUCKETS


def day_key(day: date, bucket: int) -> dict[str, Any]:
    return it.to_dynamo({"pk": REVENUE_PK, "sk": f"DAY#{day.isoformat()}#{bucket}"})


def tracker_key(account_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"ACCOUNT#{account_id}", "sk": TRACKER_SK})


def attribute(flow: Flow, currency: str) -> str:
    return f"{flow.value}_{currency.lower()}"


def tracker_to_item(tracker: Tracker) -> it.Item:
    item: it.Item = {
        "pk": f"ACCOUNT#{tracker.account_id}",
        "sk": TRACKER_SK,
        "upto": tracker.applied.upto,
        "v": tracker.version,
        "burn": {day.isoformat(): dict(meters) for day, meters in tracker.burn.items()},
    }
    if tracker.applied.above:
        item["above"] = set(tracker.applied.above)
    if tracker.since is not None:
        item["since"] = tracker.since.isoformat()
    if tracker.anomaly_day is not None:
        item["anomaly_day"] = tracker.anomaly_day.isoformat()
    if tracker.anomalies:
        item["anomalies"] = {d.isoformat() for d in tracker.anomalies}
    return item


def tracker_from_item(account_id: str, item: it.Item | None) -> Tracker:
    if not item:
        return Tracker(account_id)
    return Tracker(
        account_id=account_id,
        applied=Applied(int(item.get("upto", 0)), frozenset(int(s) for s in item.get("above", ()))),
        burn={
            date.fromisoformat(day): {meter: Decimal(v) for meter, v in meters.items()}
            for day, meters in (item.get("burn") or {}).items()
        },
        since=date.fromisoformat(item["since"]) if item.get("since") else None,
        anomaly_day=date.fromisoformat(item["anomaly_day"]) if item.get("anomaly_day") else None,
        version=int(item.get("v", 0)),
        anomalies=frozenset(date.fromisoformat(d) for d in item.get("anomalies", ())),
    )


def grant_cost_from_item(item: it.Item) -> GrantCost:
    return GrantCost(
        grant_id=item["grant_id"],
        amount=Decimal(item["amount"]),
        cost=Decimal(item.get("cost_amount") or 0),
        currency=str(item["cost_currency"]).lower() if item.get("cost_currency") else None,
    )


def totals_from_item(item: it.Item) -> dict[str, Totals]:
    """The per-currency totals of one day item."""
    out: dict[str, Totals] = {}
    for name, value in item.items():
        flow_name, _, currency = str(name).partition("_")
        if not currency or flow_name not in {f.value for f in FLOWS}:
            continue
        out[currency] = out.get(currency, Totals()).with_flow(Flow(flow_name), Decimal(value))
    return out


class MoneyRepository(TableRepository):
    def __init__(self, client: Any | None = None, table: str | None = None, max_attempts: int = 8) -> None:
        super().__init__(client, table)
        self._max_attempts = max_attempts

    # ---- tracker -------------------------------------------------------------------------------------------
    def trackers(self, account_ids: Iterable[str]) -> dict[str, Tracker]:
        """Trackers of several accounts, strongly consistent (the previous batch may have just written)."""
        wanted = list(dict.fromkeys(account_ids))
        found = {a: Tracker(a) for a in wanted}
        for raw in self._batch_get([tracker_key(a) for a in wanted]):
            item = it.from_dynamo(raw)
            account_id = str(item["pk"]).removeprefix("ACCOUNT#")
            found[account_id] = tracker_from_item(account_id, item)
        return found

    def tracker(self, account_id: str, *, consistent: bool = False) -> Tracker:
        raw = self._client.get_item(
            TableName=self._table, Key=tracker_key(account_id), ConsistentRead=consistent
        ).get("Item")
        return tracker_from_item(account_id, it.from_dynamo(raw) if raw else None)

    def record(
        self, tracker: Tracker, previous_version: int, days: Mapping[tuple[date, str], Totals]
    ) -> None:
        """Commit one account's contribution: the tracker (invariant: still at ``previous_version``) and the
        day totals, atomically. Raises TrackerMoved when the tracker moved; retries contention only."""
        actions: list[dict[str, Any]] = [{"Put": self._tracker_put(tracker, previous_version)}]
        by_day: dict[date, dict[str, Decimal]] = {}
        for (day, currency), totals in days.items():
            for flow in FLOWS:
                value = getattr(totals, flow.value)
                if value:
                    slot = by_day.setdefault(day, {})
                    name = attribute(flow, currency)
                    slot[name] = slot.get(name, Decimal(0)) + value
        bucket = bucket_of(tracker.account_id)
        for day, values in sorted(by_day.items()):
            names = {f"#a{i}": name for i, name in enumerate(sorted(values))}
            actions.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": day_key(day, bucket),
                        "UpdateExpression": "ADD " + ", ".join(f"{n} :v{n[2:]}" for n in names),
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": {
                            f":v{n[2:]}": {"N": str(values[name])} for n, name in names.items()
                        },
                    }
                }
            )
        self._transact(tracker.account_id, actions)

    def _tracker_put(self, tracker: Tracker, previous_version: int) -> dict[str, Any]:
        put: dict[str, Any] = {"TableName": self._table, "Item": it.to_dynamo(tracker_to_item(tracker))}
        if previous_version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "v = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": str(previous_version)}}
        return put

    def _transact(self, account_id: str, actions: list[dict[str, Any]]) -> None:
        for attempt in range(self._max_attempts):
            try:
                if len(actions) == 1:
                    self._client.put_item(**actions[0]["Put"])
                else:
                    self._client.transact_write_items(TransactItems=actions)
                return
            except ClientError as exc:
                if failed_condition(exc):
                    raise TrackerMoved(account_id) from exc
                if error_code(exc) != TRANSACTION_CANCELLED:
                    raise
                reasons = cancellation_codes(exc)
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    raise TrackerMoved(account_id) from exc
                if not any(r in ("TransactionConflict", "ThrottlingError") for r in reasons):
                    raise
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        raise AggregateBusy(f"revenue aggregate still contended after {self._max_attempts} attempts")

    # ---- grants' cost basis ------------------------------------------------------------------------------
    def grant_costs(self, grant_ids: Iterable[str], *, consistent: bool = False) -> dict[str, GrantCost]:
        """Amount and cost basis of grants (BatchGetItem, eventually consistent: a grant item is written in
        the transaction of its first entry, so it exists before any of its stream records is read)."""
        wanted = list(dict.fromkeys(grant_ids))
        found: dict[str, GrantCost] = {}
        keys = [it.grant_key(g) for g in wanted]
        projection = "grant_id, amount, cost_amount, cost_currency"
        for raw in self._batch_get(keys, consistent=consistent, ProjectionExpression=projection):
            item = it.from_dynamo(raw)
            found[item["grant_id"]] = grant_cost_from_item(item)
        return found

    # ---- daily aggregate ---------------------------------------------------------------------------------
    def days_until(self, end: date) -> list[tuple[date, str, Totals]]:
        """Every day total from the first day up to ``end`` (inclusive), all buckets: one Query, eventually
        consistent; its cost follows the number of days, never the number of entries."""
        out: list[tuple[date, str, Totals]] = []
        for item in self._query_all(
            {
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
                "ExpressionAttributeValues": {
                    ":pk": {"S": REVENUE_PK},
                    ":lo": {"S": "DAY#"},
                    ":hi": {"S": f"DAY#{end.isoformat()}#~"},
                },
            }
        ):
            day = date.fromisoformat(str(item["sk"]).split("#")[1])
            for currency, totals in totals_from_item(item).items():
                out.append((day, currency, totals))
        return out

    def stored_days(self, start: date, end: date) -> dict[tuple[date, str], Totals]:
        """Day totals of ``start..end`` summed over buckets (the rebuild compares these)."""
        out: dict[tuple[date, str], Totals] = {}
        for day, currency, totals in self.days_until(end):
            if day >= start:
                out[(day, currency)] = out.get((day, currency), Totals()).plus(totals)
        return out

    def replace_day(self, day: date, totals: Mapping[str, Totals]) -> None:
        """Overwrite one day with recomputed totals (bucket 0; the other buckets emptied) in one transaction."""
        item: it.Item = {"pk": REVENUE_PK, "sk": f"DAY#{day.isoformat()}#0"}
        for currency, values in totals.items():
            for flow in FLOWS:
                value = getattr(values, flow.value)
                if value:
                    item[attribute(flow, currency)] = value
        actions: list[dict[str, Any]] = [{"Put": {"TableName": self._table, "Item": it.to_dynamo(item)}}]
        actions += [{"Put": {"TableName": self._table, "Item": day_key(day, b)}} for b in range(1, BUCKETS)]
        self._client.transact_write_items(TransactItems=actions)
