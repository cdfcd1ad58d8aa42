"""SubscriptionRepository: subscription records and the credits of subscription items' billing periods.

subscription     pk=ACCOUNT#<account>                     sk=SUBSCRIPTION#<sub id>  (snapshot, end, trial, periods)
item period      pk=SUBPERIOD#<item id>#<period end>      sk=SUBPERIOD              (grants, revocations, voids)

Both are monotone fact records like payment records (dal/payments.py): ``version`` guards every write, and
they are written in the transaction that records the Stripe event (facts) or applies the ledger change they
note (convergence). A subscription lives in its account's partition, so the account's subscriptions are one
Query (``begins_with(sk, "SUBSCRIPTION#")``) without an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from credits_ledger.dal import items as it
from credits_ledger.dal.client import TableRepository
from credits_ledger.domain.subscriptions import (
    PoolGrant,
    PoolRecord,
    SubscriptionRecord,
    SubscriptionSnapshot,
    Trial,
)

POOL_SK = "SUBPERIOD"
SUBSCRIPTION_PREFIX = "SUBSCRIPTION#"


def _t(value: datetime | None) -> str | None:
    return it.iso(value) if value else None


def _p(value: str | None) -> datetime | None:
    return it.parse_iso(value) if value else None


def pool_to_item(record: PoolRecord) -> dict[str, Any]:
    return {
        "pk": f"SUBPERIOD#{record.key}",
        "sk": POOL_SK,
        "version": record.version,
        "account": record.account_id,
        "subscription": record.subscription,
        "grants": {
            g.grant_id: {"credits": g.credits, "start": it.iso(g.start), "end": it.iso(g.end), "plan": g.plan}
            for g in record.grants.values()
        },
        "revocations": {line: {"plan": p, "credits": c} for line, (p, c) in record.revocations.items()},
        "revoked": dict(record.revoked),
        "revoked_for": dict(record.revoked_for),
        "voided": list(record.voided),
    }


def pool_from_item(key: str, item: dict[str, Any] | None) -> PoolRecord:
    if item is None:
        return PoolRecord(key=key)
    return PoolRecord(
        key=key,
        version=int(item["version"]),
        account_id=item.get("account"),
        subscription=item.get("subscription"),
        grants={
            grant_id: PoolGrant(
                grant_id,
                Decimal(g["credits"]),
                it.parse_iso(g["start"]),
                it.parse_iso(g["end"]),
                g.get("plan", ""),
            )
            for grant_id, g in (item.get("grants") or {}).items()
        },
        revocations={
            k: (v.get("plan", ""), Decimal(v["credits"])) for k, v in (item.get("revocations") or {}).items()
        },
        revoked={k: Decimal(v) for k, v in (item.get("revoked") or {}).items()},
        revoked_for={k: Decimal(v) for k, v in (item.get("revoked_for") or {}).items()},
        voided=tuple(item.get("voided") or ()),
    )


def _snapshot_to_item(snapshot: SubscriptionSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {
        "account": snapshot.account_id,
        "as_of": it.iso(snapshot.as_of),
        "status": snapshot.status,
        "plan": snapshot.plan,
        "item": snapshot.subscription_item,
        "quantity": snapshot.quantity,
        "period_start": _t(snapshot.period_start),
        "period_end": _t(snapshot.period_end),
        "cancel_at_period_end": snapshot.cancel_at_period_end,
        "ended_at": _t(snapshot.ended_at),
        "on_cancel": snapshot.on_cancel,
    }


def _snapshot_from_item(subscription: str, raw: dict[str, Any] | None) -> SubscriptionSnapshot | None:
    if not raw:
        return None
    return SubscriptionSnapshot(
        subscription=subscription,
        account_id=raw["account"],
        as_of=it.parse_iso(raw["as_of"]),
        status=raw["status"],
        plan=raw.get("plan"),
        subscription_item=raw.get("item"),
        quantity=int(raw.get("quantity", 1)),
        period_start=_p(raw.get("period_start")),
        period_end=_p(raw.get("period_end")),
        cancel_at_period_end=bool(raw.get("cancel_at_period_end")),
        ended_at=_p(raw.get("ended_at")),
        on_cancel=raw.get("on_cancel", "period_end"),
    )


def subscription_to_item(record: SubscriptionRecord) -> dict[str, Any]:
    snapshot = _snapshot_to_item(record.snapshot)
    trial = record.trial
    return {
        "pk": f"ACCOUNT#{record.account_id}",
        "sk": f"{SUBSCRIPTION_PREFIX}{record.key}",
        "version": record.version,
        "snapshot": {k: v for k, v in snapshot.items() if v is not None} if snapshot else None,
        "ended_at": _t(record.ended_at),
        "trial": {"start": it.iso(trial.start), "end": it.iso(trial.end), "credits": trial.credits}
        if trial
        else None,
        "trial_granted": record.trial_granted,
        "pools": list(record.pools),
    }


def subscription_from_item(account_id: str, key: str, item: dict[str, Any] | None) -> SubscriptionRecord:
    if item is None:
        return SubscriptionRecord(key=key, account_id=account_id)
    trial = item.get("trial")
    return SubscriptionRecord(
        key=key,
        account_id=account_id,
        version=int(item["version"]),
        snapshot=_snapshot_from_item(key, item.get("snapshot")),
        ended_at=_p(item.get("ended_at")),
        trial=Trial(it.parse_iso(trial["start"]), it.parse_iso(trial["end"]), Decimal(trial["credits"]))
        if trial
        else None,
        trial_granted=bool(item.get("trial_granted")),
        pools=tuple(item.get("pools") or ()),
    )


class SubscriptionRepository(TableRepository):
    def _get_many(self, keys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for raw in self._batch_get(keys):
            item = it.from_dynamo(raw)
            found[f"{item['pk']}|{item['sk']}"] = item
        return found

    def pools(self, keys: Sequence[str]) -> dict[str, PoolRecord]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        found = self._get_many([it.to_dynamo({"pk": f"SUBPERIOD#{k}", "sk": POOL_SK}) for k in wanted])
        return {k: pool_from_item(k, found.get(f"SUBPERIOD#{k}|{POOL_SK}")) for k in wanted}

    def subscriptions(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], SubscriptionRecord]:
        """Records by (account, subscription id)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        found = self._get_many(
            [it.to_dynamo({"pk": f"ACCOUNT#{a}", "sk": f"{SUBSCRIPTION_PREFIX}{s}"}) for a, s in wanted]
        )
        return {
            (a, s): subscription_from_item(a, s, found.get(f"ACCOUNT#{a}|{SUBSCRIPTION_PREFIX}{s}"))
            for a, s in wanted
        }

    def _versioned_put(self, item: dict[str, Any], old_version: int) -> dict[str, Any]:
        item = {**item, "version": old_version + 1}
        put: dict[str, Any] = {"TableName": self._table, "Item": it.to_dynamo(item)}
        if old_version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "version = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": str(old_version)}}
        return {"Put": put}

    def pool_put(self, old: PoolRecord, new: PoolRecord) -> dict[str, Any]:
        """A TransactWriteItems Put of ``new`` that only succeeds if the record is still ``old``."""
        return self._versioned_put(pool_to_item(new), old.version)

    def subscription_put(self, old: SubscriptionRecord, new: SubscriptionRecord) -> dict[str, Any]:
        return self._versioned_put(subscription_to_item(new), old.version)

    def for_account(self, account_id: str) -> list[SubscriptionRecord]:
        """The account's subscriptions: one Query of its partition (eventually consistent)."""
        return [
            subscription_from_item(account_id, item["sk"].removeprefix(SUBSCRIPTION_PREFIX), item)
            for item in self._partition(f"ACCOUNT#{account_id}", SUBSCRIPTION_PREFIX)
        ]
