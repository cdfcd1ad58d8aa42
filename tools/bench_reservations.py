"""Bench section ``reservations``: request units and time of reserve, capture, release (and a debit next to
open reservations) through the Reservations service, on an account holding 10 live grants.

    python -m tools.bench --only reservations     # within make bench
    python -m tools.bench_reservations [ENDPOINT] # alone (starts DynamoDB Local when no endpoint is given)

Units are AWS figures from ``tools.bench.counted_client`` (transactional writes modelled item by item); time
is the wall time on DynamoDB Local, median of RUNS. Each capture and release ends a reservation made
beforehand (not counted).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from tools.bench import counted_client, section_main

ROOT = Path(__file__).resolve().parents[1]
SECTION = "reservations"
RUNS = int(os.environ.get("BENCH_RESERVATIONS_RUNS", "15"))
GRANTS = 10
OPEN = 10  # open reservations on the account of the "debit next to open reservations" row


@dataclass(frozen=True)
class ReservationRow:
    name: str
    read_units: float
    write_units: float
    ms: float
    note: str = ""

    def __str__(self) -> str:
        return (
            f"{SECTION:12} {self.name:46} {self.read_units:7.2f} RRU {self.write_units:7.2f} WRU "
            f"{self.ms:8.2f} ms  {self.note}"
        )


def _measure(
    counter: Any, runs: int, op: Callable[[Any], Any], setup: Callable[[int], Any]
) -> tuple[float, float, float]:
    reads, writes, times = [], [], []
    for run in range(runs):
        prepared = setup(run)
        counter.reset()
        began = time.perf_counter()
        op(prepared)
        elapsed = time.perf_counter() - began
        sample = counter.snapshot()
        reads.append(sample["read"])
        writes.append(sample["write"])
        times.append((elapsed - sample["overhead"]) * 1000)
    return statistics.median(reads), statistics.median(writes), statistics.median(times)


def run(endpoint: str, *, runs: int = RUNS) -> list[ReservationRow]:
    for path in (ROOT / "layers" / "credits_ledger", ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from credits_dev.local.tables import create_tables_from_template
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.dal.reservations import ReservationRepository
    from credits_ledger.domain.models import Source
    from credits_ledger.domain.transitions import GrantSpec
    from credits_ledger.ledger import DebitRequest, Ledger, utc_now
    from credits_ledger.reservations import Reservations, ReserveRequest

    client, counter = counted_client(endpoint)
    suffix = f"-resv-{uuid.uuid4().hex[:6]}"
    table = create_tables_from_template(client, ROOT / "template.yaml", name_suffix=suffix)["CreditsTable"]
    accounts = AccountRepository(client, table)
    ledger = Ledger(accounts)
    service = Reservations(accounts, ReservationRepository(client, table))
    tag = uuid.uuid4().hex[:6]

    def account(name: str) -> str:
        customer = f"cus_{name}_{tag}"
        for index in range(GRANTS):
            spec = GrantSpec(
                f"gr_{name}_{tag}_{index}",
                Decimal(1_000_000),
                Source("admin"),
                priority=10 * (index + 1),
                expires_at=utc_now() + timedelta(days=30 + index),
            )
            ledger.grant(customer, spec, key=f"grant:{spec.grant_id}")
        return customer

    customer = account("resv")
    ids = iter(range(1_000_000))

    def reserved(_run: int) -> Any:
        rid = f"bench-{tag}-{next(ids)}"
        service.reserve(ReserveRequest(rid, customer, Decimal(100), 3600))
        return service.record(rid)

    def new_request(_run: int) -> ReserveRequest:
        return ReserveRequest(f"bench-{tag}-{next(ids)}", customer, Decimal(100), 3600)

    reserve = _measure(counter, runs, service.reserve, new_request)
    replay = _measure(
        counter,
        runs,
        service.reserve,
        lambda run: ReserveRequest(f"bench-{tag}-0", customer, Decimal(100), 3600),
    )
    capture = _measure(counter, runs, lambda record: service.capture(record, Decimal(60), False), reserved)
    release = _measure(counter, runs, service.release, reserved)
    crowded = account("crowded")
    for index in range(OPEN):
        service.reserve(ReserveRequest(f"bench-{tag}-open-{index}", crowded, Decimal(10), 86_400))
    debit = _measure(
        counter,
        runs,
        lambda key: ledger.debit(crowded, DebitRequest(key=key, amount=Decimal(1), fingerprint="1")),
        lambda run: f"usage:bench:{tag}:{run}",
    )
    return [
        ReservationRow(
            "reserve (10 live grants)", *reserve, note="account + reserve entry + record (+ its index)"
        ),
        ReservationRow("reserve replay (same id and body)", *replay, note="reads the entry, writes nothing"),
        ReservationRow(
            "capture 60 of 100 (debit + unreserve)",
            *capture,
            note="account + debit + unreserve entries + record (API: +1 RRU record read)",
        ),
        ReservationRow(
            "release", *release, note="account + unreserve entry + record (API: +1 RRU record read)"
        ),
        ReservationRow(
            f"debit next to {OPEN} open reservations", *debit, note="the account item carries them"
        ),
    ]


if __name__ == "__main__":
    section_main(run)
