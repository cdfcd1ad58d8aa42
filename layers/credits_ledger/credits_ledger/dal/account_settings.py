"""AccountSettingsRepository: per-account settings and alert state in DynamoDB.

  account settings   pk=ACCOUNT#<account>  sk=SETTINGS

Attributes: ``low_balance_threshold`` (admin override of ``[alerts] low_balance_threshold``; absent: the
pricing default), ``overage_policy`` / ``overage_limit`` (domain/overage.py), ``auto_topup`` (a map:
enabled, threshold, pack, quantity, monthly_limit; domain/topup.py), ``updated_at``; ``stripe_customer`` /
``stripe_customer_at`` (written by the Stripe webhook: the customer that last paid for an account named by
``metadata.credits_customer``); and, written only by the ledger stream function, ``alert_available``: the
available balance last seen in a different alert band (the memory that makes alerts fire on crossings only).
The item lives in the account's partition but never carries ``account_id``/``seq``/``grant_id``, so it is in
no GSI. Every write states its invariant as a condition and a failed one becomes a named error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import TableRepository, failed_condition
from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.models import is_stripe_customer_id
from credits_ledger.domain.overage import OveragePolicy, OverageSettings
from credits_ledger.domain.topup import AutoTopupSettings

SETTINGS_SK = "SETTINGS"


@dataclass(frozen=True)
class AccountSettings:
    account_id: str
    low_balance_threshold: Decimal | None = None
    updated_at: datetime | None = None
    alert_available: Decimal | None = None
    overage: OverageSettings = OverageSettings()
    auto_topup: AutoTopupSettings | None = None
    # the Stripe customer that last paid for an account named by metadata.credits_customer (else None: the
    # account id is the customer id); overage meter events and top-ups go to it
    stripe_customer: str | None = None

    @property
    def billing_customer(self) -> str | None:
        """The Stripe customer to bill for this account: the account id when it is a Stripe customer id (the
        account is that customer, whoever paid), else the customer linked by its payments; None without."""
        if is_stripe_customer_id(self.account_id):
            return self.account_id
        return self.stripe_customer


@dataclass(frozen=True)
class SettingsDocument:
    """What an admin sets (PUT replaces all of it); the alert state is the stream's and is kept."""

    low_balance_threshold: Decimal | None = None
    overage: OverageSettings = OverageSettings()
    auto_topup: AutoTopupSettings | None = None


class StaleSettingsWrite(CreditsError):
    """A newer settings write (later ``updated_at``) is already stored: this older one is dropped."""

    def __init__(self, current: AccountSettings) -> None:
        super().__init__(f"settings of {current.account_id} were changed at {current.updated_at}")
        self.current = current


class AlertStateChanged(CreditsError):
    """The stored alert state is not the one this decision was based on (a concurrent or replayed batch)."""

    def __init__(self, current: AccountSettings) -> None:
        super().__init__(f"alert state of {current.account_id} changed concurrently")
        self.current = current


def settings_key(account_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"ACCOUNT#{account_id}", "sk": SETTINGS_SK})


def settings_from_item(account_id: str, item: it.Item | None) -> AccountSettings:
    if not item:
        return AccountSettings(account_id)
    topup = item.get("auto_topup")
    return AccountSettings(
        account_id=account_id,
        low_balance_threshold=item.get("low_balance_threshold"),
        updated_at=it.parse_iso(item["updated_at"]) if item.get("updated_at") else None,
        alert_available=item.get("alert_available"),
        overage=OverageSettings(
            policy=OveragePolicy(item.get("overage_policy", OveragePolicy.REJECT.value)),
            limit=item.get("overage_limit"),
        ),
        auto_topup=AutoTopupSettings(
            enabled=bool(topup["enabled"]),
            threshold=topup["threshold"],
            pack=topup["pack"],
            quantity=int(topup.get("quantity", 1)),
            monthly_limit=int(topup["monthly_limit"]) if topup.get("monthly_limit") is not None else None,
        )
        if topup
        else None,
        stripe_customer=item.get("stripe_customer"),
    )


