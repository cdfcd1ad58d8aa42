"""ReconcileFunction: checks every registered account's balance against its ledger and live grants,
incrementally from per-account checkpoints; metrics CheckedAccounts / MismatchedAccounts / UncheckedAccounts
and a ``credits.reconcile.mismatch`` event per mismatch. ``{"detail": {"backfill": true}}`` first registers
accounts created before the ledger stream function (one full-table scan). ``{"revenue_rebuild": {"from",
"to", "write"}}`` recomputes the daily revenue aggregate from the ledger and compares (docs/money.md §4).
Design: docs/reconcile.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger import environment
from credits_ledger.bus import default_bus
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.money import MoneyRepository
from credits_ledger.dal.reconcile import ReconcileRepository
from credits_ledger.jobs.reconcile import ReconcileJob
from credits_ledger.jobs.revenue import RebuildRequest, RevenueRebuild, UsageExportRequest, export_usage
from credits_ledger.jobs.scheduled import run_scheduled
from credits_ledger.observability import logger, metrics, tracer

# Inside Lambda a missing or malformed setting fails the init phase (credits_ledger/environment.py).
environment.at_start_up(environment.PublishingJobEnvironment)


@cache
def job() -> ReconcileJob:
    return ReconcileJob(AccountRepository(), ReconcileRepository(), default_bus())


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "revenue_rebuild" in event:  # an operator's repair (credits report rebuild), not the schedule
        request = RebuildRequest.model_validate(event["revenue_rebuild"])
        return rebuild().run(request).as_dict()
    if "usage_export" in event:  # the pricing simulator's input (credits simulate)
        usage = UsageExportRequest.model_validate(event["usage_export"])
        return export_usage(ReconcileRepository(), AccountRepository(), usage)
    return run_scheduled(event, context, job())


@cache
def rebuild() -> RevenueRebuild:
    return RevenueRebuild(ReconcileRepository(), AccountRepository(), MoneyRepository())
