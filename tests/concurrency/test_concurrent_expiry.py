"""The expiry job run twice at the same time, while debits spend the very grants it expires (DynamoDB Local).

Given an account whose grants mostly expire at the same instant, When four threads debit it (their clock a
minute before the expiry) and two threads run the expiry job (``Ledger.expire`` over
``repository.iter_expiring(now)``, ``now`` past the expiry) at the same moment, Then each grant has at most
one expire entry and, per grant, what was spent plus what expired is exactly what was granted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.domain.errors import ConcurrencyConflict, InsufficientCredits
from credits_ledger.domain.models import Category, EntryType, GrantStatus, Source
from credits_ledger.domain.transitions import GrantSpec
from credits_ledger.ledger import DebitRequest, Ledger, Outcome
from tests.concurrency.ledger_audit import ManualClock, Milestones, audit_account, new_client

pytestmark = [pytest.mark.dynamodb_local, pytest.mark.slow]

ACCOUNT = "cus_expiry_race"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EXPIRES_AT = T0 + timedelta(hours=1)
JOB_NOW = EXPIRES_AT + timedelta(minutes=1)  # the scheduled event's time
DEBIT_NOW = EXPIRES_AT - timedelta(minutes=1)  # debits decide a minute before: the grants are still spendable
DEBIT_THREADS = 4
DEBITS_PER_THREAD = 100
EXPIRY_AFTER = 80  # debit attempts finished before both expiry runs start
AMOUNTS = [Decimal(a) for a in ("0.5", "1", "0.75", "1.333333", "0.25")]
DEADLINE_SECONDS = 180
# name: (amount, priority, expires_at); the five expiring grants are spent one after the other
GRANTS = {
    "e1": ("40", 10, EXPIRES_AT),
    "e2": ("40", 20, EXPIRES_AT),
    "e3": ("40", 30, EXPIRES_AT),
    "e4": ("40", 40, EXPIRES_AT),
    "e5": ("40", 50, EXPIRES_AT - timedelta(seconds=30)),
    "rest": ("100", 90, None),
}


def test_concurrent_expiry_runs_expire_each_grant_once_while_debits_spend_it(local_tables: Any) -> None:
    # Given
    table = local_tables.first
    endpoint = local_tables.endpoint_url
    debit_clock = ManualClock(T0)
    setup = Ledger(AccountRepository(new_client(endpoint), table), clock=debit_clock)
    for name, (amount, priority, expires_at) in GRANTS.items():
        spec = GrantSpec(
            grant_id=f"gr_{name}",
            amount=Decimal(amount),
            source=Source("admin"),
            category=Category.PAID,
            priority=priority,
            expires_at=expires_at,
        )
        setup.grant(ACCOUNT, spec, key=f"grant:{name}")
    debit_clock.set(DEBIT_NOW)

    clients = [new_client(endpoint) for _ in range(DEBIT_THREADS + 2)]
    milestones = Milestones(EXPIRY_AFTER)
    job_start = threading.Barrier(2, timeout=60)
    results: Counter[str] = Counter()
    results_lock = threading.Lock()
    debited: dict[str, Outcome] = {}
    job_outcomes: list[list[tuple[str, Outcome | None]]] = [[], []]
    job_conflicts = [0, 0]
    errors: list[BaseException] = []

    def debiter(index: int) -> None:
        ledger = Ledger(AccountRepository(clients[index], table), clock=debit_clock)
        for n in range(DEBITS_PER_THREAD):
            key = f"usage:{index}:{n}"
            amount = AMOUNTS[(index + n) % len(AMOUNTS)]
            try:
                outcome = ledger.debit(ACCOUNT, DebitRequest(key=key, amount=amount, fingerprint=str(amount)))
            except InsufficientCredits:
                result = "insufficient"
            except ConcurrencyConflict:
                result = "conflict"
            else:
                result = "replayed" if outcome.replayed else "debited"
                with results_lock:
                    debited[key] = outcome
            with results_lock:
                results[result] += 1
            milestones.tick()

    def expiry_job(index: int) -> None:
        """What ExpiryFunction does with the scheduled event's time as "now"."""
        ledger = Ledger(AccountRepository(clients[DEBIT_THREADS + index], table), clock=lambda: JOB_NOW)
        milestones.wait(EXPIRY_AFTER)
        job_start.wait()
        due = list(ledger.repository.iter_expiring(JOB_NOW))
        if index == 1:
            due.reverse()  # the two runs meet in the middle instead of trailing each other
        for _account, grant_id in due:
            for _ in range(20):
                try:
                    job_outcomes[index].append((grant_id, ledger.expire(grant_id, JOB_NOW)))
                    break
                except ConcurrencyConflict:
                    job_conflicts[index] += 1
            else:
                raise AssertionError(f"expiry of {grant_id} kept conflicting")

    def guarded(target: Any, index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            milestones.release_all()
            job_start.abort()

    threads = [
        threading.Thread(target=guarded, args=(debiter, i), name=f"debit-{i}", daemon=True)
        for i in range(DEBIT_THREADS)
    ]
    threads += [
        threading.Thread(target=guarded, args=(expiry_job, i), name=f"expiry-{i}", daemon=True)
        for i in range(2)
    ]

    # When
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, began + DEADLINE_SECONDS - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {DEADLINE_SECONDS}s: {stuck}"
    if errors:
        raise errors[0]
    print(
        f"\ndebits {dict(results)} in {time.monotonic() - began:.1f}s; job conflicts {job_conflicts}; "
        f"runs: {[[(g, o and (o.entry.seq, o.replayed)) for g, o in run] for run in job_outcomes]}"
    )

    # Then
    audit = audit_account(local_tables.client, table, ACCOUNT)
    assert audit.problems == [], "\n".join(audit.problems[:30])
    attempts = DEBIT_THREADS * DEBITS_PER_THREAD
    assert sum(results.values()) == attempts
    assert results["conflict"] < 0.02 * attempts
    assert results["replayed"] == 0

    expiring = [f"gr_{name}" for name, spec in GRANTS.items() if spec[2] is not None]
    expire_entries = Counter(a.grant_id for e in audit.of_type(EntryType.EXPIRE) for a in e.allocations)
    for grant_id in expiring:
        total = audit.totals[grant_id]
        # at most one expire entry; spent + expired == granted; the grant is closed for good
        assert expire_entries[grant_id] <= 1, grant_id
        assert total.expire_entries == expire_entries[grant_id]
        assert total.spent + total.expired == total.granted == Decimal(GRANTS[grant_id[3:]][0]), grant_id
        assert total.closed_as in (GrantStatus.EXPIRED, GrantStatus.DEPLETED), grant_id
        assert audit.grants[grant_id].status is total.closed_as
        assert grant_id not in audit.state.grants
    assert audit.totals["gr_rest"].expire_entries == 0

    # the two runs: for each grant at most one of them wrote, the other saw that entry or nothing left (a
    # grant depleted before a run queried the index is not listed by that run at all)
    for grant_id in expiring:
        calls = [o for run in job_outcomes for g, o in run if g == grant_id]
        assert len(calls) <= 2, (grant_id, calls)
        written = [o for o in calls if o is not None and not o.replayed]
        assert len(written) == expire_entries[grant_id], (grant_id, calls)
        seqs = {o.entry.seq for o in calls if o is not None}
        assert len(seqs) <= 1, (grant_id, calls)

    # debits and the job really overlapped: grants were spent both before and after the first expire entry
    first_expire = min(e.seq for e in audit.of_type(EntryType.EXPIRE))
    debit_seqs = [e.seq for e in audit.of_type(EntryType.DEBIT)]
    assert min(debit_seqs) < first_expire < max(debit_seqs)
    # nothing is due any more, and a third (late) run is a no-op
    late = Ledger(AccountRepository(local_tables.client, table), clock=lambda: JOB_NOW)
    assert list(late.repository.iter_expiring(JOB_NOW)) == []
    version = audit.state.version
    for grant_id in expiring:
        again = late.expire(grant_id, JOB_NOW)
        assert again is None or again.replayed
    assert late.repository.state(ACCOUNT, consistent=True).version == version
