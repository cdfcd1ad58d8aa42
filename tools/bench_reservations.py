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
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from tools.bench import UnitsRow, counted_client, credits_table, median_units, section_main

SECTION = "reservations"
RUNS = int(os.environ.get("BENCH_RESERVATIONS_RUNS", "15"))
GRANTS = 10
OPEN = 10  # open reservations on the account of the "debit next to open reservations" row


def run(endpoint: str, *, runs: int = RUNS) -> list[UnitsRow]:
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.dal.reservations import ReservationRepository
    from credits_ledger.domain.models import Source
    from credits_ledger.domain.transitions import GrantSpec
    from credits_ledger.ledger import DebitRequest, Ledger, utc_now
    from credits_ledger.reservations import Reservations, ReserveRequest

    client, counter = counted_client(endpoint)
    table = credits_table(client, "resv")
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

    reserve = median_units(counter, runs, service.reserve, new_request)
    replay = median_units(
        counter,
        runs,
        service.reserve,
        lambda run: ReserveRequest(f"bench-{tag}-0", customer, Decimal(100), 3600),
    )
    capture = median_units(
        counter, runs, lambda record: service.capture(record, Decimal(60), False), reserved
    )
    release = median_units(counter, runs, service.release, reserved)
    crowded = account("crowded")
    for index in range(OPEN):
        service.reserve(ReserveRequest(f"bench-{tag}-open-{index}", crowded, Decimal(10), 86_400))
    debit = median_units(
        counter,
        runs,
        lambda key: ledger.debit(crowded, DebitRequest(key=key, amount=Decimal(1), fingerprint="1")),
        lambda run: f"usage:bench:{tag}:{run}",
    )
    return [
        UnitsRow(
            SECTION,
            "reserve (10 live grants)",
            *reserve,
            note="account + reserve entry + record (+ its index)",
        ),
        UnitsRow(
            SECTION, "reserve replay (same id and body)", *replay, note="reads the entry, writes nothing"
        ),
        UnitsRow(
            SECTION,
            "capture 60 of 100 (debit + unreserve)",
            *capture,
            note="account + debit + unreserve entries + record (API: +1 RRU record read)",
        ),
        UnitsRow(
            SECTION, "release", *release, note="account + unreserve entry + record (API: +1 RRU record read)"
        ),
        UnitsRow(
            SECTION, f"debit next to {OPEN} open reservations", *debit, note="the account item carries them"
        ),
    ]


if __name__ == "__main__":
    section_main(run)
