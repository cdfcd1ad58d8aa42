"""Bench section ``hot``: one busy account against the same load spread over accounts, and what a debit costs
as an account's live grants grow (issue 11).

    python -m tools.bench --only hot          # within make bench
    python -m tools.bench_hot [ENDPOINT]      # alone (starts DynamoDB Local when no endpoint is given)

1. Ledger on DynamoDB Local: W writers (threads, each with its own boto3 client and Ledger, as each Lambda
   instance has its own) debit 1 credit in a loop for ``BENCH_HOT_SECONDS`` (default 4) seconds, all on ONE
   account, then each on its own account. Per W: debits/s, p50/p99 latency of a debit (conflict retries
   included), conflicts (a version conflict the ledger retried), 429s (ConcurrencyConflict: gave up after
   its attempts), and the one-account throughput as a share of the spread one. A debit that loses its race
   joins the account's debit queue (combining.py). Then, at W=32 on one account, the alternatives: each
   debit alone as before combining (backoff x1 and x0.25), the write pattern of escrow lanes, and combining
   inside one process (no queue items, no lease: what the rendezvous across instances costs).
2. The same over HTTP against the local stack (``python -m credits_dev.local`` on this DynamoDB Local, its
   API function in worker processes, ``CREDITS_LOCAL_CONCURRENCY`` of them at most): W clients POST
   /v1/usage (``BENCH_HOT_HTTP=0`` skips it). The API function's environments are started up to that limit
   before the first row (a short spread load, not counted): worker cold starts are the ``coldstart`` section's.
3. The cost of a 1-credit debit and of a balance read (AWS request units, modelled as ``tools.bench`` does)
   with 10, 1,000 and 10,000 live grants on the account (``BENCH_HOT_GRANTS``, e.g. ``10,100000``). Accounts
   are seeded with what that many grant transactions would have left (credits_dev.seed.seed_ledger: the
   account item holds the first grants in spend order, the rest are kept apart from it), not by 10,000
   grant transactions.

The host matters: every writer is a Python thread of this process and DynamoDB Local is one Java process on
the same machine, so absolute rates are those of the machine; the one-account / spread ratio, latencies and
conflict counts are the figures to compare.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from tools.bench import (
    REGION,
    ValueRow,
    counted_client,
    credits_table,
    item_size,
    ledger_client,
    section_main,
)

ROOT = Path(__file__).resolve().parents[1]
SECTION = "hot"
WRITERS = tuple(int(w) for w in os.environ.get("BENCH_HOT_WRITERS", "1,8,32,64").split(","))
SECONDS = float(os.environ.get("BENCH_HOT_SECONDS", "4"))
# The goal row compares the most grants with the fewest (issue 11: 10,000 against 10).
GRANT_COUNTS = tuple(
    int(n) for n in os.environ.get("BENCH_HOT_GRANTS", "10,1000,10000").split(",") if n.strip()
)
ADMIN_KEY = "local_admin_bench_hot_0123456789"


@dataclass(frozen=True)
class HotRow:
    """One writers configuration: throughput, latency, conflicts, 429s."""

    path: str  # ledger | http
    writers: int
    layout: str  # one account | spread
    debits: int
    seconds: float
    p50_ms: float
    p99_ms: float
    conflicts: int
    rate_limited: int
    errors: int
    ratio: float | None = None  # one account / spread, set on the one-account row
    # DynamoDB calls the writers sent per debit done (ledger path; a debit that ended in a 429 or an error
    # counts its calls, not itself): on this bench's shared CPU, what mostly sets the ratio; in AWS, what the
    # account's partition serves per debit
    calls_per_debit: float | None = None

    @property
    def per_second(self) -> float:
        return self.debits / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        ratio = f"{self.ratio:5.2f} of spread" if self.ratio is not None else ""
        calls = f"calls/debit {self.calls_per_debit:4.2f}  " if self.calls_per_debit is not None else ""
        return (
            f"{SECTION:8} {self.path:6} W={self.writers:<3} {self.layout:12} {self.per_second:8.1f} debits/s  "
            f"p50 {self.p50_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms  conflicts {self.conflicts:6}  "
            f"429s {self.rate_limited:5}  errors {self.errors:3}  {calls}{ratio}"
        )


@dataclass(frozen=True)
class CostRow:
    live_grants: int
    read_units: float | None
    write_units: float | None
    item_bytes: int
    balance_read_units: float | None = None
    note: str = ""

    def __str__(self) -> str:
        if self.read_units is None or self.write_units is None:
            units = "      -  RRU       -  WRU"
        else:
            units = f"{self.read_units:7.1f}  RRU {self.write_units:7.1f}  WRU"
        balance = (
            "" if self.balance_read_units is None else f"  balance read {self.balance_read_units:.1f} RRU"
        )
        return (
            f"{SECTION:8} debit of 1 credit, {self.live_grants:>7,} live grants {units}  "
            f"account item {self.item_bytes:>9,} B{balance}  {self.note}"
        )


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    conflicts: int = 0
    rate_limited: int = 0
    errors: int = 0
    first_error: str = ""
    calls: int = 0  # DynamoDB calls sent once the load started (ledger path)


class _Load:
    """W writer threads that start together and debit for ``SECONDS``: each writer's tally and count of
    debits done, and the barrier and event that start and stop them all."""

    def __init__(self, writers: int) -> None:
        self.writers = writers
        self.tallies = [_Tally() for _ in range(writers)]
        self.counts = [0] * writers
        self.start = threading.Barrier(writers + 1)
        self.stop = threading.Event()

    def run(
        self,
        writer: Callable[[int], None],
        helpers: tuple[threading.Thread, ...] = (),
        seconds: float | None = None,
    ) -> float:
        """Run ``writer(index)`` on W threads (``helpers`` started before them and joined after them) for
        ``seconds`` (default SECONDS); the seconds from the common start until all have ended."""
        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(self.writers)]
        for thread in (*helpers, *threads):
            thread.start()
        self.start.wait()
        began = time.perf_counter()
        time.sleep(SECONDS if seconds is None else seconds)
        self.stop.set()
        for thread in (*threads, *helpers):
            thread.join()
        return time.perf_counter() - began

    def row(self, path: str, spread: bool, elapsed: float) -> HotRow:
        return _row(path, self.writers, spread, sum(self.counts), elapsed, self.tallies)


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# ---- 1. the ledger under W writers --------------------------------------------------------------------------
def _fund(ledger: Any, account: str, grants: int = 10, amount: str = "100000") -> None:
    from credits_ledger.domain.models import Source
    from credits_ledger.domain.transitions import GrantSpec
    from credits_ledger.ledger import new_id

    for index in range(grants):
        grant_id = new_id("gr")
        spec = GrantSpec(grant_id, Decimal(amount), Source("admin"), priority=10 * (index + 1))
        ledger.grant(account, spec, key=f"grant:{grant_id}")


def _ledger_writers(
    endpoint: str, table: str, writers: int, spread: bool, backoff_scale: float = 1.0, combine: bool = True
) -> HotRow:
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.domain.errors import ConcurrencyConflict
    from credits_ledger.ledger import DebitRequest, Ledger

    run = uuid.uuid4().hex[:6]
    accounts = [f"cus_hot_{run}_{i}" for i in (range(writers) if spread else range(1))]
    setup = Ledger(AccountRepository(ledger_client(endpoint), table))
    for account in accounts:
        _fund(setup, account)
    load = _Load(writers)

    def writer(index: int) -> None:
        tally = load.tallies[index]

        def backoff(seconds: float) -> None:  # the ledger calls it once per version conflict
            tally.conflicts += 1
            time.sleep(seconds * backoff_scale)

        ledger = Ledger(
            AccountRepository(ledger_client(endpoint), table), sleep=backoff, combine_contended_debits=combine
        )
        account = accounts[index if spread else 0]

        def count_call(**_: Any) -> None:
            tally.calls += 1

        load.start.wait()
        ledger.repository.client.meta.events.register("before-call.dynamodb", count_call)
        n = 0
        while not load.stop.is_set():
            n += 1
            began = time.perf_counter()
            try:
                ledger.debit(account, DebitRequest(f"use:{run}:{index}:{n}", Decimal(1), fingerprint="1"))
                load.counts[index] += 1
            except ConcurrencyConflict:
                tally.rate_limited += 1
            except Exception as exc:  # counted and shown, the bench goes on
                tally.errors += 1
                tally.first_error = tally.first_error or f"{exc.__class__.__name__}: {exc}"
            tally.latencies.append((time.perf_counter() - began) * 1000)

    row = load.row("ledger", spread, load.run(writer))
    calls = sum(t.calls for t in load.tallies)
    return HotRow(**{**row.__dict__, "calls_per_debit": calls / row.debits if row.debits else None})


def _row(path: str, writers: int, spread: bool, debits: int, elapsed: float, tallies: list[_Tally]) -> HotRow:
    latencies = [v for t in tallies for v in t.latencies]
    errors = [t.first_error for t in tallies if t.first_error]
    if errors:
        print(f"# {SECTION} {path} W={writers}: first error: {errors[0]}", file=sys.stderr)
    return HotRow(
        path=path,
        writers=writers,
        layout="spread" if spread else "one account",
        debits=debits,
        seconds=elapsed,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        conflicts=sum(t.conflicts for t in tallies),
        rate_limited=sum(t.rate_limited for t in tallies),
        errors=sum(t.errors for t in tallies),
    )


def _pair(measure: Callable[[int, bool], HotRow], writers: int) -> list[HotRow]:
    one = measure(writers, False)
    spread = measure(writers, True)
    ratio = one.per_second / spread.per_second if spread.per_second else None
    return [HotRow(**{**one.__dict__, "ratio": ratio}), spread]


# ---- 1b. design alternatives for one busy account, measured on the same DynamoDB Local ------------------------
LANES = int(os.environ.get("BENCH_HOT_LANES", "8"))
ALTERNATIVE_WRITERS = int(os.environ.get("BENCH_HOT_ALTERNATIVE_WRITERS", "32"))


def _lanes_writers(endpoint: str, table: str, writers: int, lanes: int) -> HotRow:
    """The write pattern of escrow lanes: the account's spendable credits split over ``lanes`` items, a debit
    is one transaction [lane balance -= amount IF balance >= amount, entry put IF new]; a writer picks a
    random lane and on a failed balance condition tries another. Refill and the grant bookkeeping are left
    out: this measures the contention of the pattern, an upper bound for the design."""
    from botocore.exceptions import ClientError

    from credits_ledger.retry import pause_after_conflict

    run = uuid.uuid4().hex[:6]
    setup = ledger_client(endpoint)
    lane_keys = [{"pk": {"S": f"LANE#{run}#{i}"}, "sk": {"S": "LANE"}} for i in range(lanes)]
    for key in lane_keys:
        setup.put_item(TableName=table, Item={**key, "balance": {"N": "1000000"}})
    load = _Load(writers)

    def writer(index: int) -> None:
        import random

        tally = load.tallies[index]
        client = ledger_client(endpoint)
        load.start.wait()
        n = 0
        while not load.stop.is_set():
            n += 1
            began = time.perf_counter()
            for attempt in range(60):
                lane = lane_keys[random.randrange(lanes)]
                try:
                    client.transact_write_items(
                        TransactItems=[
                            {
                                "Update": {
                                    "TableName": table,
                                    "Key": lane,
                                    "UpdateExpression": "SET balance = balance - :a",
                                    "ConditionExpression": "balance >= :a",
                                    "ExpressionAttributeValues": {":a": {"N": "1"}},
                                }
                            },
                            {
                                "Put": {
                                    "TableName": table,
                                    "Item": {
                                        "pk": {"S": f"ENTRY#lane:{run}:{index}:{n}"},
                                        "sk": {"S": "ENTRY"},
                                        "amount": {"N": "-1"},
                                    },
                                    "ConditionExpression": "attribute_not_exists(pk)",
                                }
                            },
                        ]
                    )
                    load.counts[index] += 1
                    break
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                        tally.errors += 1
                        tally.first_error = tally.first_error or str(exc)
                        break
                    tally.conflicts += 1
                    time.sleep(pause_after_conflict(attempt))  # the ledger's own backoff
            else:
                tally.rate_limited += 1
            tally.latencies.append((time.perf_counter() - began) * 1000)

    return replace_layout(load.row("lanes", False, load.run(writer)), f"{lanes} lanes")


def _combined_writers(endpoint: str, table: str, writers: int) -> HotRow:
    """Request combining: the W writers hand their debits to one committer per account, which writes what
    has queued up as one ``debit_many`` (up to 40 debits per transaction) and answers each. Across Lambda
    instances this needs a shared queue and a leader; in one process it measures what combining buys."""
    import queue

    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.ledger import DebitRequest, Ledger

    run = uuid.uuid4().hex[:6]
    account = f"cus_hotc_{run}"
    ledger = Ledger(AccountRepository(ledger_client(endpoint), table))
    _fund(ledger, account)
    pending: queue.Queue[tuple[DebitRequest, threading.Event, list[Any]]] = queue.Queue()
    load = _Load(writers)
    batches: list[int] = []

    def committer() -> None:
        while not (load.stop.is_set() and pending.empty()):
            try:
                first = pending.get(timeout=0.05)
            except queue.Empty:
                continue
            group = [first]
            while len(group) < 40:
                try:
                    group.append(pending.get_nowait())
                except queue.Empty:
                    break
            batches.append(len(group))
            results = ledger.debit_many(account, [request for request, _, _ in group])
            for (_, done, out), result in zip(group, results, strict=True):
                out.append(result)
                done.set()

    def writer(index: int) -> None:
        tally = load.tallies[index]
        load.start.wait()
        n = 0
        while not load.stop.is_set():
            n += 1
            done, out = threading.Event(), []
            began = time.perf_counter()
            pending.put((DebitRequest(f"use:c:{run}:{index}:{n}", Decimal(1), fingerprint="1"), done, out))
            done.wait()
            tally.latencies.append((time.perf_counter() - began) * 1000)
            if out and out[0].error is None:
                load.counts[index] += 1
            else:
                tally.errors += 1

    row = load.row(
        "combine", False, load.run(writer, helpers=(threading.Thread(target=committer, daemon=True),))
    )
    mean = statistics.mean(batches) if batches else 0
    return replace_layout(row, f"~{mean:.0f}/tx")


def replace_layout(row: HotRow, layout: str) -> HotRow:
    return HotRow(**{**row.__dict__, "layout": layout})


# ---- 2. over HTTP against the local stack ---------------------------------------------------------------------
API_FUNCTION = "ApiFunction"


class _Stack:
    """``python -m credits_dev.local`` on a free port, using the bench's DynamoDB Local."""

    def __init__(self, endpoint: str) -> None:
        from credits_dev.local.dynamodb_local import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = Path(tempfile.mkdtemp(prefix="bench-hot-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CREDITS_", "STRIPE_"))}
        env.update(
            PORT=str(self.port),
            CREDITS_LOCAL_DIR=str(self.state),
            CREDITS_ADMIN_KEY=ADMIN_KEY,
            STRIPE_WEBHOOK_SECRET="whsec_bench_hot_0123456789abcdef",
            AWS_ENDPOINT_URL_DYNAMODB=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            PYTHONUNBUFFERED="1",
        )
        self.log = open(self.state / "stack.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "credits_dev.local"], cwd=ROOT, env=env, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the local stack exited: {(self.state / 'stack.log').read_text()[-2000:]}"
                )
            try:
                if self.request("GET", "/health")[0] == 200:
                    self.concurrency = int(self.request("GET", "/_local/info")[1]["concurrency"])
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the local stack did not answer /health in 180 s")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def warm(self) -> int:
        """Start the API function's execution environments up to the stack's concurrency before any row is
        measured (a short spread load, not counted), so that no row pays worker cold starts: those are the
        ``coldstart`` section's. Returns how many environments are warm then."""
        for _ in range(3):
            if self.environments() >= self.concurrency:
                break
            _http_writers(self, self.concurrency, True, seconds=1.0)
        return self.environments()

    def environments(self) -> int:
        """The API function's execution environments (worker processes) now."""
        environments = self.request("GET", "/_local/info")[1]["environments"]
        if API_FUNCTION not in environments:
            raise RuntimeError(f"the local stack runs no {API_FUNCTION}: {sorted(environments)}")
        return int(environments[API_FUNCTION])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _http_writers(stack: _Stack, writers: int, spread: bool, seconds: float | None = None) -> HotRow:
    run = uuid.uuid4().hex[:6]
    accounts = [f"cus_hoth_{run}_{i}" for i in (range(writers) if spread else range(1))]
    for account in accounts:
        status, body = stack.request(
            "POST", f"/v1/customers/{account}/grants", {"amount": "1000000", "id": f"fund-{account}"}
        )
        assert status in (200, 201), (status, body)
    load = _Load(writers)

    def writer(index: int) -> None:
        tally = load.tallies[index]
        account = accounts[index if spread else 0]
        load.start.wait()
        n = 0
        while not load.stop.is_set():
            n += 1
            body = {"id": f"u-{run}-{index}-{n}", "customer": account, "meter": "api_call", "quantity": 1}
            began = time.perf_counter()
            try:
                status, answer = stack.request("POST", "/v1/usage", body)
            except OSError as exc:
                status, answer = 0, str(exc)
            tally.latencies.append((time.perf_counter() - began) * 1000)
            if status == 201:
                load.counts[index] += 1
            elif status == 429:
                tally.rate_limited += 1
            else:
                tally.errors += 1
                tally.first_error = tally.first_error or f"HTTP {status}: {answer}"

    return load.row("http", spread, load.run(writer, seconds=seconds))


