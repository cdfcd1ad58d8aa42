"""DynamoDB client and table name, created on first use (never at import time)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger import aws
from credits_ledger.dal import items as it
from credits_ledger.domain.errors import WriteRejected


@cache
def dynamodb_client() -> Any:
    return aws.client("dynamodb")


def table_name() -> str:
    return os.environ["TABLE_NAME"]


BATCH_GET_LIMIT = 100  # keys per BatchGetItem, DynamoDB's limit
FIRST_UNPROCESSED_PAUSE = 0.02  # seconds before asking again for keys DynamoDB left unprocessed (doubles)
MAX_UNPROCESSED_PAUSE = 1.0


class TableRepository:
    """What every repository of the one table shares: its client and table name (the function's own unless
    given, as tests and tools do), batched reads and conditional updates."""

    def __init__(self, client: Any | None = None, table: str | None = None) -> None:
        self._client = client or dynamodb_client()
        self._table = table or table_name()

    @property
    def client(self) -> Any:
        return self._client

    @property
    def table(self) -> str:
        """Aggregates written in one transaction with this repository's items live in this same table."""
        return self._table

    def _query_all(
        self, query: dict[str, Any], *, max_pages: int | None = None, then_limit: int | None = None
    ) -> Iterator[it.Item]:
        """Every item a Query answers (``query`` without TableName), page after page, decoded; at most
        ``max_pages`` pages when given; pages after the first of at most ``then_limit`` items when given (a
        reader that usually stops after a few items asks for a small first page)."""
        request = {"TableName": self._table, **query}
        pages_read = 0
        while max_pages is None or pages_read < max_pages:
            response = self._client.query(**request)
            pages_read += 1
            for raw in response.get("Items", []):
                yield it.from_dynamo(raw)
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last
            if then_limit is not None:
                request["Limit"] = then_limit

    def _partition(
        self, pk: str, sk_prefix: str, *, consistent: bool = False, **query: Any
    ) -> Iterator[it.Item]:
        """The items of partition ``pk`` whose sort key starts with ``sk_prefix``, in sort-key order."""
        return self._query_all(
            {
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
                "ExpressionAttributeValues": {":pk": {"S": pk}, ":prefix": {"S": sk_prefix}},
                "ConsistentRead": consistent,
            },
            **query,
        )

    def _batch_get(
        self, keys: list[dict[str, Any]], *, consistent: bool = True, **request: Any
    ) -> list[dict[str, Any]]:
        """The raw items of ``keys`` that exist, in BatchGetItem calls of at most 100 keys (``request`` adds
        e.g. a ProjectionExpression). Keys DynamoDB leaves unprocessed (throttling, its 16 MB answer limit) are
        asked again after a growing pause, not in a tight loop."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            chunk = keys[start : start + BATCH_GET_LIMIT]
            pending: dict[str, Any] = {self._table: {"Keys": chunk, "ConsistentRead": consistent, **request}}
            pause = FIRST_UNPROCESSED_PAUSE
            while pending:
                response = self._client.batch_get_item(RequestItems=pending)
                found.extend(response["Responses"].get(self._table, []))
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    time.sleep(pause)
                    pause = min(pause * 2, MAX_UNPROCESSED_PAUSE)
        return found

    def _update_if(self, *, refused: Callable[[ClientError], bool] | None = None, **request: Any) -> bool:
        """One UpdateItem (``request`` without TableName) whose ConditionExpression guards an invariant: True
        when written, False when the condition did not hold (nothing written). ``refused`` tells a failed
        condition from other errors (default ``failed_condition``); any other error is raised."""
        try:
            self._client.update_item(TableName=self._table, **request)
        except ClientError as exc:
            if not (refused or failed_condition)(exc):
                raise
            return False
        return True


# Why DynamoDB may cancel a transaction (CancellationReasons[].Code), and whether trying again can help:
# a failed condition (re-read, re-decide), a conflict with another transaction on the same item, a throttle
# (all transient). Anything else, ValidationError above all (an item grown past 400 KB: the same write
# fails the same way every time), is a rejection: retrying it only burns attempts and hides the cause.
RETRYABLE_CANCELLATIONS = frozenset(
    {
        "None",
        "ConditionalCheckFailed",
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
    }
)


CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELLED = "TransactionCanceledException"


def error_code(exc: ClientError) -> str:
    """DynamoDB's name for what went wrong (``ConditionalCheckFailedException``, ...)."""
    return str(exc.response.get("Error", {}).get("Code") or "")


def failed_condition(exc: ClientError) -> bool:
    """A single-item write refused by its ConditionExpression: the invariant it states did not hold."""
    return error_code(exc) == CONDITION_FAILED


def cancellation_codes(exc: ClientError) -> list[str]:
    """Why DynamoDB cancelled a transaction, one code per action in request order (``None``: that action
    was fine)."""
    return [str(reason.get("Code") or "None") for reason in exc.response.get("CancellationReasons") or []]


def raise_unless_cancelled(exc: ClientError) -> None:
    """Return only when ``exc`` is a transaction DynamoDB cancelled for reasons a new attempt may overcome
    (the caller names them from ``CancellationReasons``); raise WriteRejected for a write DynamoDB will
    refuse again, and ``exc`` itself for any other error."""
    rejected = rejection(exc)
    if rejected is not None:
        raise rejected from exc
    if error_code(exc) != TRANSACTION_CANCELLED:
        raise exc


def rejection(exc: ClientError) -> WriteRejected | None:
    """The WriteRejected a failed write amounts to, or None when a retry may succeed."""
    error = exc.response.get("Error", {})
    code = error_code(exc)
    if code == "ValidationException":
        return WriteRejected((code,), str(error.get("Message", "")))
    if code != TRANSACTION_CANCELLED:
        return None
    reasons = exc.response.get("CancellationReasons") or []
    rejected = [r for r in reasons if str(r.get("Code") or "None") not in RETRYABLE_CANCELLATIONS]
    if not rejected:
        return None
    codes = tuple(dict.fromkeys(str(r.get("Code")) for r in rejected))
    messages = "; ".join(dict.fromkeys(str(r.get("Message") or "") for r in rejected if r.get("Message")))
    return WriteRejected(codes, messages or str(error.get("Message", "")))
