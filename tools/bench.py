"""`make bench` (``python -m tools.bench``): DynamoDB request units and time of each ledger operation.

Starts DynamoDB Local (credits_dev/local/dynamodb_local.py), creates the tables of template.yaml and, for each
section, prints what every operation consumed and how long it took (median of ``--runs`` runs).

    python -m tools.bench                         # every section but the slow ones (expiry)
    python -m tools.bench --all                   # every section, expiry's 110,000-item table too
    python -m tools.bench --only ledger --runs 30 # one section (repeat --only for several)
    python -m tools.bench --list                  # the sections
    python -m tools.bench --endpoint http://127.0.0.1:8000   # a DynamoDB Local that is already running

Request units are counted on the boto3 client: a ``provide-client-params`` hook asks every DynamoDB call for
``ReturnConsumedCapacity=INDEXES`` and an ``after-call`` hook adds up the table and index units it reports.
DynamoDB Local's figures are then turned into what DynamoDB in AWS charges, after a calibration probe that
finds how this DynamoDB Local build counts (see ``Calibration``):

* transactional writes: 2 units per KB for each item written (AWS: one prepare + one commit write);
* index updates caused by a transactional write: 1 unit per KB each, as for a plain write. AWS's pages
  do not say this in so many words; ``write units if GSI x2`` shows the figure if they were doubled too;
* reads: 0.5 unit per 4 KB eventually consistent, 1 strongly consistent, 2 transactional; a key that is not
  found still costs the minimum (0.5 / 1), as a GetItem of a missing item does.

Sections: ``ledger`` (every ledger operation), ``growth`` (a debit as the number of live grants on the
account grows), plus sections other modules provide. To add one, either decorate a function with
``@section("name", "what it measures")`` (it receives a ``BenchContext`` and returns rows), or write a module
``tools/bench_<name>.py`` with ``run(endpoint) -> list[row]`` and add it to ``EXTERNAL_SECTIONS``. A row is
an ``OpRow`` (printed in the units/time table) or any object whose ``str()`` is one line.

Other code that wants a counted client: ``client, counter = counted_client(endpoint)``; ``counter.reset()``,
``counter.read_units`` / ``counter.write_units`` (AWS figures), ``counter.local_read_units`` /
``counter.local_write_units`` (as DynamoDB Local reported them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "layers" / "credits_ledger", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

REGION = "us-east-1"
READ_OPS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})
WRITE_OPS = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
# sections living in their own modules: name -> module exposing run(endpoint) -> list[row]
EXTERNAL_SECTIONS: dict[str, tuple[str, str]] = {
    "webhook": ("tools.bench_webhook", "Stripe webhook: handler import time, units per event type"),
    "api": ("tools.bench_api", "HTTP API handlers"),
    "coldstart": (
        "tools.bench_coldstart",
        "API and webhook handler import vs a bare import boto3 (goal <= 2x)",
    ),
    "hot": (
        "tools.bench_hot",
        "one account under W concurrent writers vs W accounts (ledger and HTTP); debit cost vs live grants",
    ),
    "reservations": (
        "tools.bench_reservations",
        "reserve, capture, release; a debit next to open reservations",
    ),
    "report": ("tools.bench_report", "money view: stream batch units, revenue report over 30 days / 1 year"),
    "subscriptions": (
        "tools.bench_subscriptions",
        "subscriptions: units and time of a period grant, a proration, a cancellation",
    ),
    "billing": ("tools.bench_billing", "overage debits and the billing sync worker (meter events, top-ups)"),
    "expiry": (
        "tools.bench_expiry",
        "expiry job: read units over 1,000 due grants, empty vs 110k-grant table",
    ),
}
# sections that take many minutes: run with --all or --only NAME, not by default
SLOW_SECTIONS = frozenset({"expiry"})


# =========================================================================================================
# Counting request units
# =========================================================================================================
@dataclass(frozen=True)
class Calibration:
    """How this DynamoDB Local build reports consumed capacity, measured on a scratch table.

    ``tx_table_factor``: table units of a one-item TransactWriteItems / the same PutItem (AWS: 2; older
    DynamoDB Local builds: 1). ``tx_index_factor``: the same for the GSI part. ``tx_read_factor``:
    TransactGetItems / strongly consistent GetItem (AWS: 2). ``missing_key_units``: what an eventually
    consistent BatchGetItem of one absent key reported (AWS charges 0.5). ``three_item_tx_units``: what a
    TransactWriteItems of three new sub-KB items reported (AWS: 6; the DynamoDB Local build of 2026-05-28
    reports 2: it seems to add up distinct per-item figures only, so its multi-item transaction figures are
    not used).
    """

    tx_table_factor: float = 2.0
    tx_index_factor: float = 2.0
    tx_read_factor: float = 2.0
    missing_key_units: float = 0.0
    three_item_tx_units: float = 6.0

    def describe(self) -> str:
        return (
            f"DynamoDB Local reports a one-item transactional write at x{self.tx_table_factor:g} for the table "
            f"and x{self.tx_index_factor:g} for GSIs, transactional reads at x{self.tx_read_factor:g}, "
            f"{self.missing_key_units:g} units for a key not found, and {self.three_item_tx_units:g} units "
            "for a transaction writing 3 new sub-KB items (AWS: 6)"
        )


_calibrations: dict[str, Calibration] = {}
_calibration_lock = threading.Lock()


def _plain_client(endpoint: str, config: Any = None) -> Any:
    """A boto3 DynamoDB client of its own session (safe to make per thread), with botocore's defaults unless
    ``config`` is given."""
    import boto3

    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


def ledger_client(endpoint: str) -> Any:
    """A DynamoDB client configured as the Lambda functions' clients are (credits_ledger.aws.CLIENT_CONFIG)."""
    from credits_ledger.aws import CLIENT_CONFIG

    return _plain_client(endpoint, CLIENT_CONFIG)


