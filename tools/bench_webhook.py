"""Bench section ``webhook``: what the Stripe webhook costs.

1. Cold import of the handler module: ``python -X importtime -c "import functions.stripe_webhook.app"`` in a
   fresh interpreter (median of a few runs), total ms and the part spent importing ``stripe`` (and the other
   heavy packages), since issue 4 asks the webhook path not to import what it does not use.
2. DynamoDB read / write capacity units per event, from ``ReturnConsumedCapacity`` on every call the
   processor makes (DynamoDB Local at ``endpoint``): a checkout.session.completed grant, a duplicate delivery
   of it, a 50 % refund, a dispute created (hold), plus an ignored event type.

    python -m tools.bench_webhook                         # starts DynamoDB Local, prints the rows
    python -m tools.bench_webhook http://127.0.0.1:8000   # an endpoint that is already running
    run(endpoint) -> list[Row]                            # for tools/bench.py

The events are the realistic ones of credits_dev/stripe_events.py.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench import ValueRow as Row
from tools.bench import credits_table, section_main

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "credits_ledger"
for _path in (LAYER, ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SECTION = "webhook"
HANDLER_MODULE = "functions.stripe_webhook.app"
IMPORT_RUNS = 5
READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
HEAVY = ("stripe", "requests", "boto3", "botocore", "aws_lambda_powertools", "aws_xray_sdk", "pydantic")


# ---------------------------------------------------------------------------------------------- import time
_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


@dataclass(frozen=True)
class ImportProfile:
    total_us: int  # the handler module's import, everything it pulled in
    by_package: dict[str, int]  # us spent importing each heavy package from outside it (deps included)


def parse_importtime(stderr: str) -> ImportProfile:
    """The handler's import = every top-level (indent 0) line after the interpreter's own startup (which ends
    with ``site``); a package's cost is the cumulative time of the line that first imported it."""
    rows = []
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if match:
            rows.append((int(match[2]), len(match[3]) // 2, match[4]))
    site = max((i for i, (_, level, name) in enumerate(rows) if level == 0 and name == "site"), default=-1)
    mine = rows[site + 1 :]
    if not any(name == HANDLER_MODULE for _, _, name in mine):
        raise RuntimeError(f"no `{HANDLER_MODULE}` line in the -X importtime output")
    total = sum(cumulative for cumulative, level, _ in mine if level == 0)
    # importtime prints a module after its children: a line's parent is the next line one level up. A package
    # costs the cumulative time of each of its modules imported from outside it (its dependencies included).
    by_package: dict[str, int] = defaultdict(int)
    for index, (cumulative, level, name) in enumerate(mine):
        package = name.split(".")[0]
        if package not in HEAVY:
            continue
        parent = next((n for _, lv, n in mine[index + 1 :] if lv < level), None)
        if parent is None or parent.split(".")[0] != package:
            by_package[package] += cumulative
    return ImportProfile(total, dict(by_package))


def import_profile(runs: int = IMPORT_RUNS, python: str = sys.executable) -> ImportProfile:
    """Median over ``runs`` fresh interpreters (no .pyc writes, the environment of a Lambda cold start)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(LAYER), str(ROOT)]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.setdefault("POWERTOOLS_SERVICE_NAME", "credits")
    profiles = []
    for _ in range(runs):
        done = subprocess.run(
            [python, "-X", "importtime", "-c", f"import {HANDLER_MODULE}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        profiles.append(parse_importtime(done.stderr))
    packages = {name for p in profiles for name in p.by_package}
    return ImportProfile(
        int(statistics.median(p.total_us for p in profiles)),
        {n: int(statistics.median(p.by_package.get(n, 0) for p in profiles)) for n in sorted(packages)},
    )


def import_rows(profile: ImportProfile, runs: int = IMPORT_RUNS) -> list[Row]:
    total_ms = profile.total_us / 1000
    rows = [
        Row(SECTION, "import functions.stripe_webhook.app (cold)", total_ms, "ms", f"median of {runs} runs")
    ]
    for name, us in sorted(profile.by_package.items(), key=lambda kv: -kv[1]):
        share = 100 * us / profile.total_us if profile.total_us else 0
        rows.append(
            Row(
                SECTION,
                f"  of which import {name}",
                us / 1000,
                "ms",
                f"{share:.0f} % (deps included; shares overlap)",
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------- capacity
class CapacityMeter:
    """Asks every DynamoDB call of ``client`` for its consumed capacity and sums it per operation."""

    def __init__(self, client: Any) -> None:
        self.units: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.rejected = 0  # error answers (a cancelled conditional transaction) carry no ConsumedCapacity
        client.meta.events.register("provide-client-params.dynamodb.*", self._ask)
        client.meta.events.register("after-call.dynamodb.*", self._count)

    @staticmethod
    def _ask(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in READS | WRITES:
            params["ReturnConsumedCapacity"] = "TOTAL"

    def _count(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        consumed = parsed.get("ConsumedCapacity")
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        self.units[model.name] += sum(float(c.get("CapacityUnits", 0)) for c in entries)
        self.calls[model.name] += 1
        self.rejected += 1 if "Error" in parsed else 0

    def take(self) -> tuple[float, float, int, int]:
        """(read units, write units, calls, rejected calls) since the last take."""
        reads = sum(v for k, v in self.units.items() if k in READS)
        writes = sum(v for k, v in self.units.items() if k in WRITES)
        calls, rejected = sum(self.calls.values()), self.rejected
        self.units.clear()
        self.calls.clear()
        self.rejected = 0
        return reads, writes, calls, rejected


def capacity_rows(client: Any, table: str) -> list[Row]:
    """Each scenario on its own fresh payment, measured alone."""
    from credits_dev import stripe_events as se
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.dal.payments import PaymentRepository
    from credits_ledger.ledger import Ledger
    from credits_ledger.pricing import load_pricing
    from credits_ledger.webhooks import StripeWebhookProcessor

    meter = CapacityMeter(client)
    processor = StripeWebhookProcessor(
        Ledger(AccountRepository(client, table)),
        PaymentRepository(client, table),
        load_pricing(ROOT / "config" / "pricing.toml"),
    )
    customer = se.new_id.customer()
    purchase = se.checkout_session_completed(customer, "starter", amount_subtotal=2000, amount_tax=400)
    pi = purchase["data"]["object"]["payment_intent"]
    scenarios: list[tuple[str, dict[str, Any], str]] = [
        ("checkout.session.completed (grant)", purchase, "processed"),
        ("same event redelivered (duplicate)", purchase, "duplicate"),
        ("charge.refunded 50 % (revoke)", se.charge_refunded(pi, 2400, 1200), "processed"),
        ("charge.dispute.created (hold)", se.dispute_created(pi, amount=2400), "processed"),
        ("customer.created (ignored type)", se.event("customer.created", se.fixture("customer")), "ignored"),
    ]
    meter.take()
    rows = []
    for name, ev, expected in scenarios:
        result = processor.process(ev)
        if result.status != expected:
            raise RuntimeError(f"{name}: status {result.status} ({result.reason}), expected {expected}")
        reads, writes, calls, rejected = meter.take()
        rows.append(Row(SECTION, f"{name} RCU", reads, "RCU", f"{calls} DynamoDB calls"))
        note = f"+ {rejected} rejected conditional write(s), units not reported" if rejected else ""
        rows.append(Row(SECTION, f"{name} WCU", writes, "WCU", note))
    return rows


def _tables(endpoint: str, tag: str, client_for: Callable[[str], Any] | None = None) -> tuple[Any, str]:
    """A client of the DynamoDB at ``endpoint`` (``client_for(endpoint)``'s when given, e.g. tools.bench's
    counted client) and a CreditsTable created on it from template.yaml."""
    import boto3

    if client_for is not None:
        client = client_for(endpoint)
    else:
        client = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        )
    return client, credits_table(client, tag)


def run(endpoint: str, *, client_for: Callable[[str], Any] | None = None) -> list[Row]:
    """The section's rows: import time, then capacity units per event on the DynamoDB at ``endpoint``
    (``client_for(endpoint)`` may supply the client, e.g. tools.bench's counted client; the tables are
    created from template.yaml with a unique suffix)."""
    rows = import_rows(import_profile(), IMPORT_RUNS)
    return rows + capacity_rows(*_tables(endpoint, "wh", client_for))


if __name__ == "__main__":
    section_main(run)
