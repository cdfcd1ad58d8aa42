"""BillingSyncFunction: new debit ledger entries from the table's stream -> overage meter events and
automatic top-up PaymentIntents on Stripe, exactly once per overage debit / per crossing (jobs/billing_sync.py).
Partial batch failures are reported (``ReportBatchItemFailures``): a record that failed (Stripe unavailable)
and every record after it in the batch are retried, then go to the OnFailure queue.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger.bus import default_bus
from credits_ledger.dal.account_settings import AccountSettingsRepository
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.meter_reports import MeterReportRepository
from credits_ledger.dal.topups import TopupRepository
from credits_ledger.jobs.billing_sync import BillingSync
from credits_ledger.jobs.stream_batches import process_stream_batch
from credits_ledger.ledger import Ledger
from credits_ledger.observability import logger, metrics, tracer
from credits_ledger.pricing import load_pricing
from credits_ledger.stripe_api import stripe_api


@cache
def sync() -> BillingSync:
    return BillingSync(
        stripe_api,
        MeterReportRepository(),
        TopupRepository(),
        AccountSettingsRepository(),
        default_bus(),
        load_pricing(),
        Ledger(AccountRepository()),
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_stream_batch(event, context, sync().batch(event).handle)
