"""ReconcileRepository: the registry of accounts to reconcile, with each one's checkpoint; and the ledger range
reads reconciliation needs.

  reconcile checkpoint   pk=RECONCILE#<bucket 00..15>  sk=<account id>

The ledger stream function registers an account when its state item is first inserted (one conditional
put per account, ever). The reconcile job lists the registry with one Query per bucket (items of ~150 bytes:
~50 accounts per read unit) instead of scanning the table, whose size is dominated by grants and ledger
entries. Each item carries the last verified ``seq`` and ledger ``total`` so a run reads only the entries
written since. Sixteen buckets spread the registry over partitions; the number is fixed (changing it means
re-registering).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.accounts import LEDGER_INDEX
from credits_ledger.dal.client import TableRepository, failed_condition
from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.domain.reconcile import Checkpoint

BUCKETS = 16
PREFIX = "RECONCILE#"


class CheckpointMoved(CreditsError):
    """The checkpoint is no longer the one this check started from (a concurrent run advanced it)."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"reconcile checkpoint of {account_id} moved concurrently")
        self.account_id = account_id


@dataclass(frozen=True)
class RegistryPage:
    checkpoints: list[Checkpoint]
    bucket: int
    next_cursor: str | None  # resume inside ``bucket``; None: the bucket is done


def bucket_of(account_id: str) -> int:
    return hashlib.sha256(account_id.encode()).digest()[0] % BUCKETS


def registry_key(account_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"{PREFIX}{bucket_of(account_id):02d}", "sk": account_id})


def _checkpoint_from_item(item: it.Item) -> Checkpoint:
    return Checkpoint(
        account_id=item["sk"],
        seq=int(item.get("checked_seq", 0)),
        total=item.get("checked_total", Decimal(0)),
        verified_at=it.parse_iso(item["checked_at"]) if item.get("checked_at") else None,
        noted_mismatch="mismatch" in item,
    )


class ReconcileRepository(TableRepository):
    # ---- registry ----------------------------------------------------------------------------------------
    def register(self, account_id: str, now: datetime) -> bool:
        """Add the account to the registry; False when it was there already (invariant: never reset a
        checkpoint)."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item=it.to_dynamo(
                    {
                        **it.from_dynamo(registry_key(account_id)),
                        "account": account_id,
                        "registered_at": it.iso(now),
                    }
                ),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if failed_condition(exc):
                return False
            raise
        return True

    def registry_page(self, bucket: int, cursor: str | None = None, limit: int = 100) -> RegistryPage:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": f"{PREFIX}{bucket:02d}"}},
            "Limit": limit,
        }
        if cursor:
            query["ExclusiveStartKey"] = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        response = self._client.query(**query)
        checkpoints = [_checkpoint_from_item(it.from_dynamo(raw)) for raw in response.get("Items", [])]
        last = response.get("LastEvaluatedKey")
        next_cursor = base64.urlsafe_b64encode(json.dumps(last).encode()).decode() if last else None
        return RegistryPage(checkpoints, bucket, next_cursor)

    def save_checkpoint(self, checkpoint: Checkpoint, previous: Checkpoint) -> None:
        """Advance the checkpoint. Invariant: it only moves forward from the one the check started from."""
        assert checkpoint.verified_at is not None
        values: dict[str, Any] = {
            ":s": {"N": str(checkpoint.seq)},
            ":t": {"N": str(checkpoint.total)},
            ":at": {"S": it.iso(checkpoint.verified_at)},
            ":a": {"S": checkpoint.account_id},
        }
        if previous.verified_at is None:
            condition = "attribute_not_exists(checked_seq)"
        else:
            condition = "checked_seq = :prev"
            values[":prev"] = {"N": str(previous.seq)}
        try:
            self._client.update_item(
                TableName=self._table,
                Key=registry_key(checkpoint.account_id),
                UpdateExpression="SET checked_seq = :s, checked_total = :t, checked_at = :at, #a = :a "
                "REMOVE mismatch",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#a": "account"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
            raise CheckpointMoved(checkpoint.account_id) from exc

    def mark_mismatch(self, account_id: str, detail: dict[str, Any], now: datetime) -> None:
        """Record the last mismatch on the checkpoint item (for operators); the checkpoint does not move.
        Invariant: the account is registered (never create a half item)."""
        self._client.update_item(
            TableName=self._table,
            Key=registry_key(account_id),
            UpdateExpression="SET mismatch = :m, mismatch_at = :at",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={
                ":m": {"S": json.dumps(detail, default=str)},
                ":at": {"S": it.iso(now)},
            },
        )

    def scan_account_ids(self, cursor: str | None = None, limit: int = 1000) -> tuple[list[str], str | None]:
        """One-off backfill of the registry (accounts created before the stream function existed): a Scan of
        the whole table filtered to state items. Costs a read of the entire table; never part of the nightly
        run."""
        scan: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "sk = :state",
            "ProjectionExpression": "account_id",
            "ExpressionAttributeValues": {":state": {"S": it.STATE_SK}},
            "Limit": limit,
        }
        if cursor:
            scan["ExclusiveStartKey"] = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        response = self._client.scan(**scan)
        ids = [str(it.from_dynamo(raw)["account_id"]) for raw in response.get("Items", [])]
        last = response.get("LastEvaluatedKey")
        return ids, base64.urlsafe_b64encode(json.dumps(last).encode()).decode() if last else None

    # ---- the account's ledger, by seq range (GSI LedgerByAccount) -----------------------------------------
    def entries_between(self, account_id: str, after_seq: int, upto_seq: int) -> Iterator[LedgerEntry]:
        """Entries with ``after_seq < seq <= upto_seq`` in seq order: cost follows the entries since the
        checkpoint, not the account's history."""
        if upto_seq <= after_seq:
            return
        query = {
            "IndexName": LEDGER_INDEX,
            "KeyConditionExpression": "account_id = :a AND seq BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":a": {"S": account_id},
                ":lo": {"N": str(after_seq + 1)},
                ":hi": {"N": str(upto_seq)},
            },
        }
        for item in self._query_all(query):
            yield it.entry_from_item(item)
