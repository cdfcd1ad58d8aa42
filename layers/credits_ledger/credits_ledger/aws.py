"""AWS SDK clients: one configuration for every service this code calls (DynamoDB, EventBridge, Lambda). Each
caller creates its client on first use (never at import time) and keeps it while the Lambda instance lives."""

from __future__ import annotations

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


def client(service: str) -> Any:
    return boto3.client(service, config=CLIENT_CONFIG)
