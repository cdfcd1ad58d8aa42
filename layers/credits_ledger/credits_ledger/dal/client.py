"""DynamoDB client and table name, created on first use (never at import time)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger import aws
from credits_ledger.domain.errors import WriteRejected


@cache
def dynamodb_client() -> Any:
    return aws.client("dynamodb")


def table_name() -> str:
    return os.environ["TABLE_NAME"]


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


def rejection(exc: ClientError) -> WriteRejected | None:
    """The WriteRejected a failed write amounts to, or None when a retry may succeed."""
    error = exc.response.get("Error", {})
    code = error.get("Code")
    if code == "ValidationException":
        return WriteRejected((code,), str(error.get("Message", "")))
    if code != "TransactionCanceledException":
        return None
    reasons = exc.response.get("CancellationReasons") or []
    rejected = [r for r in reasons if str(r.get("Code") or "None") not in RETRYABLE_CANCELLATIONS]
    if not rejected:
        return None
    codes = tuple(dict.fromkeys(str(r.get("Code")) for r in rejected))
    messages = "; ".join(dict.fromkeys(str(r.get("Message") or "") for r in rejected if r.get("Message")))
    return WriteRejected(codes, messages or str(error.get("Message", "")))
