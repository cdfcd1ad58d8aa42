"""DynamoDB client and table name, created on first use (never at import time)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

# Standard retry mode retries throttles and 5xx with backoff. A retried TransactWriteItems carries the same
# ClientRequestToken, so DynamoDB treats a retry of an already committed transaction as a no-op.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=2,
    read_timeout=5,
    tcp_keepalive=True,
)


@cache
def dynamodb_client() -> Any:
    return boto3.client("dynamodb", config=CLIENT_CONFIG)


def table_name() -> str:
    return os.environ["TABLE_NAME"]
