"""Bench section ``expiry``: read units of one expiry run over 1,000 due grants, on an otherwise empty table
and on a table that also holds 100,000 grants without expiry plus 10,000 expiring far in the future.

The expiry run reads the sparse ``ExpiringGrants`` index up to "now" (only live grants with an expiry are in
it; far-future ones sort after "now" and are never read), so both runs must consume the same read units
(within 10%): cost follows the number of due grants, not the table size. Read and write units are counted
from ``ReturnConsumedCapacity`` on DynamoDB Local (every DynamoDB call of the run is instrumented).

    python -m tools.bench_expiry                          # starts DynamoDB Local; exit 1 if they differ by >10%
    python -m tools.bench_expiry http://127.0.0.1:8000    # an endpoint that is already running
    run(endpoint) -> list[Row]                            # the "expiry" section of tools/bench.py
    BENCH_EXPIRY_DUE / BENCH_EXPIRY_FILLER / BENCH_EXPIRY_FAR override the sizes (1,000 / 100,000 / 10,000)

Writing the 110,000 filler items dominates the time (minutes on DynamoDB Local).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from credits_ledger.bus import BusEvent
from credits_ledger.dal import items as it
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.reminders import ReminderRepository
from credits_ledger.domain.models import Category, CostBasis, Grant, GrantStatus, Source
from credits_ledger.domain.transitions import GrantSpec
from credits_ledger.jobs.expiry import ExpiryJob
from credits_ledger.jobs.scheduled import Deadline
from credits_ledger.ledger import Ledger
from credits_ledger.pricing import parse_pricing
from credits_ledger.reservations import Reservations
from tools.bench import READ_OPS as READS
from tools.bench import ROOT, section_main
from tools.bench import WRITE_OPS as WRITES
from tools.bench import ValueRow as Row

SECTION = "expiry"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
RUN_AT = T0 + timedelta(days=2)
TOLERANCE = 0.10


class CapacityMeter:
    """Asks every DynamoDB call of ``client`` for its consumed capacity and sums it per operation."""

    def __init__(self, client: Any) -> None:
        self.units: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.enabled = False
        client.meta.events.register("provide-client-params.dynamodb.*", self._ask)
        client.meta.events.register("after-call.dynamodb.*", self._count)

    def _ask(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.enabled and model.name in READS | WRITES:
            params["ReturnConsumedCapacity"] = "TOTAL"

    def _count(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if not self.enabled:
            return
        consumed = parsed.get("ConsumedCapacity")
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        self.units[model.name] += sum(float(c.get("CapacityUnits", 0)) for c in entries)
        self.calls[model.name] += 1

    def reset(self) -> None:
        self.units.clear()
        self.calls.clear()

    @property
    def read_units(self) -> float:
        return sum(v for k, v in self.units.items() if k in READS)

    @property
    def write_units(self) -> float:
        return sum(v for k, v in self.units.items() if k in WRITES)


class NullBus:
    """The run's reminders would go to EventBridge; the bench counts DynamoDB only."""

    def publish(self, events: list[BusEvent]) -> None:
        return None


@dataclass
class Scenario:
    name: str
    filler_without_expiry: int
    filler_far_future: int
    expired: int = 0
    read_units: float = 0.0
    write_units: float = 0.0
    seconds: float = 0.0
    by_operation: dict[str, tuple[int, float]] = field(default_factory=dict)


def _filler_grants(count: int, far_future: bool, tag: str) -> Iterator[dict[str, Any]]:
    """Real grant items (the ledger's own item mapping) of 10,000 filler accounts, written directly."""
    expires_at = T0 + timedelta(days=3650) if far_future else None
    for n in range(count):
        grant = Grant(
            grant_id=f"gr_{tag}_{n:07d}",
            account_id=f"cus_filler_{n % 10_000:05d}",
            amount=Decimal(100),
            remaining=Decimal(100),
            category=Category.PAID,
            priority=50,
            effective_at=T0,
            expires_at=expires_at,
            source=Source("stripe_payment", f"pi_{tag}_{n}"),
            cost_basis=CostBasis(Decimal(10), "eur"),
            created_at=T0,
            status=GrantStatus.ACTIVE,
            metadata={"pack": "starter"},
        )
        yield it.to_dynamo(it.grant_to_item(grant))


def _batch_write(
    make_client: Callable[[], Any], table: str, items: Iterator[dict[str, Any]], threads: int = 8
) -> int:
    chunks: list[list[dict[str, Any]]] = []
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append({"PutRequest": {"Item": item}})
        if len(chunk) == 25:
            chunks.append(chunk)
            chunk = []
    if chunk:
        chunks.append(chunk)

    def write(batch: list[dict[str, Any]]) -> None:
        client = make_client()
        request = {table: batch}
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, chunks))
    return sum(len(c) for c in chunks)


