"""ExpiryFunction: the nightly expiry run (docs/api.md section 5), then expiry reminders.

Input: the EventBridge Scheduled Event (template.yaml's ScheduleV2 sends one, ``time`` = the scheduled
time, which is the run's "now"). Near the deadline it stops cleanly and re-invokes itself asynchronously with
the same event plus a continuation. Returns the run's summary. Design: docs/expiry.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger import environment
from credits_ledger.bus import default_bus
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.reminders import ReminderRepository
from credits_ledger.jobs.expiry import ExpiryJob
from credits_ledger.jobs.scheduled import run_scheduled
from credits_ledger.ledger import Ledger
from credits_ledger.observability import logger, metrics, tracer
from credits_ledger.pricing import load_pricing
from credits_ledger.reservations import Reservations

# Inside Lambda a missing or malformed setting fails the init phase (credits_ledger/environment.py).
environment.at_start_up(environment.PublishingJobEnvironment)


@cache
def job() -> ExpiryJob:
    accounts = AccountRepository()
    return ExpiryJob(
        Ledger(accounts),
        ReminderRepository(),
        default_bus(),
        load_pricing(),
        reservations=Reservations.over(accounts),
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_scheduled(event, context, job())