def _document_update(document: SettingsDocument) -> tuple[list[str], list[str], dict[str, Any]]:
    """SET and REMOVE clauses writing ``document`` over the item's admin settings (alert state untouched)."""
    values: dict[str, Any] = {
        "low_balance_threshold": document.low_balance_threshold,
        "overage_policy": document.overage.policy.value,
        "overage_limit": document.overage.limit,
        "auto_topup": {
            "enabled": document.auto_topup.enabled,
            "threshold": document.auto_topup.threshold,
            "pack": document.auto_topup.pack,
            "quantity": document.auto_topup.quantity,
            "monthly_limit": document.auto_topup.monthly_limit,
        }
        if document.auto_topup
        else None,
    }
    sets: list[str] = []
    removes: list[str] = []
    attribute_values: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            removes.append(name)
        else:
            sets.append(f"{name} = :{name}")
            attribute_values[f":{name}"] = value
    return sets, removes, it.to_dynamo(attribute_values)


class AccountSettingsRepository(TableRepository):
    def get(self, account_id: str, *, consistent: bool = True) -> AccountSettings:
        response = self._client.get_item(
            TableName=self._table, Key=settings_key(account_id), ConsistentRead=consistent
        )
        raw = response.get("Item")
        return settings_from_item(account_id, it.from_dynamo(raw) if raw else None)

    def get_many(self, account_ids: Iterable[str], *, consistent: bool = True) -> dict[str, AccountSettings]:
        """Settings of several accounts in BatchGetItem calls (an account without an item gets defaults)."""
        wanted = list(dict.fromkeys(account_ids))
        found: dict[str, AccountSettings] = {a: AccountSettings(a) for a in wanted}
        for raw in self._batch_get([settings_key(a) for a in wanted], consistent=consistent):
            item = it.from_dynamo(raw)
            account_id = item["pk"].removeprefix("ACCOUNT#")
            found[account_id] = settings_from_item(account_id, item)
        return found

    def put_threshold(self, account_id: str, threshold: Decimal | None, now: datetime) -> AccountSettings:
        """Set (or, with None, clear) the low-balance threshold alone (the other settings at their defaults)."""
        return self.put(account_id, SettingsDocument(low_balance_threshold=threshold), now)

    def put(self, account_id: str, document: SettingsDocument, now: datetime) -> AccountSettings:
        """Replace the account's admin settings with ``document``. Invariant: never overwrite a write stamped
        later than ``now`` (last writer by time wins, whatever order the requests arrive in)."""
        names = {"#u": "updated_at", "#a": "account"}
        sets, removes, values = _document_update(document)
        values.update({":now": {"S": it.iso(now)}, ":a": {"S": account_id}})
        update = "SET " + ", ".join(["#u = :now", "#a = :a", *sets])
        if removes:
            update += " REMOVE " + ", ".join(removes)
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=settings_key(account_id),
                UpdateExpression=update,
                ConditionExpression="attribute_not_exists(#u) OR #u <= :now",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
            raise StaleSettingsWrite(settings_from_item(account_id, _old_item(exc))) from exc
        return settings_from_item(account_id, it.from_dynamo(response["Attributes"]))

    def link_stripe_customer(self, account_id: str, customer: str, paid_at: datetime) -> bool:
        """Remember that ``customer`` paid for the account at ``paid_at``. Invariant: a later payment's link is
        never replaced by an earlier one's (events arrive in any order and again); the admin settings are
        untouched. False when a link at least as recent is stored."""
        return self._update_if(
            Key=settings_key(account_id),
            UpdateExpression="SET stripe_customer = :c, stripe_customer_at = :t, #a = :a",
            ConditionExpression="attribute_not_exists(stripe_customer_at) OR stripe_customer_at < :t",
            ExpressionAttributeNames={"#a": "account"},
            ExpressionAttributeValues=it.to_dynamo({":c": customer, ":t": it.iso(paid_at), ":a": account_id}),
        )

    def set_alert_available(self, account_id: str, available: Decimal, previous: Decimal | None) -> None:
        """Remember ``available`` as the alert state. Invariant: the stored state is still ``previous`` (absent
        when None), so two deciders never both raise the same crossing."""
        values: dict[str, Any] = {":new": {"N": str(available)}, ":a": {"S": account_id}}
        if previous is None:
            condition = "attribute_not_exists(alert_available)"
        else:
            condition = "alert_available = :prev"
            values[":prev"] = {"N": str(previous)}
        try:
            self._client.update_item(
                TableName=self._table,
                Key=settings_key(account_id),
                UpdateExpression="SET alert_available = :new, #a = :a",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#a": "account"},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
            raise AlertStateChanged(settings_from_item(account_id, _old_item(exc))) from exc


def _old_item(exc: ClientError) -> it.Item | None:
    raw = exc.response.get("Item")
    return it.from_dynamo(raw) if raw else None
