"""Helpers for the expiry-side tests (expiry job, ledger stream, reconciliation) on moto.

ctx = time_runs_out_after(2)                                 # Lambda context whose remaining time runs out
bus = CapturedBus.create()                                   # moto bus + rule -> SQS queue; bus.events()
rec = StreamRecorder(client, table, clock)                   # DynamoDB stream records from table diffs
with rec.capture(): ledger.debit(...)                         # -> rec.drain() == {"Records": [...]}
load_event("expiry/scheduled.json", time=...)                 # a sample event from events/, optionally retimed
bus = pricing_and_bus(monkeypatch, tmp_path, PRICING)          # the handlers' pricing file and captured bus
env = StreamEnv(handler, ledger, clock, bus, rec)              # env.do(op); env.deliver() -> the handler's result
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from credits_dev.lambda_context import FakeLambdaContext, function_arn
from credits_ledger.domain.times import iso
from credits_ledger.ledger import Ledger
from tests.support.ledger import FakeClock

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
REGION = "us-east-1"
FUNCTION_ARN = function_arn("credits-test")


def load_handler(function: str) -> ModuleType:
    """``functions/<function>/app.py`` under a unique module name (every handler module is called app), with
    its cached dependencies cleared so it binds to this test's moto resources, env and pricing file."""
    from credits_ledger.pricing import load_pricing

    name = f"credits_{function}_app"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / function / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    for attribute in ("job", "stream"):
        cached = getattr(module, attribute, None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
    load_pricing.cache_clear()
    return module


def load_event(name: str, **overrides: Any) -> dict[str, Any]:
    """A sample event from ``events/``; ``time=datetime`` retimes a scheduled event."""
    event = json.loads((EVENTS / name).read_text())
    for key, value in overrides.items():
        event[key] = iso(value) if isinstance(value, datetime) else value
    return event


def time_runs_out_after(checks: int) -> FakeLambdaContext:
    """Plenty of time for ``checks`` deadline checks, then 1 s left (below any margin)."""
    return FakeLambdaContext(remaining_ms=[900_000] * checks + [1_000])


class Reinvocations:
    """Stands in for the asynchronous self re-invocation: records (context, event)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, context: Any, event: dict[str, Any]) -> None:
        self.events.append(json.loads(json.dumps(event)))


class CapturedBus:
    """A custom EventBridge bus on moto with a catch-all rule for source ``credits`` delivering to an SQS
    queue, so tests read back exactly what was put on the bus (set ``EVENT_BUS_NAME`` to ``name``)."""

    def __init__(self, name: str, queue_url: str) -> None:
        self.name = name
        self.queue_url = queue_url
        self._sqs = boto3.client("sqs", region_name=REGION)
        self._seen: list[dict[str, Any]] = []

    @classmethod
    def create(cls, name: str = "credits-test-bus") -> CapturedBus:
        events = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        events.create_event_bus(Name=name)
        queue_url = sqs.create_queue(QueueName=f"{name}-capture")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        events.put_rule(
            Name="all-credits", EventBusName=name, EventPattern=json.dumps({"source": ["credits"]})
        )
        events.put_targets(
            Rule="all-credits", EventBusName=name, Targets=[{"Id": "capture", "Arn": queue_arn}]
        )
        return cls(name, queue_url)

    def events(self, detail_type: str | None = None) -> list[dict[str, Any]]:
        """Every event delivered so far (accumulated across calls), optionally of one detail type."""
        while True:
            response = self._sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                self._seen.append(json.loads(message["Body"]))
                self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return [e for e in self._seen if detail_type is None or e["detail-type"] == detail_type]


def pricing_and_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pricing: str) -> CapturedBus:
    """Point the handlers at a pricing file holding ``pricing`` (``CREDITS_PRICING_FILE``) and at a new
    captured bus (``EVENT_BUS_NAME``); the bus."""
    pricing_file = tmp_path / "pricing.toml"
    pricing_file.write_text(pricing)
    monkeypatch.setenv("CREDITS_PRICING_FILE", str(pricing_file))
    bus = CapturedBus.create()
    monkeypatch.setenv("EVENT_BUS_NAME", bus.name)
    return bus


class StreamRecorder:
    """DynamoDB stream records (NEW_AND_OLD_IMAGES) computed from table snapshots taken around an operation.

    moto does not feed a Lambda from the stream, so tests build the records the way DynamoDB would: one per
    changed item, INSERT / MODIFY / REMOVE, with ``ApproximateCreationDateTime`` from ``clock``.
    """

    def __init__(self, client: Any, table: str, clock: Callable[[], datetime]) -> None:
        self.client = client
        self.table = table
        self.clock = clock
        self.records: list[dict[str, Any]] = []
        self._seq = 0

    def snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        items: dict[tuple[str, str], dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"TableName": self.table}
        while True:
            response = self.client.scan(**kwargs)
            for raw in response["Items"]:
                items[(raw["pk"]["S"], raw["sk"]["S"])] = raw
            if "LastEvaluatedKey" not in response:
                return items
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        before = self.snapshot()
        yield
        after = self.snapshot()
        # ledger entries first, then the account items, like a transaction's records in the shard
        order = sorted(set(before) | set(after), key=lambda k: (not k[0].startswith("ENTRY#"), k))
        for key in order:
            old, new = before.get(key), after.get(key)
            if old == new:
                continue
            name = "INSERT" if old is None else "REMOVE" if new is None else "MODIFY"
            self._seq += 1
            dynamodb: dict[str, Any] = {
                "ApproximateCreationDateTime": int(self.clock().timestamp()),
                "Keys": {"pk": {"S": key[0]}, "sk": {"S": key[1]}},
                "SequenceNumber": f"{self._seq:024d}",
                "SizeBytes": 100,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            }
            if new is not None:
                dynamodb["NewImage"] = new
            if old is not None:
                dynamodb["OldImage"] = old
            self.records.append(
                {
                    "eventID": uuid.uuid4().hex,
                    "eventName": name,
                    "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb",
                    "awsRegion": REGION,
                    "dynamodb": dynamodb,
                    "eventSourceARN": f"arn:aws:dynamodb:{REGION}:123456789012:table/{self.table}/stream/x",
                }
            )

    def drain(self, only: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The records captured so far as one stream event (optionally filtered like the event source
        mapping's FilterCriteria), and forget them."""
        records = [r for r in self.records if only is None or only(r)]
        self.records = []
        return {"Records": records}


def template_filter(record: dict[str, Any]) -> bool:
    """What the LedgerStreamFunction's FilterCriteria in template.yaml let through."""
    keys = record["dynamodb"]["Keys"]
    pk, sk = keys["pk"]["S"], keys["sk"]["S"]
    return (pk.startswith("ENTRY#") and record["eventName"] == "INSERT") or sk == "STATE"


@dataclass
class HandlerEnv:
    """A function's handler module (``load_handler``) with its test's ledger, clock and captured bus."""

    handler: ModuleType
    ledger: Ledger
    clock: FakeClock
    bus: CapturedBus


@dataclass
class StreamEnv(HandlerEnv):
    """LedgerStreamFunction's handler, fed the stream records of what the test does to the ledger."""

    recorder: StreamRecorder

    def do(self, operation: Callable[[], Any]) -> None:
        with self.recorder.capture():
            operation()

    def event(self) -> dict[str, Any]:
        """What the stream captured so far, after the template's filter, as one event (and forget it)."""
        return self.recorder.drain(template_filter)

    def deliver(self, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Invoke the function with ``event``, by default with what the stream captured so far."""
        result: dict[str, Any] = self.handler.lambda_handler(event or self.event(), FakeLambdaContext())
        return result
