"""AccountRepository: the account aggregate (state, grants, ledger entries) in DynamoDB.

Every write of a change is one TransactWriteItems whose conditions state the invariants:
  - the account item still has the version the change was computed from (optimistic lock; no lost update,
    no overdraft: the balance check happened on exactly that version);
  - each ledger entry key does not exist yet (the key is the operation's idempotency key: nothing twice);
  - each new grant id is unused, and each grant being closed is not closed already.
A failed condition becomes a named error carrying the item DynamoDB returned
(ReturnValuesOnConditionCheckFailure), so callers retry or replay without re-reading. A cancellation no
retry can cure (an item over 400 KB, a validation error) is WriteRejected, never a VersionConflict.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import TableRepository, error_code, raise_unless_cancelled
from credits_ledger.dal.pages import Page, decode_cursor, encode_cursor, pages
from credits_ledger.domain.errors import (
    CreditsError,
    GrantNotFound,
    GrantRecordMismatch,
    InvalidCursor,
    InvalidGrant,
)
from credits_ledger.domain.models import TERMINAL_STATUSES, AccountState, Change, Grant, LedgerEntry

LEDGER_INDEX = "LedgerByAccount"
GRANTS_INDEX = "GrantsByAccount"
EXPIRY_INDEX = "ExpiringGrants"


class EntryExists(CreditsError):
    """A ledger entry with this key was committed before: the operation is a replay."""

    def __init__(self, entries: dict[str, LedgerEntry]) -> None:
        super().__init__(f"ledger entries already exist: {sorted(entries)}")
        self.entries = entries


class RelatedItemChanged(CreditsError):
    """A condition on an item written alongside the change (e.g. a Stripe payment record) failed."""

    def __init__(self, index: int) -> None:
        super().__init__(f"related item {index} changed concurrently")
        self.index = index


class VersionConflict(CreditsError):
    """The account changed since it was read; ``current`` is its state now (None: read it again)."""

    def __init__(self, current: AccountState | None) -> None:
        super().__init__("account changed concurrently")
        self.current = current


class AccountRepository(TableRepository):
    # ---- reads -------------------------------------------------------------------------------------------
    def load(
        self, account_id: str, entry_keys: Sequence[str] = (), *, consistent: bool = False
    ) -> tuple[AccountState, dict[str, LedgerEntry]]:
        """The account state and any of ``entry_keys`` already committed, in one BatchGetItem.

        Eventually consistent by default (half the read units): a stale version only makes the conditional
        write fail and retry, and a missed entry is still caught by the write's attribute_not_exists.
        """
        keys = [it.account_key(account_id), *(it.entry_key(k) for k in entry_keys)]
        found = self._batch_get(keys, consistent=consistent)
        state_item = None
        entries: dict[str, LedgerEntry] = {}
        for raw in found:
            item = it.from_dynamo(raw)
            if item["sk"] == it.STATE_SK:
                state_item = item
            else:
                entry = it.entry_from_item(item)
                entries[entry.entry_key] = entry
        return it.state_from_item(account_id, state_item), entries

    def state(self, account_id: str, *, consistent: bool = False) -> AccountState:
        response = self._client.get_item(
            TableName=self._table, Key=it.account_key(account_id), ConsistentRead=consistent
        )
        raw = response.get("Item")
        return it.state_from_item(account_id, it.from_dynamo(raw) if raw else None)

    def grant(self, grant_id: str) -> Grant:
        response = self._client.get_item(
            TableName=self._table, Key=it.grant_key(grant_id), ConsistentRead=True
        )
        raw = response.get("Item")
        if not raw:
            raise GrantNotFound(grant_id)
        return it.grant_from_item(it.from_dynamo(raw))

    def entry(self, key: str) -> LedgerEntry | None:
        response = self._client.get_item(TableName=self._table, Key=it.entry_key(key), ConsistentRead=True)
        raw = response.get("Item")
        return it.entry_from_item(it.from_dynamo(raw)) if raw else None

    def ledger_page(self, account_id: str, limit: int, cursor: str | None = None) -> Page:
        """Ledger entries newest first (by sequence number), ``limit`` per page."""
        return self._query_page(
            IndexName=LEDGER_INDEX,
            KeyConditionExpression="account_id = :a",
            ExpressionAttributeValues={":a": {"S": account_id}},
            ScanIndexForward=False,
            Limit=limit,
            cursor=cursor,
            mapper=it.entry_from_item,
        )

    def grants_page(self, account_id: str, limit: int, cursor: str | None = None) -> Page:
        """Grant records of an account, oldest first (grant ids sort by creation time)."""
        return self._query_page(
            IndexName=GRANTS_INDEX,
            KeyConditionExpression="account_id = :a",
            ExpressionAttributeValues={":a": {"S": account_id}},
            Limit=limit,
            cursor=cursor,
            mapper=it.grant_from_item,
        )

    @staticmethod
    def grant_cursor(grant: Grant) -> str:
        """A cursor that continues a grants listing right after ``grant``."""
        key = it.to_dynamo(
            {
                "pk": f"GRANT#{grant.grant_id}",
                "sk": it.GRANT_SK,
                "account_id": grant.account_id,
                "grant_id": grant.grant_id,
            }
        )
        cursor = encode_cursor(key)
        assert cursor is not None
        return cursor

    def expiring(self, before: datetime, limit: int = 100, cursor: str | None = None) -> Page:
        """(account id, grant id) of live grants with ``expires_at <= before``; cost follows what is due."""
        upper = it.expiry_sort_key(before, "~")  # "~" sorts after every grant id at the same instant
        return self._query_page(
            IndexName=EXPIRY_INDEX,
            KeyConditionExpression="expiry_shard = :s AND expiry_key <= :t",
            ExpressionAttributeValues={":s": {"S": it.EXPIRY_SHARD}, ":t": {"S": upper}},
            Limit=limit,
            cursor=cursor,
            mapper=lambda item: (item["account_id"], item["grant_id"]),
        )

    def _query_page(self, *, cursor: str | None, mapper: Any, **query: Any) -> Page:
        start = decode_cursor(cursor)
        if start is not None:
            # A cursor is only valid for the partition it came from: never let one page into another account.
            expected = query["ExpressionAttributeValues"]
            partition = next(iter(expected.values()))
            if partition not in start.values():
                raise InvalidCursor()
            query["ExclusiveStartKey"] = start
        try:
            response = self._client.query(TableName=self._table, **query)
        except ClientError as exc:
            if start is not None and error_code(exc) == "ValidationException":
                raise InvalidCursor() from exc
            raise
        except ParamValidationError as exc:  # a cursor whose values are not DynamoDB attribute values
            raise InvalidCursor() from exc
        items = [mapper(it.from_dynamo(raw)) for raw in response.get("Items", [])]
        return Page(items=items, next_cursor=encode_cursor(response.get("LastEvaluatedKey")))

    # ---- writes ------------------------------------------------------------------------------------------
    def commit(
        self, change: Change, expected_version: int, extra_actions: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Write ``change`` atomically, or raise EntryExists / VersionConflict / RelatedItemChanged and write
        nothing. ``extra_actions`` (TransactWriteItems actions of other aggregates, each with its own condition)
        commit in the same transaction, e.g. the Stripe payment record that says this effect was applied."""
        actions = [self._state_put(change.state, expected_version)]
        actions += [self._entry_put(entry) for entry in change.entries]
        actions += [self._grant_put(grant) for grant in change.new_grants]
        actions += [
            self._grant_close(closed.grant_id, closed.status.value, closed.closed_at)
            for closed in change.closed_grants
        ]
        first_extra = len(actions)
        actions += list(extra_actions)
        try:
            self._client.transact_write_items(
                TransactItems=actions,
                # Same token on botocore's own retries: a retry of a committed transaction is a no-op.
                ClientRequestToken=str(uuid.uuid4()),
                ReturnConsumedCapacity="NONE",
            )
        except ClientError as exc:
            raise_unless_cancelled(exc)
            raise self._cancellation_error(exc, change, first_extra) from exc

    def _cancellation_error(self, exc: ClientError, change: Change, first_extra: int) -> CreditsError:
        """Name why DynamoDB cancelled the transaction, from the reasons in action order:
        account, entries, new grants, closed grants, extra actions."""
        reasons = exc.response.get("CancellationReasons") or []

        def failed(start: int, stop: int) -> list[tuple[int, dict[str, Any]]]:
            return [
                (i, reasons[i])
                for i in range(start, min(stop, len(reasons)))
                if reasons[i].get("Code") == "ConditionalCheckFailed"
            ]

        entries_end = 1 + len(change.entries)
        existing: dict[str, LedgerEntry] = {}
        for index, reason in failed(1, entries_end):
            key = change.entries[index - 1].entry_key
            found = (
                it.entry_from_item(it.from_dynamo(reason["Item"])) if reason.get("Item") else self.entry(key)
            )
            if found is not None:
                existing[key] = found
        if existing:
            return EntryExists(existing)
        if failed(entries_end, entries_end + len(change.new_grants)):
            return InvalidGrant("grant_id", "is already used by another grant")
        closed_start = entries_end + len(change.new_grants)
        closed = failed(closed_start, closed_start + len(change.closed_grants))
        if closed and reasons and reasons[0].get("Code") == "None":
            # The account's version held, so nobody changed it since the read; its grants are closed only
            # together with a version bump, so a closed or missing record here will stay so: no retry.
            return GrantRecordMismatch(
                tuple(change.closed_grants[i - closed_start].grant_id for i, _ in closed)
            )
        extras = failed(first_extra, len(reasons))
        if extras:
            return RelatedItemChanged(extras[0][0] - first_extra)
        state_reason = reasons[0] if reasons else {}
        current = None
        if state_reason.get("Code") == "ConditionalCheckFailed" and state_reason.get("Item"):
            current = it.state_from_item(change.state.account_id, it.from_dynamo(state_reason["Item"]))
        return VersionConflict(current)

    def _state_put(self, state: AccountState, expected_version: int) -> dict[str, Any]:
        put: dict[str, Any] = {
            "TableName": self._table,
            "Item": it.to_dynamo(it.state_to_item(state)),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if expected_version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "version = :v"
            put["ExpressionAttributeValues"] = {":v": {"N": str(expected_version)}}
        return {"Put": put}

    def _entry_put(self, entry: LedgerEntry) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": it.to_dynamo(it.entry_to_item(entry)),
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _grant_put(self, grant: Grant) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": it.to_dynamo(it.grant_to_item(grant)),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def _grant_close(self, grant_id: str, status: str, closed_at: datetime) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._table,
                "Key": it.grant_key(grant_id),
                "UpdateExpression": "SET #status = :status, remaining = :zero, closed_at = :at "
                "REMOVE expiry_shard, expiry_key",
                "ConditionExpression": "attribute_exists(pk) AND NOT #status IN (:t0, :t1, :t2)",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":status": {"S": status},
                    ":zero": {"N": "0"},
                    ":at": {"S": it.iso(closed_at)},
                    **{f":t{i}": {"S": s.value} for i, s in enumerate(sorted(TERMINAL_STATUSES))},
                },
            }
        }

    def cost_basis_update(self, grant_id: str, amount: Decimal, currency: str | None) -> dict[str, Any]:
        """A transaction action correcting a grant's cost basis (not a ledger change: credits stay as they are)."""
        return {
            "Update": {
                "TableName": self._table,
                "Key": it.grant_key(grant_id),
                "UpdateExpression": "SET cost_amount = :amount, cost_currency = :currency"
                if currency
                else "SET cost_amount = :amount REMOVE cost_currency",
                "ConditionExpression": "attribute_exists(pk)",
                "ExpressionAttributeValues": it.to_dynamo({":amount": amount, ":currency": currency}),
            }
        }

    def iter_expiring(self, before: datetime) -> Iterator[tuple[str, str]]:
        for _, page in pages(lambda cursor: self.expiring(before, cursor=cursor)):
            yield from page.items