# ---- 3. the debit's cost as live grants grow ----------------------------------------------------------------
def _live_grants(count: int, now: datetime) -> list[Any]:
    from credits_ledger.domain.models import Category, LiveGrant

    return [
        LiveGrant(
            grant_id=f"gr_{i:012x}{uuid.uuid4().hex[:14]}",  # the shape of ledger.new_id's ids
            remaining=Decimal(100),
            category=Category.PAID,
            priority=50,
            effective_at=now - timedelta(days=1),
            expires_at=now + timedelta(days=30, seconds=i),  # distinct expiries: spent in this order
        )
        for i in range(count)
    ]


def _account_item_bytes(client: Any, table: str, account: str) -> int:
    raw = client.get_item(TableName=table, Key={"pk": {"S": f"ACCOUNT#{account}"}, "sk": {"S": "STATE"}})
    return item_size(raw["Item"])


def _debit_costs(endpoint: str, table: str) -> list[Any]:
    """A 1-credit debit (it spends part of one grant), then a balance read, on accounts of GRANT_COUNTS live
    grants, each seeded as that many grant transactions would have left it (credits_dev.seed.seed_ledger: the first
    grants on the account item, the rest kept apart from it)."""
    from credits_dev.seed import seed_ledger
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.ledger import DebitRequest, Ledger

    client, counter = counted_client(endpoint)
    now = datetime.now(UTC)
    rows: list[Any] = []
    costs: dict[int, float] = {}
    for count in GRANT_COUNTS:
        account = f"cus_cost_{count}_{uuid.uuid4().hex[:6]}"
        seed_ledger(client, table, account, _live_grants(count, now), now - timedelta(days=1))
        ledger = Ledger(AccountRepository(client, table), clock=lambda: now)
        samples = []
        for run in range(5):
            counter.reset()
            ledger.debit(account, DebitRequest(f"use:cost:{count}:{run}", Decimal(1), fingerprint="1"))
            snapshot = counter.snapshot()
            samples.append((snapshot["read"], snapshot["write"]))
        reads = statistics.median(s[0] for s in samples)
        writes = statistics.median(s[1] for s in samples)
        costs[count] = writes
        counter.reset()
        ledger.balance(account)  # with its next expiry, which may lie among the grants kept apart
        balance_reads = counter.snapshot()["read"]
        rows.append(CostRow(count, reads, writes, _account_item_bytes(client, table, account), balance_reads))
    few, many = costs[min(GRANT_COUNTS)], costs[max(GRANT_COUNTS)]
    verdict = "met" if many <= 2 * few else "NOT met"
    rows.append(
        ValueRow(
            SECTION,
            f"debit at {max(GRANT_COUNTS):,} / at {min(GRANT_COUNTS)} live grants",
            many / few if few else float("inf"),
            "x",
            f"write units (goal <= 2x: {verdict}); no item limit: grants past the first "
            "10 are kept apart from the account item",
        )
    )
    return rows


