"""LedgerStreamFunction: the table's DynamoDB stream -> ``credits.ledger.entry`` for every new ledger entry,
``credits.balance.low`` / ``credits.balance.depleted`` on available-balance crossings, the reconcile
registry, and the money view: daily revenue aggregates, burn per day, ``credits.usage.anomaly``. Partial batch failures are reported (``ReportBatchItemFailures``): a failed record and every
record after it in the batch are retried, then go to the OnFailure queue. Design: docs/stream.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from credits_ledger import environment
from credits_ledger.bus import default_bus
from credits_ledger.dal.account_settings import AccountSettingsRepository
from credits_ledger.dal.money import MoneyRepository
from credits_ledger.dal.reconcile import ReconcileRepository
from credits_ledger.jobs.ledger_stream import LedgerStream
from credits_ledger.jobs.money_stream import MoneyStream
from credits_ledger.jobs.stream_batches import process_stream_batch
from credits_ledger.observability import logger, metrics, tracer
from credits_ledger.pricing import load_pricing

# Inside Lambda a missing or malformed setting fails the init phase (credits_ledger/environment.py).
environment.at_start_up(environment.PublishingEnvironment)


@cache
def stream() -> LedgerStream:
    bus, settings, pricing = default_bus(), AccountSettingsRepository(), load_pricing()
    money = MoneyStream(MoneyRepository(), settings, bus, lambda: pricing.low_balance_threshold)
    return LedgerStream(bus, settings, ReconcileRepository(), pricing, money=money)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_stream_batch(event, context, stream().batch(event).handle)