def credits_table(client: Any, tag: str) -> str:
    """Create template.yaml's tables with a unique ``-<tag>-...`` suffix on ``client``'s DynamoDB; the name
    of its CreditsTable."""
    from credits_dev.local.tables import create_tables_from_template

    suffix = f"-{tag}-{uuid.uuid4().hex[:6]}"
    return str(
        create_tables_from_template(client, ROOT / "template.yaml", name_suffix=suffix)["CreditsTable"]
    )


def calibrate(endpoint: str) -> Calibration:
    """Measure (once per endpoint) how DynamoDB Local counts transactional and missing-key capacity."""
    with _calibration_lock:
        if endpoint in _calibrations:
            return _calibrations[endpoint]
        client = _plain_client(endpoint)
        name = f"bench-calibration-{uuid.uuid4().hex[:8]}"
        client.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "g", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-g",
                    "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
        try:

            def parts(consumed: Any) -> tuple[float, float]:
                entry = consumed[0] if isinstance(consumed, list) else consumed
                table = float(entry.get("Table", {}).get("CapacityUnits", entry.get("CapacityUnits", 0)))
                index = sum(
                    float(v["CapacityUnits"]) for v in entry.get("GlobalSecondaryIndexes", {}).values()
                )
                return table, index

            plain = client.put_item(
                TableName=name, Item={"pk": {"S": "a"}, "g": {"S": "x"}}, ReturnConsumedCapacity="INDEXES"
            )
            tx = client.transact_write_items(
                TransactItems=[{"Put": {"TableName": name, "Item": {"pk": {"S": "b"}, "g": {"S": "x"}}}}],
                ReturnConsumedCapacity="INDEXES",
            )
            strong = client.get_item(
                TableName=name, Key={"pk": {"S": "a"}}, ConsistentRead=True, ReturnConsumedCapacity="TOTAL"
            )
            tx_get = client.transact_get_items(
                TransactItems=[{"Get": {"TableName": name, "Key": {"pk": {"S": "a"}}}}],
                ReturnConsumedCapacity="TOTAL",
            )
            three = client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": name, "Item": {"pk": {"S": f"t{i}"}}}} for i in range(3)
                ],
                ReturnConsumedCapacity="TOTAL",
            )
            missing = client.batch_get_item(
                RequestItems={name: {"Keys": [{"pk": {"S": "absent"}}]}}, ReturnConsumedCapacity="TOTAL"
            )
            plain_table, plain_index = parts(plain["ConsumedCapacity"])
            tx_table, tx_index = parts(tx["ConsumedCapacity"])
            strong_units = parts(strong["ConsumedCapacity"])[0]
            tx_read_units = parts(tx_get["ConsumedCapacity"])[0]
            missing_units = sum(float(c.get("CapacityUnits", 0)) for c in missing.get("ConsumedCapacity", []))
            result = Calibration(
                tx_table_factor=tx_table / plain_table if plain_table else 1.0,
                tx_index_factor=tx_index / plain_index if plain_index else 1.0,
                tx_read_factor=tx_read_units / strong_units if strong_units else 1.0,
                missing_key_units=missing_units,
                three_item_tx_units=sum(float(c.get("CapacityUnits", 0)) for c in three["ConsumedCapacity"]),
            )
        finally:
            with contextlib.suppress(Exception):
                client.delete_table(TableName=name)
        _calibrations[endpoint] = result
        return result


@dataclass(frozen=True)
class IndexSpec:
    name: str
    keys: tuple[str, ...]
    projection: str  # ALL | KEYS_ONLY | INCLUDE
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    keys: tuple[str, ...]
    indexes: tuple[IndexSpec, ...]

    def key_of(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: item[k] for k in self.keys}

    def index_image(self, index: IndexSpec, item: dict[str, Any] | None) -> dict[str, Any] | None:
        """The index entry of ``item`` (None when the item is not in this sparse index)."""
        if item is None or any(k not in item for k in index.keys):
            return None
        if index.projection == "ALL":
            return dict(item)
        wanted = set(self.keys) | set(index.keys) | set(index.include)
        return {k: v for k, v in item.items() if k in wanted}


def write_units_of(size: int) -> int:
    """Write request units of one item write: 1 per KB, rounded up, at least 1."""
    return max(1, math.ceil(size / 1024))