# ---- the section ------------------------------------------------------------------------------------------------
def run(endpoint: str) -> list[Any]:
    table = credits_table(ledger_client(endpoint), "hot")
    rows: list[Any] = []
    for writers in WRITERS:
        rows += _pair(lambda w, spread: _ledger_writers(endpoint, table, w, spread), writers)
    spread = next((r for r in rows if r.writers == ALTERNATIVE_WRITERS and r.layout == "spread"), None)
    # each debit alone (no queue): what the ledger did before request combining, with the backoff scaled
    backoffs = [
        replace_layout(
            _ledger_writers(endpoint, table, ALTERNATIVE_WRITERS, False, scale, combine=False),
            f"alone x{scale:g}",
        )
        for scale in (1.0, 0.25)
    ]
    for alternative in (
        *backoffs,
        _lanes_writers(endpoint, table, ALTERNATIVE_WRITERS, LANES),
        _combined_writers(endpoint, table, ALTERNATIVE_WRITERS),
    ):
        ratio = alternative.per_second / spread.per_second if spread and spread.per_second else None
        rows.append(HotRow(**{**alternative.__dict__, "ratio": ratio}))
    if os.environ.get("BENCH_HOT_HTTP", "1") != "0":
        stack = _Stack(endpoint)
        try:
            print(
                f"# {SECTION}: local stack at {stack.url}, API function in up to {stack.concurrency} "
                f"worker processes (CREDITS_LOCAL_CONCURRENCY), {stack.warm()} warm before the rows",
                file=sys.stderr,
            )
            for writers in WRITERS:
                rows += _pair(lambda w, spread: _http_writers(stack, w, spread), writers)
        finally:
            stack.stop()
    rows += _debit_costs(endpoint, table)
    return rows


if __name__ == "__main__":
    section_main(run)
