"""The reconciliation run: every registered account checked against its ledger, from its checkpoint.

Per account: one strongly consistent read of the state item, and (only when its version moved since the
checkpoint) one Query of ``LedgerByAccount`` for the entries after the checkpoint. A clean account advances
its checkpoint; a mismatch is counted, published as ``credits.reconcile.mismatch`` with the details,
noted on the checkpoint item, and checked again (from the same checkpoint) on every run until fixed. An
account that cannot be read (a domain error, e.g. ConcurrencyConflict on a very busy account) is counted as
unchecked and logged, keeps its checkpoint for the next run, and does not stop the run.

Cost per run: the registry (one small item per account, ~50 per read unit) + 1 read unit per account (state
item up to 4 KB) + the ledger entries written since the last run (~0.5 read unit per 4 KB of entries) + one
write per account that changed. It grows with the number of accounts and with the ledger's growth rate, not
with the ledger's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from credits_ledger.bus import BusEvent, Publisher
from credits_ledger.dal import live_grants as lg
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.reconcile import BUCKETS, CheckpointMoved, ReconcileRepository
from credits_ledger.dal.reservations import ReservationRepository
from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.models import AccountState, LedgerEntry
from credits_ledger.domain.reconcile import (
    Checkpoint,
    OpenReservation,
    Problem,
    Reconciliation,
    missing_tail,
    reconcile,
)
from credits_ledger.domain.times import iso
from credits_ledger.jobs.scheduled import Continuation, Deadline, ScheduledEvent, run_phases
from credits_ledger.observability import logger, metrics

MISMATCH = "credits.reconcile.mismatch"
BACKFILL = "backfill"
MAX_LISTED = 100


def _bucket_phase(bucket: int) -> str:
    return f"bucket-{bucket:02d}"


@dataclass
class ReconcileSummary:
    now: datetime
    run_id: str
    checked: int = 0
    mismatched: int = 0
    entries_read: int = 0
    checkpoints_advanced: int = 0
    registered: int = 0
    unchecked: int = 0
    mismatched_accounts: list[str] = field(default_factory=list)
    unchecked_accounts: list[str] = field(default_factory=list)
    continuation: Continuation | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": iso(self.now),
            "run_id": self.run_id,
            "checked": self.checked,
            "mismatched": self.mismatched,
            "entries_read": self.entries_read,
            "checkpoints_advanced": self.checkpoints_advanced,
            "registered": self.registered,
            "unchecked": self.unchecked,
            "mismatched_accounts": self.mismatched_accounts,
            "unchecked_accounts": self.unchecked_accounts,
            "remaining": self.continuation is not None,
            "continuation": self.continuation.model_dump() if self.continuation else None,
        }


@dataclass(frozen=True)
class _AccountRead:
    """What one check reads of an account, and when (``read_at``: just before its item was read)."""

    state: AccountState
    entries: list[LedgerEntry]
    reservations: dict[str, OpenReservation]
    read_at: datetime


class ReconcileJob:
    def __init__(
        self,
        accounts: AccountRepository,
        registry: ReconcileRepository,
        bus: Publisher,
        sleep: Callable[[float], None] = time.sleep,
        index_lag_retries: int = 3,
        reservations: ReservationRepository | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.accounts = accounts
        self.reservations = reservations or ReservationRepository(accounts.client, accounts.table)
        self.registry = registry
        self.bus = bus
        self._sleep = sleep
        self._retries = index_lag_retries
        self._clock = clock

    def __call__(self, event: ScheduledEvent, deadline: Deadline) -> ReconcileSummary:
        backfill = bool(event.detail.get(BACKFILL))
        return self.run(event.now, event.id, deadline, event.continuation, backfill=backfill)

    def run(
        self,
        now: datetime,
        run_id: str,
        deadline: Deadline,
        resume: Continuation | None = None,
        *,
        backfill: bool = False,
    ) -> ReconcileSummary:
        summary = ReconcileSummary(now=now, run_id=run_id)
        phases = ([BACKFILL] if backfill else []) + [_bucket_phase(b) for b in range(BUCKETS)]

        def run_phase(phase: str, cursor: str | None) -> str | None:
            if phase == BACKFILL:
                return self._backfill(summary, cursor, deadline)
            return self._bucket(summary, int(phase.removeprefix("bucket-")), cursor, deadline)

        summary.continuation = run_phases(phases, resume, run_phase)
        metrics.add_metric(name="CheckedAccounts", unit=MetricUnit.Count, value=summary.checked)
        metrics.add_metric(name="MismatchedAccounts", unit=MetricUnit.Count, value=summary.mismatched)
        metrics.add_metric(name="UncheckedAccounts", unit=MetricUnit.Count, value=summary.unchecked)
        metrics.add_metric(name="ReconcileEntriesRead", unit=MetricUnit.Count, value=summary.entries_read)
        logger.info("reconciliation run", **summary.as_dict())
        return summary

    def _backfill(self, summary: ReconcileSummary, cursor: str | None, deadline: Deadline) -> str | None:
        while True:
            if deadline.near():
                return cursor or ""
            account_ids, cursor = self.registry.scan_account_ids(cursor)
            for account_id in account_ids:
                summary.registered += int(self.registry.register(account_id, summary.now))
            if cursor is None:
                return None

    def _bucket(
        self, summary: ReconcileSummary, bucket: int, cursor: str | None, deadline: Deadline
    ) -> str | None:
        while True:
            page = self.registry.registry_page(bucket, cursor)
            for checkpoint in page.checkpoints:
                if deadline.near():
                    return cursor or ""
                self.check(checkpoint, summary)
            if page.next_cursor is None:
                return None
            cursor = page.next_cursor

    def check(self, checkpoint: Checkpoint, summary: ReconcileSummary) -> Reconciliation | None:
        """Check one account and record the outcome on ``summary``. None when the account could not be read:
        a domain error (e.g. ConcurrencyConflict: its grants kept changing while read) leaves it unchecked
        for this run, its checkpoint where it was, so the next run checks it again; the accounts after it are
        still checked. Any other error (access denied, a bug) fails the run."""
        try:
            read = self._read(checkpoint)
        except CreditsError as exc:
            summary.unchecked += 1
            if len(summary.unchecked_accounts) < MAX_LISTED:
                summary.unchecked_accounts.append(checkpoint.account_id)
            logger.warning(
                "account not checked", extra={"account_id": checkpoint.account_id, "error": str(exc)}
            )
            return None
        state, entries = read.state, read.entries
        result = reconcile(state, checkpoint, entries, summary.now, read.reservations, read_at=read.read_at)
        stored = lg.summary_problems(state.storage)  # the item's word on the grants it keeps apart
        if stored:
            problems = result.problems + tuple(Problem("grants_apart", message) for message in stored)
            result = replace(result, problems=problems, checkpoint=None)
        summary.checked += 1
        summary.entries_read += len(entries)
        if result.checkpoint is not None:
            # saving also removes the note of an earlier mismatch, even when no entry was written since
            moved = result.checkpoint.seq != checkpoint.seq or checkpoint.verified_at is None
            if moved or checkpoint.noted_mismatch:
                try:
                    self.registry.save_checkpoint(result.checkpoint, checkpoint)
                    summary.checkpoints_advanced += 1
                except CheckpointMoved:
                    logger.info("checkpoint moved by a concurrent run", account_id=checkpoint.account_id)
            return result
        summary.mismatched += 1
        if len(summary.mismatched_accounts) < MAX_LISTED:
            summary.mismatched_accounts.append(checkpoint.account_id)
        detail = {
            "mismatch_id": f"{summary.run_id}:{checkpoint.account_id}",
            "run_id": summary.run_id,
            "as_of": iso(summary.now),
            "checkpoint_seq": checkpoint.seq,
            **result.detail(),
        }
        logger.error("reconciliation mismatch", extra=detail)
        self.bus.publish([BusEvent(MISMATCH, detail, time=summary.now)])
        self.registry.mark_mismatch(checkpoint.account_id, detail, summary.now)
        return result

    def _read(self, checkpoint: Checkpoint) -> _AccountRead:
        """The account item, its ledger entries since ``checkpoint`` and the records of its reservations."""
        # The reservations on the item are judged as of this instant, taken just before the read: the run's
        # scheduled time can be long past by now, and a reservation that lapsed since may have been spent.
        read_at = self._clock()
        # every live grant, wherever the account keeps it: the proof sums them against the ledger
        state = self.accounts.state(checkpoint.account_id, consistent=True, all_grants=True)
        entries = list(self.registry.entries_between(checkpoint.account_id, checkpoint.seq, state.version))
        for attempt in range(self._retries):
            if not missing_tail(checkpoint, state, entries):
                break
            # LedgerByAccount is eventually consistent: the newest entries may not be indexed yet.
            self._sleep(0.2 * (attempt + 1))
            entries = list(
                self.registry.entries_between(checkpoint.account_id, checkpoint.seq, state.version)
            )
        records = {
            rid: OpenReservation(r.account_id, r.status.value, r.credits)
            for rid, r in (
                self.reservations.get_many(state.reservations) if state.reservations else {}
            ).items()
        }
        ended = [rid for rid, r in records.items() if r.status != "active"]
        if ended:
            # ended between the two reads: fine when the account item no longer holds it either
            fresh = self.accounts.state(checkpoint.account_id, consistent=True, next_expiry=False)
            for rid in ended:
                if rid not in fresh.reservations:
                    records[rid] = replace(records[rid], status="active")
        return _AccountRead(state, entries, records, read_at)
