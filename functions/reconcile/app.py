"""ReconcileFunction: checks every registered account's balance against its ledger and live grants,
incrementally from per-account checkpoints; metrics CheckedAccounts / MismatchedAccounts and a
``credits.reconciliation.mismatch`` event per mismatch. ``{"detail": {"backfill": true}}`` first registers
accounts created before the ledger stream function (one full-table scan). Design: docs/expiry.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger.bus import default_bus
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.reconcile import ReconcileRepository
from credits_ledger.jobs.reconcile import ReconcileJob
from credits_ledger.jobs.scheduled import run_scheduled
from credits_ledger.observability import logger, metrics, tracer


@cache
def job() -> ReconcileJob:
    return ReconcileJob(AccountRepository(), ReconcileRepository(), default_bus())


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(event, context, job())