@dataclass
class CapacityCounter:
    """Request units of every call made through one client since the last ``reset()``.

    ``read_units`` / ``write_units``: what DynamoDB in AWS charges. Reads are DynamoDB Local's figures plus
    the minimum charge for keys not found. Writes of ``TransactWriteItems`` are computed here, item by item,
    because DynamoDB Local mis-reports transactions of several items (see ``Calibration``): for every action
    the item's before image is read first (with another, uncounted client) and the after image after the
    call; the table part is 2 units per KB of the larger image, each GSI whose entry appears, changes or
    disappears costs 1 unit per KB of its entry (2 writes when its key changes). Plain writes (PutItem,
    UpdateItem, DeleteItem) keep DynamoDB Local's figures, which follow the same rules.
    ``write_units_gsi_doubled``: the same with GSI updates of transactions doubled. ``local_*``: the raw
    figures DynamoDB Local reported. ``overhead_seconds``: time spent reading the images (``measure``
    subtracts it from the operation's time).
    """

    calibration: Calibration
    probe: Any = None  # uncounted client for before/after images
    read_units: float = 0.0
    write_units: float = 0.0
    write_units_gsi_doubled: float = 0.0
    local_read_units: float = 0.0
    local_write_units: float = 0.0
    table_write_units: float = 0.0  # AWS figure, table part only
    index_write_units: float = 0.0  # AWS figure, GSI part only
    overhead_seconds: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    rejected_calls: int = 0  # error answers (e.g. a cancelled transaction) report no capacity
    model_mismatches: list[str] = field(default_factory=list)
    _tables: dict[str, TableSpec] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reset(self) -> None:
        with self._lock:
            self.read_units = self.write_units = self.write_units_gsi_doubled = 0.0
            self.local_read_units = self.local_write_units = 0.0
            self.table_write_units = self.index_write_units = 0.0
            self.overhead_seconds = 0.0
            self.calls = {}
            self.rejected_calls = 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "read": self.read_units,
                "write": self.write_units,
                "write_gsi2": self.write_units_gsi_doubled,
                "local_read": self.local_read_units,
                "local_write": self.local_write_units,
                "table_write": self.table_write_units,
                "index_write": self.index_write_units,
                "overhead": self.overhead_seconds,
                "calls": dict(self.calls),
                "rejected": self.rejected_calls,
            }

    # -- table shapes and item images ----------------------------------------------------------------------
    def _spec(self, table: str) -> TableSpec:
        spec = self._tables.get(table)
        if spec is None:
            described = self.probe.describe_table(TableName=table)["Table"]
            indexes = tuple(
                IndexSpec(
                    name=g["IndexName"],
                    keys=tuple(k["AttributeName"] for k in g["KeySchema"]),
                    projection=g["Projection"]["ProjectionType"],
                    include=tuple(g["Projection"].get("NonKeyAttributes", ())),
                )
                for g in described.get("GlobalSecondaryIndexes", [])
            )
            spec = TableSpec(keys=tuple(k["AttributeName"] for k in described["KeySchema"]), indexes=indexes)
            self._tables[table] = spec
        return spec

    def _image(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        return self.probe.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")

    def _actions(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        actions = []
        for action in params.get("TransactItems", []):
            (kind, body), *_ = action.items()
            table = body["TableName"]
            key = self._spec(table).key_of(body["Item"]) if kind == "Put" else body["Key"]
            actions.append(
                {
                    "kind": kind,
                    "table": table,
                    "key": key,
                    "before": self._image(table, key),
                    "after": body.get("Item") if kind == "Put" else None,
                }
            )
        return actions

    def _transaction_units(self, actions: list[dict[str, Any]]) -> tuple[float, float, float]:
        """(table units, GSI units, GSI units if doubled) of a committed TransactWriteItems."""
        table_units = index_units = 0.0
        for action in actions:
            before, after = action["before"], action["after"]
            if action["kind"] == "Update":
                after = self._image(action["table"], action["key"])
            if action["kind"] == "ConditionCheck":
                after = before
            sizes = [item_size(i) for i in (before, after) if i is not None] or [0]
            table_units += 2 * write_units_of(max(sizes))
            if action["kind"] == "ConditionCheck":
                continue
            spec = self._spec(action["table"])
            for index in spec.indexes:
                old, new = spec.index_image(index, before), spec.index_image(index, after)
                if old == new:
                    continue  # not in the index, or nothing projected changed: no index write
                if old is not None and new is not None:
                    same_key = all(old[k] == new[k] for k in index.keys)
                    if same_key:
                        index_units += write_units_of(max(item_size(old), item_size(new)))
                    else:  # the entry moves: delete + put
                        index_units += write_units_of(item_size(old)) + write_units_of(item_size(new))
                else:
                    index_units += write_units_of(item_size(old or new or {}))
        return table_units, index_units, 2 * index_units

    # -- botocore hooks ------------------------------------------------------------------------------------
    def ask(
        self, params: dict[str, Any], model: Any, context: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if model.name not in READ_OPS | WRITE_OPS:
            return
        params["ReturnConsumedCapacity"] = "INDEXES"
        if context is None:
            return
        # remember how many keys a point read asked for, to charge the ones not found
        if model.name == "GetItem":
            context["bench_keys"] = {params["TableName"]: (1, bool(params.get("ConsistentRead")))}
        elif model.name == "BatchGetItem":
            context["bench_keys"] = {
                table: (len(spec.get("Keys", [])), bool(spec.get("ConsistentRead")))
                for table, spec in params.get("RequestItems", {}).items()
            }
        elif model.name == "TransactWriteItems" and self.probe is not None:
            began = time.perf_counter()
            context["bench_actions"] = self._actions(params)
            self.overhead_seconds += time.perf_counter() - began

    def count(
        self, parsed: dict[str, Any], model: Any, context: dict[str, Any] | None = None, **_: Any
    ) -> None:
        name = model.name
        if name not in READ_OPS | WRITE_OPS:
            return
        consumed = parsed.get("ConsumedCapacity")
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        local_table = local_index = 0.0
        for entry in entries:
            if "Table" in entry or "GlobalSecondaryIndexes" in entry or "LocalSecondaryIndexes" in entry:
                local_table += float(entry.get("Table", {}).get("CapacityUnits", 0))
                local_index += sum(
                    float(v.get("CapacityUnits", 0))
                    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes")
                    for v in entry.get(key, {}).values()
                )
            else:
                local_table += float(entry.get("CapacityUnits", 0))
        failed = "Error" in parsed
        modelled: tuple[float, float, float] | None = None
        actions = (context or {}).get("bench_actions")
        if name == "TransactWriteItems" and actions is not None and not failed:
            began = time.perf_counter()
            modelled = self._transaction_units(actions)
            self.overhead_seconds += time.perf_counter() - began
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            if failed:
                self.rejected_calls += 1
            if name in WRITE_OPS:
                self.local_write_units += local_table + local_index
                if modelled is not None:
                    table, index, doubled = modelled
                    if len(actions or []) == 1:
                        self._check_model(table, index, local_table, local_index)
                else:
                    table, index, doubled = local_table, local_index, local_index
                self.write_units += table + index
                self.write_units_gsi_doubled += table + doubled
                self.table_write_units += table
                self.index_write_units += index
            else:
                self.local_read_units += local_table + local_index
                self.read_units += local_table + local_index
                if (
                    name in ("GetItem", "BatchGetItem")
                    and context
                    and self.calibration.missing_key_units == 0
                ):
                    self.read_units += self._missing_keys_charge(name, parsed, context.get("bench_keys", {}))

    def _check_model(self, table: float, index: float, local_table: float, local_index: float) -> None:
        """A one-action transaction is one DynamoDB Local reports right: the model must agree with it."""
        cal = self.calibration
        expected_table = local_table * 2 / cal.tx_table_factor
        expected_index = local_index / cal.tx_index_factor
        if (table, index) != (expected_table, expected_index) and len(self.model_mismatches) < 20:
            self.model_mismatches.append(
                f"one-action transaction: model {table:g}+{index:g}, DynamoDB Local {expected_table:g}+"
                f"{expected_index:g} (table+GSI)"
            )

    @staticmethod
    def _missing_keys_charge(name: str, parsed: dict[str, Any], asked: dict[str, tuple[int, bool]]) -> float:
        charge = 0.0
        for table, (count, consistent) in asked.items():
            if name == "GetItem":
                found = 1 if parsed.get("Item") else 0
                unprocessed = 0
            else:
                found = len(parsed.get("Responses", {}).get(table, []))
                unprocessed = len((parsed.get("UnprocessedKeys") or {}).get(table, {}).get("Keys", []))
            charge += max(0, count - found - unprocessed) * (1.0 if consistent else 0.5)
        return charge


def instrument(client: Any, endpoint: str) -> CapacityCounter:
    """Count the request units of every DynamoDB call ``client`` makes from now on."""
    counter = CapacityCounter(calibrate(endpoint), probe=_plain_client(endpoint))
    client.meta.events.register("provide-client-params.dynamodb.*", counter.ask)
    client.meta.events.register("after-call.dynamodb.*", counter.count)
    return counter


def counted_client(endpoint: str) -> tuple[Any, CapacityCounter]:
    """A ``ledger_client`` (own session: safe to make per thread) and the counter of its request units."""
    client = ledger_client(endpoint)
    return client, instrument(client, endpoint)


@dataclass(frozen=True)
class ValueRow:
    """One figure of a section that is not a units/time row (an import time, a per-event total...)."""

    section: str
    name: str
    value: float
    unit: str
    note: str = ""

    def __str__(self) -> str:
        return f"{self.section:8} {self.name:44} {self.value:>10.2f} {self.unit:6} {self.note}"


def section_main(run: Callable[[str], list[Any]], argv: list[str] | None = None) -> list[Any]:
    """``python -m tools.bench_<name> [ENDPOINT]``: one section on its own, on ENDPOINT or on a DynamoDB Local
    it starts and stops; prints and returns the rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        rows = run(args[0])
    else:
        from credits_dev.local.dynamodb_local import DynamoDBLocal

        with DynamoDBLocal() as server:
            rows = run(server.endpoint_url)
    for row in rows:
        print(row)
    return rows


# =========================================================================================================
# DynamoDB item size (AWS's rules: names + values; numbers ~1 byte per 2 significant digits + 1)
# =========================================================================================================
def attribute_size(value: dict[str, Any]) -> int:
    (kind, raw), *_ = value.items()
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        digits = Decimal(raw).normalize().as_tuple().digits
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(attribute_size({kind[0]: v}) for v in raw)
    if kind == "L":
        return 3 + sum(1 + attribute_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + attribute_size(v) for k, v in raw.items())
    raise ValueError(kind)


def item_size(item: dict[str, Any]) -> int:
    """Approximate DynamoDB size in bytes of a low-level item (``{"name": {"S": ...}}``)."""
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


# =========================================================================================================
# Sections
# =========================================================================================================
@dataclass(frozen=True)
class OpRow:
    """Median request units and time of one operation."""

    section: str
    name: str
    read_units: float
    write_units: float
    write_units_gsi_doubled: float
    local_read_units: float
    local_write_units: float
    index_write_units: float
    ms: float
    calls: str
    runs: int
    note: str = ""
    varies: bool = False  # units differed between runs


@dataclass
class BenchContext:
    endpoint: str
    table: str
    runs: int
    client: Any
    counter: CapacityCounter
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)


SectionFn = Callable[[BenchContext], list[Any]]


@dataclass(frozen=True)
class Section:
    name: str
    description: str
    run: SectionFn


SECTIONS: dict[str, Section] = {}


def section(name: str, description: str) -> Callable[[SectionFn], SectionFn]:
    """Register a bench section: ``fn(ctx) -> rows``."""

    def register(fn: SectionFn) -> SectionFn:
        SECTIONS[name] = Section(name, description, fn)
        return fn

    return register


def measure(
    ctx: BenchContext,
    section_name: str,
    name: str,
    op: Callable[[Any], Any],
    setup: Callable[[], Any] = lambda: None,
    note: str = "",
    runs: int | None = None,
) -> OpRow:
    """Run ``setup()`` (not counted) then ``op(setup_result)`` ``runs`` times; medians of units and time."""
    runs = runs or ctx.runs
    samples, times = _samples(ctx.counter, runs, op, lambda _run: setup())

    def median(key: str) -> float:
        return float(statistics.median(s[key] for s in samples))

    varies = len({(s["read"], s["write"]) for s in samples}) > 1
    calls = samples[len(samples) // 2]["calls"]
    return OpRow(
        section=section_name,
        name=name,
        read_units=median("read"),
        write_units=median("write"),
        write_units_gsi_doubled=median("write_gsi2"),
        local_read_units=median("local_read"),
        local_write_units=median("local_write"),
        index_write_units=median("index_write"),
        ms=statistics.median(times),
        calls=" + ".join(f"{n}x{k}" if n > 1 else k for k, n in sorted(calls.items())),
        runs=runs,
        note=note,
        varies=varies,
    )


def _samples(
    counter: CapacityCounter, runs: int, op: Callable[[Any], Any], setup: Callable[[int], Any]
) -> tuple[list[dict[str, Any]], list[float]]:
    """For each run: ``setup(run)`` (not counted), then ``op`` of what it returned, counted and timed. The
    counter snapshots, and the times in ms without the counter's own reads."""
    samples: list[dict[str, Any]] = []
    times: list[float] = []
    for run in range(runs):
        prepared = setup(run)
        counter.reset()
        began = time.perf_counter()
        op(prepared)
        elapsed = time.perf_counter() - began
        sample = counter.snapshot()
        times.append((elapsed - sample["overhead"]) * 1000)
        samples.append(sample)
    return samples, times


def median_units(
    counter: CapacityCounter,
    runs: int,
    op: Callable[..., Any],
    setup: Callable[[int], Any] = lambda run: run,
) -> tuple[float, float, float]:
    """Median read units, write units and ms of ``op(setup(run))`` over ``runs`` runs (``setup`` not counted;
    without one, ``op`` gets the run's number): for sections that print these three figures only."""
    samples, times = _samples(counter, runs, op, setup)
    return (
        statistics.median(s["read"] for s in samples),
        statistics.median(s["write"] for s in samples),
        statistics.median(times),
    )


@dataclass(frozen=True)
class UnitsRow:
    """One operation of a section module: median request units and time, on one line."""

    section: str
    name: str
    read_units: float
    write_units: float
    ms: float
    note: str = ""

    def __str__(self) -> str:
        return (
            f"{self.section:8} {self.name:46} {self.read_units:7.2f} RRU {self.write_units:7.2f} WRU "
            f"{self.ms:8.2f} ms  {self.note}"
        )


# ---------------------------------------------------------------------------------------------------------
class BenchClock:
    """A settable clock for the Ledger; it starts at the real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def _ids(prefix: str) -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"{prefix}{n:05d}-{uuid.uuid4().hex[:6]}"


class Fixtures:
    """Accounts in known states, built through the Ledger itself (not counted)."""

    def __init__(self, ctx: BenchContext) -> None:
        from credits_ledger.dal.accounts import AccountRepository
        from credits_ledger.ledger import Ledger

        self.clock = BenchClock()
        self.ledger = Ledger(AccountRepository(ctx.client, ctx.table), clock=self.clock)
        self.accounts = _ids("cus_bench")
        self.keys = _ids("k")

    def grant(
        self,
        account: str,
        amount: str,
        priority: int = 50,
        expires_in: timedelta | None = timedelta(days=365),
        funding_key: str | None = None,
    ) -> str:
        from credits_ledger.domain.models import CostBasis, Source
        from credits_ledger.domain.transitions import GrantSpec
        from credits_ledger.ledger import new_id

        grant_id = new_id("gr")
        spec = GrantSpec(
            grant_id=grant_id,
            amount=Decimal(amount),
            source=Source("stripe_payment", "pi_bench") if funding_key else Source("admin"),
            priority=priority,
            expires_at=self.clock() + expires_in if expires_in else None,
            cost_basis=CostBasis(Decimal("20.00"), "eur") if funding_key else CostBasis(),
            funding_key=funding_key,
        )
        self.ledger.grant(account, spec, key=f"grant:{grant_id}")
        return grant_id

    def account(self, grants: int = 10, amount: str = "100", funded: bool = False) -> tuple[str, list[str]]:
        """An account with ``grants`` active grants (priorities 10, 20, ...: spent in that order), each
        expiring at a different time, as Stripe-funded grants are (funding_key set) when ``funded``."""
        account = next(self.accounts)
        ids = [
            self.grant(
                account,
                amount,
                priority=10 * (i + 1),
                expires_in=timedelta(days=30 + i),
                funding_key=f"pi_bench_{account}_{i}" if funded else None,
            )
            for i in range(grants)
        ]
        return account, ids

    def debit(self, account: str, amount: str, key: str | None = None) -> Any:
        from credits_ledger.domain.idempotency import usage_key
        from credits_ledger.ledger import DebitRequest

        key = key or usage_key(account, str(next(self.keys)))
        return self.ledger.debit(account, DebitRequest(key=key, amount=Decimal(amount), fingerprint=amount))


def account_item_size(ctx: BenchContext, account: str) -> int:
    from credits_ledger.dal import items as it

    raw = ctx.client.get_item(TableName=ctx.table, Key=it.account_key(account), ConsistentRead=True)["Item"]
    return item_size(raw)


def entry_item_size(ctx: BenchContext, key: str) -> int:
    from credits_ledger.dal import items as it

    return item_size(
        ctx.client.get_item(TableName=ctx.table, Key=it.entry_key(key), ConsistentRead=True)["Item"]
    )


def reference_read_ms(ctx: BenchContext) -> float:
    """Median time of a balance read (eventually consistent GetItem of an account item with 10 grants): the
    unit of the ``x balance read`` column, which stays meaningful on a noisy machine."""
    fx = Fixtures(ctx)
    # warm DynamoDB Local's JIT up (reads and transactions) before any figure is taken
    for _ in range(5):
        warm, _ = fx.account(10)
        for _ in range(20):
            fx.debit(warm, "1")
    account, _ = fx.account(10)
    for _ in range(200):
        fx.ledger.balance(account)
    return measure(ctx, "reference", "balance read", lambda _s: fx.ledger.balance(account), runs=101).ms


def model_self_check(ctx: BenchContext) -> str:
    """Check the transaction write-unit model against DynamoDB Local on one-action transactions (which it
    reports right), with the real item shapes: a grant put (3 GSIs), its close (leaves ExpiringGrants), a
    change of a non-key attribute, account items growing past 1 KB, an entry put."""
    t = ctx.table
    grant = {
        "pk": {"S": "GRANT#selfcheck"},
        "sk": {"S": "GRANT"},
        "grant_id": {"S": "gr_selfcheck"},
        "account_id": {"S": "cus_selfcheck"},
        "funding_key": {"S": "pi_selfcheck"},
        "expiry_shard": {"S": "EXPIRY"},
        "expiry_key": {"S": "00001767225600000000#gr_selfcheck"},
        "status": {"S": "active"},
        "amount": {"N": "100"},
    }
    key = {"pk": grant["pk"], "sk": grant["sk"]}
    account = {
        "pk": {"S": "ACCOUNT#cus_selfcheck"},
        "sk": {"S": "STATE"},
        "account_id": {"S": "cus_selfcheck"},
    }
    actions: list[dict[str, Any]] = [
        {"Put": {"TableName": t, "Item": grant}},
        {
            "Update": {
                "TableName": t,
                "Key": key,
                "UpdateExpression": "SET amount = :a",
                "ExpressionAttributeValues": {":a": {"N": "99"}},
            }
        },
        {
            "Update": {
                "TableName": t,
                "Key": key,
                "UpdateExpression": "SET #s = :s REMOVE expiry_shard, expiry_key",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":s": {"S": "depleted"}},
            }
        },
        {"Put": {"TableName": t, "Item": {**account, "pad": {"S": "x" * 700}}}},
        {"Put": {"TableName": t, "Item": {**account, "pad": {"S": "x" * 1500}}}},
        {"Put": {"TableName": t, "Item": {**account, "pad": {"S": "x" * 10}}}},
        {
            "Put": {
                "TableName": t,
                "Item": {
                    "pk": {"S": "ENTRY#selfcheck"},
                    "sk": {"S": "ENTRY"},
                    "account_id": {"S": "cus_selfcheck"},
                    "seq": {"N": "1"},
                },
            }
        },
    ]
    before = len(ctx.counter.model_mismatches)
    for action in actions:
        ctx.client.transact_write_items(TransactItems=[action])
    mismatches = ctx.counter.model_mismatches[before:]
    if mismatches:
        return f"WRITE-UNIT MODEL DISAGREES with DynamoDB Local on {len(mismatches)} of {len(actions)} checks"
    return f"write-unit model agrees with DynamoDB Local on {len(actions)} one-action transactions"


@section("ledger", "every ledger operation on an account with 10 active grants")
def ledger_section(ctx: BenchContext) -> list[Any]:
    from credits_ledger.domain.errors import InsufficientCredits
    from credits_ledger.domain.idempotency import usage_key
    from credits_ledger.ledger import DebitRequest

    fx = Fixtures(ctx)
    led = fx.ledger
    name = "ledger"
    rows: list[Any] = []

    def fresh(funded: bool = False) -> Callable[[], tuple[str, list[str]]]:
        return lambda: fx.account(10, funded=funded)

    # (row, operation on a fresh account with 10 grants, whether those grants are Stripe-funded, note)
    on_fresh_account: list[tuple[str, Callable[[tuple[str, list[str]]], Any], bool, str]] = [
        (
            "grant (11th grant, with expiry)",
            lambda s: fx.grant(s[0], "100", expires_in=timedelta(days=90)),
            False,
            "account + entry + grant item (GSIs: GrantsByAccount, ExpiringGrants)",
        ),
        (
            "grant (Stripe-funded, with expiry)",
            lambda s: fx.grant(
                s[0], "100", expires_in=timedelta(days=90), funding_key=f"pi_{uuid.uuid4().hex}"
            ),
            False,
            "funding_key is an attribute, not indexed: as any grant",
        ),
        (
            "debit touching 1 grant (10 active)",
            lambda s: fx.debit(s[0], "1"),
            False,
            "target: <= 1 RRU, <= 4 WRU",
        ),
        (
            "debit touching 3 grants (depletes 2)",
            lambda s: fx.debit(s[0], "250"),
            False,
            "+ 2 grant-item closes",
        ),
        (
            "debit touching 3 grants, Stripe-funded",
            lambda s: fx.debit(s[0], "250"),
            True,
            "as unfunded grants",
        ),
    ]
    for label, op, funded, note in on_fresh_account:
        rows.append(measure(ctx, name, label, op, setup=fresh(funded), note=note))

    replay_account, _ = fx.account(10)
    first = fx.debit(replay_account, "1", key=usage_key(replay_account, "replayed"))
    rows.append(
        measure(
            ctx,
            name,
            "replayed debit (same key)",
            lambda _s: fx.debit(replay_account, "1", key=usage_key(replay_account, "replayed")),
            note="target: 0 WRU",
        )
    )
    assert (
        first.entry.seq == fx.debit(replay_account, "1", key=usage_key(replay_account, "replayed")).entry.seq
    )

    poor_account, _ = fx.account(10)

    def rejected(_s: Any) -> None:
        try:
            fx.debit(poor_account, "5000")
        except InsufficientCredits:
            return
        raise AssertionError("the debit should have been refused")

    rows.append(
        measure(
            ctx,
            name,
            "debit refused (insufficient credits)",
            rejected,
            note="eventual read, then re-decided on a strong read",
        )
    )

    def batch(s: tuple[str, list[str]]) -> None:
        requests = [
            DebitRequest(key=usage_key(s[0], str(next(fx.keys))), amount=Decimal("1"), fingerprint="1")
            for _ in range(10)
        ]
        results = led.debit_many(s[0], requests)
        assert all(r.outcome is not None for r in results)

    rows.append(
        measure(ctx, name, "debit_many: 10 debits, 1 account", batch, setup=fresh(), note="one transaction")
    )

    def due_grant() -> str:
        account = next(fx.accounts)
        for i in range(9):
            fx.grant(account, "100", priority=10 * (i + 1), expires_in=timedelta(days=30 + i))
        return fx.grant(account, "100", priority=5, expires_in=timedelta(minutes=1))

    rows.append(
        measure(
            ctx,
            name,
            "expire (one due grant)",
            lambda gid: led.expire(gid, fx.clock() + timedelta(minutes=2)),
            setup=due_grant,
            note="GetItem grant + the change",
        )
    )
    rows.append(
        measure(
            ctx, name, "void", lambda s: led.void(s[1][3]), setup=fresh(), note="GetItem grant + the change"
        )
    )
    rows.append(
        measure(
            ctx,
            name,
            "hold",
            lambda s: led.hold(s[1][3], key=f"hold:{next(fx.keys)}"),
            setup=fresh(),
            note="account + entry only",
        )
    )

    def held() -> tuple[str, list[str]]:
        account, ids = fx.account(10)
        led.hold(ids[3], key=f"hold:{next(fx.keys)}")
        return account, ids

    rows.append(
        measure(ctx, name, "release", lambda s: led.release(s[1][3], key=f"rel:{next(fx.keys)}"), setup=held)
    )
    rows.append(
        measure(
            ctx,
            name,
            "revoke (partial, 40 of 100)",
            lambda s: led.revoke(s[1][3], Decimal("40"), key=f"rev:{next(fx.keys)}"),
            setup=fresh(),
        )
    )
    rows.append(
        measure(
            ctx,
            name,
            "adjust +10 (adds a grant)",
            lambda s: led.adjust(s[0], Decimal("10"), key=f"adj:{next(fx.keys)}"),
            setup=fresh(),
        )
    )
    rows.append(
        measure(
            ctx,
            name,
            "adjust -10 (spends like a debit)",
            lambda s: led.adjust(s[0], Decimal("-10"), key=f"adj:{next(fx.keys)}"),
            setup=fresh(),
        )
    )

    read_account, _ = fx.account(10)
    for _ in range(40):
        fx.debit(read_account, "1")
    rows.append(
        measure(ctx, name, "balance read", lambda _s: led.balance(read_account), note="GetItem (eventual)")
    )
    rows.append(
        measure(
            ctx,
            name,
            "grants page (limit 25: 10 grants)",
            lambda _s: led.grants(read_account, 25),
            note="Query GrantsByAccount + GetItem account",
        )
    )
    rows.append(
        measure(
            ctx,
            name,
            "ledger page (limit 25 of 50 entries)",
            lambda _s: led.transactions(read_account, 25),
            note="Query LedgerByAccount",
        )
    )

    # sizes the write units follow
    size_account, _ = fx.account(10)
    key = usage_key(size_account, "size-probe")
    fx.debit(size_account, "1", key=key)
    ctx.extra["account_item_bytes_10"] = account_item_size(ctx, size_account)
    ctx.extra["entry_item_bytes"] = entry_item_size(ctx, key)
    return rows


@section("growth", "a debit touching 1 grant as the number of live grants on the account grows")
def growth_section(ctx: BenchContext) -> list[Any]:
    fx = Fixtures(ctx)
    rows: list[Any] = []
    sizes: dict[int, int] = {}
    for live in (1, 5, 10, 20, 40, 80):
        runs = max(3, ctx.runs // 3) if live >= 40 else max(5, ctx.runs // 2)
        row = measure(
            ctx,
            "growth",
            f"debit touching 1 grant, {live} live grants",
            lambda s: fx.debit(s[0], "1"),
            setup=lambda n=live: fx.account(n),
            runs=runs,
        )
        account, _ = fx.account(live)
        sizes[live] = account_item_size(ctx, account)
        rows.append(replace(row, note=f"account item {sizes[live]:,} B"))
    ctx.extra["account_item_bytes_by_live"] = sizes
    return rows


# =========================================================================================================
# Running and printing
# =========================================================================================================
def _fmt(units: float) -> str:
    return f"{units:g}"


def render_table(rows: Sequence[OpRow], reference_ms: float | None) -> str:
    head = (
        "| operation | read units | write units | write units if GSI x2 | of which GSI | DynamoDB Local "
        "reported (R / W) | calls | ms (median) | x balance read | note |"
    )
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for r in rows:
        ratio = f"{r.ms / reference_ms:.1f}" if reference_ms else "-"
        flag = " (varies)" if r.varies else ""
        lines.append(
            f"| {r.name} | {_fmt(r.read_units)} | {_fmt(r.write_units)}{flag} | {_fmt(r.write_units_gsi_doubled)} | "
            f"{_fmt(r.index_write_units)} | {_fmt(r.local_read_units)} / {_fmt(r.local_write_units)} | {r.calls} | "
            f"{r.ms:.1f} | {ratio} | {r.note} |"
        )
    return "\n".join(lines)


def targets(rows: Sequence[OpRow]) -> list[str]:
    found = {r.name: r for r in rows}
    out: list[str] = []
    one = found.get("debit touching 1 grant (10 active)")
    if one is not None:
        ok_r, ok_w = one.read_units <= 1, one.write_units <= 4
        out.append(
            f"target debit touching 1 grant (<= 10 active): <= 1 read unit: {'MET' if ok_r else 'NOT MET'} "
            f"({_fmt(one.read_units)}); <= 4 write units: {'MET' if ok_w else 'NOT MET'} "
            f"({_fmt(one.write_units)}, of which GSI {_fmt(one.index_write_units)})"
        )
    replay = found.get("replayed debit (same key)")
    if replay is not None:
        ok = replay.write_units == 0
        out.append(
            f"target replayed debit: 0 write units: {'MET' if ok else 'NOT MET'} ({_fmt(replay.write_units)})"
        )
    return out


def run_external(name: str, module_name: str, endpoint: str) -> list[Any]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return [f"{name}: no {module_name} module yet, skipped"]
        raise
    return list(module.run(endpoint))


def available_sections() -> dict[str, str]:
    found = {s.name: s.description for s in SECTIONS.values()}
    for name, (module_name, description) in EXTERNAL_SECTIONS.items():
        if importlib.util.find_spec(module_name) is not None:
            found[name] = f"{description} ({module_name})"
    return found


@contextlib.contextmanager
def dynamodb(endpoint: str | None) -> Iterator[str]:
    if endpoint:
        yield endpoint
        return
    from credits_dev.local.dynamodb_local import DynamoDBLocal

    with DynamoDBLocal() as server:
        yield server.endpoint_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", metavar="SECTION", help="run only this section (repeatable)"
    )
    parser.add_argument(
        "--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 15)), help="runs per operation"
    )
    parser.add_argument("--endpoint", default=None, help="use this DynamoDB Local instead of starting one")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--all", action="store_true", help=f"also the slow sections {sorted(SLOW_SECTIONS)}")
    args = parser.parse_args(argv)

    sections = available_sections()
    if args.list:
        for name, description in sections.items():
            slow = " [slow: only with --all or --only]" if name in SLOW_SECTIONS else ""
            print(f"{name:10} {description}{slow}")
        return 0
    chosen = args.only or [name for name in sections if args.all or name not in SLOW_SECTIONS]
    unknown = [s for s in chosen if s not in sections]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {sorted(sections)}")

    began = time.monotonic()
    with dynamodb(args.endpoint) as endpoint:
        client, counter = counted_client(endpoint)
        table = credits_table(client, "bench")
        ctx = BenchContext(endpoint=endpoint, table=table, runs=args.runs, client=client, counter=counter)
        self_check = model_self_check(ctx)
        ctx.extra["reference_ms"] = reference_read_ms(ctx)
        print(f"# make bench: DynamoDB Local at {endpoint}, {args.runs} runs per operation, medians")
        print(f"# calibration: {counter.calibration.describe()}")
        print(
            "# read/write units: what DynamoDB in AWS charges (transactional table writes x2, GSI updates x1, "
            "missing keys 0.5); 'if GSI x2': were GSI updates of transactions doubled too"
        )
        print(f"# {self_check}")
        print(
            f"# 'x balance read': the operation's time / {ctx.extra['reference_ms']:.2f} ms, the median balance "
            "read (times exclude the bench's own image reads)\n"
        )
        op_rows: list[OpRow] = []
        for name in chosen:
            t0 = time.monotonic()
            if name in SECTIONS:
                found = SECTIONS[name].run(ctx)
            else:
                found = run_external(name, EXTERNAL_SECTIONS[name][0], endpoint)
            ops = [r for r in found if isinstance(r, OpRow)]
            others = [r for r in found if not isinstance(r, OpRow)]
            op_rows += ops
            print(f"## {name} ({time.monotonic() - t0:.0f} s)\n")
            if ops:
                print(render_table(ops, ctx.extra["reference_ms"]))
            for row in others:
                print(row)
            print()
        for line in targets(op_rows):
            print(line)
        if "account_item_bytes_10" in ctx.extra:
            size = ctx.extra["account_item_bytes_10"]
            print(
                f"account item with 10 live grants: {size:,} bytes ({math.ceil(size / 1024)} KB write unit(s)); "
                f"a debit entry item: {ctx.extra['entry_item_bytes']:,} bytes"
            )
        for mismatch in counter.model_mismatches:
            print(f"WARNING: write-unit model disagrees with DynamoDB Local: {mismatch}")
        print(f"# total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