def run_scenario(
    make_client: Callable[[], Any],
    create_table: Callable[[Any], str],
    scenario: Scenario,
    expiring: int = 1_000,
    per_account: int = 10,
    log: Callable[[str], None] = print,
) -> Scenario:
    client = make_client()
    table = create_table(client)
    ledger = Ledger(AccountRepository(client, table), clock=lambda: T0, sleep=lambda _: None)
    for n in range(expiring):
        spec = GrantSpec(
            grant_id=f"gr_due_{n:05d}",
            amount=Decimal(100),
            source=Source("admin"),
            expires_at=T0 + timedelta(days=1, seconds=n),
        )
        ledger.grant(f"cus_due_{n // per_account:04d}", spec, key=f"grant:{spec.grant_id}")
    started = time.perf_counter()
    written = _batch_write(make_client, table, _filler_grants(scenario.filler_without_expiry, False, "none"))
    written += _batch_write(make_client, table, _filler_grants(scenario.filler_far_future, True, "far"))
    if written:
        log(
            f"   {scenario.name}: {written:,} filler grant items written in {time.perf_counter() - started:.0f} s"
        )
    meter = CapacityMeter(client)
    job = ExpiryJob(
        ledger,
        ReminderRepository(client, table),
        NullBus(),  # type: ignore[arg-type]
        parse_pricing({}),
        reservations=Reservations.over(ledger.repository),
    )
    meter.enabled = True
    started = time.perf_counter()
    summary = job.run(RUN_AT, f"bench-{uuid.uuid4().hex[:8]}", Deadline(None))
    scenario.seconds = time.perf_counter() - started
    meter.enabled = False
    scenario.expired = summary.expired
    scenario.read_units = meter.read_units
    scenario.write_units = meter.write_units
    scenario.by_operation = {op: (meter.calls[op], meter.units[op]) for op in sorted(meter.units)}
    return scenario


def compare(empty: Scenario, full: Scenario) -> tuple[float, bool]:
    difference = abs(full.read_units - empty.read_units) / max(empty.read_units, 1e-9)
    return difference, difference <= TOLERANCE


def render(empty: Scenario, full: Scenario) -> str:
    difference, ok = compare(empty, full)
    lines = [
        f"expiry run over {empty.expired:,} due grants (10 per account), ReturnConsumedCapacity on every call",
        f"{'table':<44} {'expired':>8} {'read units':>11} {'RU/grant':>9} {'write units':>12} {'s':>6}",
    ]
    for s in (empty, full):
        label = f"{s.name} (+{s.filler_without_expiry:,} no expiry, +{s.filler_far_future:,} far future)"
        lines.append(
            f"{label:<44} {s.expired:>8} {s.read_units:>11.1f} {s.read_units / max(s.expired, 1):>9.2f}"
            f" {s.write_units:>12.1f} {s.seconds:>6.1f}"
        )
    for s in (empty, full):
        ops = ", ".join(f"{op} {calls}x/{units:.1f}" for op, (calls, units) in s.by_operation.items())
        lines.append(f"  {s.name}: {ops}")
    lines.append(f"read units differ by {difference:.1%} (limit {TOLERANCE:.0%}): {'OK' if ok else 'FAIL'}")
    return "\n".join(lines)


def bench(
    make_client: Callable[[], Any],
    create_table: Callable[[Any], str],
    *,
    expiring: int = 1_000,
    filler: int = 100_000,
    far_future: int = 10_000,
    log: Callable[[str], None] = print,
) -> tuple[Scenario, Scenario]:
    empty = run_scenario(make_client, create_table, Scenario("empty", 0, 0), expiring, log=log)
    full = run_scenario(make_client, create_table, Scenario("full", filler, far_future), expiring, log=log)
    return empty, full


def _table_factory(
    endpoint: str, client_for: Callable[[str], Any] | None
) -> tuple[Callable[[], Any], Callable[[Any], str]]:
    """(a client maker, a table creator) for the DynamoDB at ``endpoint``: one client per thread (boto3
    sessions are not thread-safe), tables from template.yaml with a unique suffix."""
    import boto3

    from credits_dev.local.tables import create_tables_from_template

    def make_client() -> Any:
        if client_for is not None:
            return client_for(endpoint)
        return boto3.session.Session().client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        )

    def create_table(client: Any) -> str:
        suffix = f"-exp-{uuid.uuid4().hex[:6]}"
        return str(
            create_tables_from_template(client, ROOT / "template.yaml", name_suffix=suffix)["CreditsTable"]
        )

    return make_client, create_table


def _sizes() -> tuple[int, int, int]:
    """(due grants, filler without expiry, far-future filler); BENCH_EXPIRY_* override for a quick look."""
    return (
        int(os.environ.get("BENCH_EXPIRY_DUE", 1_000)),
        int(os.environ.get("BENCH_EXPIRY_FILLER", 100_000)),
        int(os.environ.get("BENCH_EXPIRY_FAR", 10_000)),
    )


def rows(empty: Scenario, full: Scenario) -> list[Row]:
    difference, ok = compare(empty, full)
    found: list[Row] = []
    for s in (empty, full):
        note = (
            f"{s.filler_without_expiry:,} grants without expiry + {s.filler_far_future:,} far-future in table"
        )
        found.append(
            Row(SECTION, f"run over {s.expired:,} due grants, {s.name} table", s.read_units, "RCU", note)
        )
        found.append(
            Row(SECTION, f"  per due grant, {s.name} table", s.read_units / max(s.expired, 1), "RCU")
        )
        found.append(Row(SECTION, f"  write units, {s.name} table", s.write_units, "WCU"))
    verdict = "OK" if ok else "FAIL: cost follows table size"
    found.append(Row(SECTION, "read units, full vs empty", difference * 100, "%", f"limit 10%: {verdict}"))
    return found


def run(
    endpoint: str, *, client_for: Callable[[str], Any] | None = None, log: Callable[[str], None] = print
) -> list[Row]:
    """The section's rows on the DynamoDB at ``endpoint`` (``client_for(endpoint)`` may supply the clients,
    e.g. tools.bench's counted ones). Slow by design: it writes 110,000 filler items."""
    due, filler, far_future = _sizes()
    make_client, create_table = _table_factory(endpoint, client_for)
    empty, full = bench(
        make_client, create_table, expiring=due, filler=filler, far_future=far_future, log=log
    )
    log(render(empty, full))
    return rows(empty, full)


def main(argv: list[str] | None = None) -> int:
    found = section_main(run, argv)
    return 0 if "OK" in found[-1].note else 1


if __name__ == "__main__":
    sys.exit(main())
