"""Bench section ``api``: request units and time of the HTTP API's usage routes through the real handler.

    python -m tools.bench --only api          # within make bench
    python -m tools.bench_api [ENDPOINT]      # alone (starts DynamoDB Local when no endpoint is given)

Issue 3's figures: a single usage debit, its replay, and a batch of 100 events spread over 10 accounts
(per event). Every account holds 10 live grants, as in the ledger section. Units are AWS figures from
``tools.bench.counted_client`` (transactional writes modelled item by item); time is the handler's wall time
on DynamoDB Local, median of RUNS.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from credits_dev.lambda_context import FakeLambdaContext
from tools.bench import UnitsRow, counted_client, credits_table, median_units, section_main

ROOT = Path(__file__).resolve().parents[1]
SECTION = "api"
RUNS = int(os.environ.get("BENCH_API_RUNS", "15"))
ACCOUNTS = 10
GRANTS_PER_ACCOUNT = 10
BATCH = 100
ADMIN_KEY = "bench-admin-key"


def _event(name: str, body: Any) -> dict[str, Any]:
    event = json.loads((ROOT / "events" / "api" / f"{name}.json").read_text())
    event["headers"]["authorization"] = f"Bearer {ADMIN_KEY}"
    event["body"] = json.dumps(body)
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    return event


def _handler() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The API function's handler, in process; its repositories are built on whatever client and table
    ``_bound_to`` gave it (the function's own dependencies, ``credits_ledger.api.deps``, unchanged)."""
    from tools.gen_openapi import load_api_app

    os.environ["CREDITS_ADMIN_KEY"] = ADMIN_KEY  # the bootstrap key is checked without a DynamoDB read
    os.environ.setdefault("CREDITS_PRICING_FILE", str(ROOT / "config" / "pricing.toml"))
    app = load_api_app()

    def call(event: dict[str, Any]) -> dict[str, Any]:
        reply = app.lambda_handler(event, FakeLambdaContext("ApiFunction", timeout_s=10))
        if reply["statusCode"] >= 300:
            raise RuntimeError(f"{event['rawPath']}: {reply['statusCode']} {reply.get('body')}")
        return dict(reply)

    return call


@contextlib.contextmanager
def _bound_to(client: Any, table: str) -> Iterator[None]:
    """The function's DynamoDB client is the bench's counting client and its table the bench's, for the
    duration (the function reads both from its environment: ``dal.client``)."""
    from credits_ledger.api import deps
    from credits_ledger.dal import client as dal_client

    with (
        mock.patch.object(dal_client, "dynamodb_client", lambda: client),
        mock.patch.dict(os.environ, {"TABLE_NAME": table}),
    ):
        deps.reset()
        try:
            yield
        finally:
            deps.reset()


def _seed(call: Callable[[dict[str, Any]], dict[str, Any]], customers: list[str]) -> None:
    for customer in customers:
        for index in range(GRANTS_PER_ACCOUNT):
            event = _event("grant_create", {"amount": "1000000", "priority": 10 * (index + 1)})
            event["rawPath"] = event["requestContext"]["http"]["path"] = f"/v1/customers/{customer}/grants"
            event["pathParameters"] = {"customer": customer}
            call(event)


def run(endpoint: str, *, client_for: Callable[[str], Any] | None = None, runs: int = RUNS) -> list[UnitsRow]:
    client, counter = counted_client(endpoint)
    table = credits_table(client, "api")
    with _bound_to(client, table):
        return _measure(_handler(), counter, runs)


def _measure(call: Callable[[dict[str, Any]], dict[str, Any]], counter: Any, runs: int) -> list[UnitsRow]:
    customers = [f"cus_bench{index:02d}{uuid.uuid4().hex[:4]}" for index in range(ACCOUNTS)]
    _seed(call, customers)

    def usage(run: int) -> dict[str, Any]:
        body = {"id": f"u-single-{run}", "customer": customers[0], "meter": "api_call", "quantity": 1}
        return call(_event("usage", body))

    single = median_units(counter, runs, usage)
    replay = median_units(counter, runs, usage)  # the same ids again: each run replays its first answer

    def batch(run: int) -> dict[str, Any]:
        events = [
            {
                "id": f"u-batch-{run}-{i}",
                "customer": customers[i % ACCOUNTS],
                "meter": "api_call",
                "quantity": 1,
            }
            for i in range(BATCH)
        ]
        return call(_event("usage_batch", {"events": events}))

    batch_units = median_units(counter, max(3, runs // 3), batch)
    return [
        UnitsRow(SECTION, "POST /v1/usage (one debit, 10 live grants)", *single),
        UnitsRow(SECTION, "POST /v1/usage replay (same id and body)", *replay),
        UnitsRow(
            SECTION,
            f"POST /v1/usage/batch, per event ({BATCH} over {ACCOUNTS} accounts)",
            batch_units[0] / BATCH,
            batch_units[1] / BATCH,
            batch_units[2] / BATCH,
            note=f"whole batch: {batch_units[0]:.1f} RRU, {batch_units[1]:.1f} WRU, {batch_units[2]:.0f} ms",
        ),
    ]


if __name__ == "__main__":
    section_main(run)
