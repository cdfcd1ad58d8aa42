"""Debits from the table's stream -> Stripe: overage meter events and automatic top-ups (BillingSyncFunction).

Fed by new ``debit`` ledger entries (the event source's filter), never by the request path of a debit: a
slow or failing Stripe only delays these calls, it never slows or blocks a debit.

**Overage, exactly one meter event per overage debit.** Our own record (dal/meter_reports.py) is claimed
before the call and settled after it. A redelivered record whose report is settled does nothing. One still
``sending`` (the worker crashed, timed out, or Stripe failed) is sent again with the same meter event
``identifier`` (Stripe drops a duplicate identifier for at least 24 h) and a fresh idempotency key per
attempt without an answer (Stripe replays a stored 5xx under the old one). A report still ``sending`` when
that window is nearly over is never resent: it becomes ``unknown`` (metric ``MeterReportsUnknown``, alarmed)
for an operator to check against the meter's event summaries. A 4xx is ``rejected`` (metric, alarmed),
never retried.

**Automatic top-up, one per crossing.** A debit that left ``available`` below the account's
``auto_topup.threshold`` from at or above it claims an attempt (dal/topups.py: at most one in flight per
account, at most ``monthly_limit`` started per UTC month), then creates one off-session PaymentIntent whose
idempotency key is the attempt's. Credits come from its ``payment_intent.succeeded`` webhook like any
purchase; the webhook settles the attempt (``topups.settle_from_event``). A decline or a refusal settles it
as failed at once and publishes ``credits.topup.failed``; the next try waits for the next crossing.

Ordering and retries as in the ledger stream function: after a record fails, the later records of the
batch fail too (without side effects) and the retry starts at the first failure. ``StripeUnavailable``
fails the record (retried by Lambda with bisection, then the OnFailure queue); nothing else does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)

from credits_ledger.bus import BusEvent, Publisher
from credits_ledger.dal import items as it
from credits_ledger.dal.account_settings import AccountSettings, AccountSettingsRepository
from credits_ledger.dal.meter_reports import (
    REJECTED,
    REPORTED,
    SENDING,
    UNKNOWN,
    MeterReport,
    MeterReportRepository,
)
from credits_ledger.dal.topups import (
    CLAIMED,
    FAILED,
    TopupAttempt,
    TopupCharge,
    TopupNotStarted,
    TopupRepository,
    attempt_id_of,
)
from credits_ledger.domain.models import EntryType, LedgerEntry
from credits_ledger.domain.overage import OVERAGE_METADATA_KEY, meter_time, month_of
from credits_ledger.domain.topup import AutoTopupSettings, is_crossing, leaves_below, still_below
from credits_ledger.jobs.in_order import InOrderBatch
from credits_ledger.ledger import Ledger
from credits_ledger.observability import logger, metrics
from credits_ledger.pricing import Pack, Pricing
from credits_ledger.stripe_api import CardDeclined, StripeApi, StripeRejected
from credits_ledger.topups import TOPUP_FAILED, announce_pending, repair_announcement, topup_detail

DEFAULT_OVERAGE_METER = "credits_overage"
# Stripe de-duplicates a meter event identifier for at least 24 h: resend a report only well inside it.
RESEND_WINDOW = timedelta(hours=23)
MAX_IDENTIFIER_LENGTH = 100  # Stripe's limit on meter event identifiers
MAX_IDEMPOTENCY_KEY_LENGTH = 255

TOPUP_REQUESTED = "credits.topup.requested"
NO_CUSTOMER = "no Stripe customer to bill: the account id is not one and no payment named it in metadata.credits_customer"


def bounded(value: str, limit: int) -> str:
    """``value`` when it fits Stripe's length limit, else a stable digest of it (same input, same key)."""
    if len(value) <= limit:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def meter_identifier(entry: LedgerEntry) -> str:
    """The meter event identifier of an overage debit: its ledger entry key, unique in the table."""
    return bounded(entry.entry_key, MAX_IDENTIFIER_LENGTH)


def overage_meter(pricing: Pricing) -> str:
    stripe_section = pricing.raw.get("stripe") or {}
    return str(stripe_section.get("overage_meter") or DEFAULT_OVERAGE_METER)


@dataclass(eq=False)
class BillingSync:
    """Long-lived dependencies; ``batch(event)`` gives the per-invocation processor."""

    stripe: Callable[[], StripeApi]
    reports: MeterReportRepository
    topups: TopupRepository
    settings: AccountSettingsRepository
    bus: Publisher
    pricing: Pricing
    ledger: Ledger  # what an account has available now (a replayed debit may be long past)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def batch(self, event: dict[str, Any]) -> BillingSyncBatch:
        return BillingSyncBatch(self, event)

    # ---- overage -----------------------------------------------------------------------------------------
    def report_overage(self, entry: LedgerEntry, customer: str | None) -> str:
        """Report the entry's overage once; returns the report's status after this delivery."""
        now = self.clock()
        value = Decimal(entry.metadata[OVERAGE_METADATA_KEY])
        report = self.reports.claim(
            MeterReport(entry.entry_key, entry.account_id, value, meter_identifier(entry), SENDING, now)
        )
        if report.status != SENDING:
            return report.status
        if now - report.first_sent_at > RESEND_WINDOW:
            reason = "no answer from Stripe within its de-duplication window: check the meter's summaries"
            self.reports.settle(entry.entry_key, UNKNOWN, now, reason)
            metrics.add_metric(name="MeterReportsUnknown", unit=MetricUnit.Count, value=1)
            logger.error(
                "overage report outcome unknown", entry_key=entry.entry_key, account=entry.account_id
            )
            return UNKNOWN
        if customer is None:
            return self._reject(entry, now, NO_CUSTOMER)
        key = bounded(f"meter:{entry.entry_key}:{report.generation}", MAX_IDEMPOTENCY_KEY_LENGTH)
        try:
            self.stripe().create_meter_event(
                event_name=overage_meter(self.pricing),
                stripe_customer_id=customer,
                value=value,
                identifier=report.identifier,
                timestamp=meter_time(entry.usage_time, entry.created_at),
                idempotency_key=key,
            )
        except StripeRejected as exc:
            return self._reject(entry, now, str(exc))
        except Exception:
            # No answer: the next attempt gets a fresh key; the identifier keeps it a single event.
            self.reports.next_generation(entry.entry_key, report.generation)
            raise
        self.reports.settle(entry.entry_key, REPORTED, now)
        metrics.add_metric(name="MeterEventsReported", unit=MetricUnit.Count, value=1)
        return REPORTED

    def _reject(self, entry: LedgerEntry, now: datetime, reason: str) -> str:
        self.reports.settle(entry.entry_key, REJECTED, now, reason)
        metrics.add_metric(name="MeterReportsRejected", unit=MetricUnit.Count, value=1)
        logger.error("overage report rejected", entry_key=entry.entry_key, reason=reason)
        return REJECTED

    # ---- top-ups -----------------------------------------------------------------------------------------
    def request_topup(self, entry: LedgerEntry, settings: AutoTopupSettings, customer: str | None) -> str:
        """Start the top-up of this debit that left available below the threshold (once per debit); returns
        the attempt's status, or why none started."""
        attempt_id = attempt_id_of(entry.account_id, entry.entry_key)
        if (
            not still_below(self.ledger.balance(entry.account_id, consistent=True).available, settings)
            and self.topups.attempt(attempt_id) is None
        ):
            # a debit delivered long after (a failed batch replayed) whose account has been topped up or
            # bought credits since: nothing to start. (An attempt it already started goes on below: a
            # retry must finish it, or its account would stay "in flight" for good.)
            metrics.add_metric(name="TopupsNotStarted", unit=MetricUnit.Count, value=1)
            logger.info("no automatic top-up", account=entry.account_id, reason="available is back above")
            return "skipped"
        attempt = TopupAttempt(
            attempt_id=attempt_id,
            account=entry.account_id,
            entry_key=entry.entry_key,
            pack=settings.pack,
            quantity=settings.quantity,
            status=CLAIMED,
            created_at=self.clock(),
        )
        try:
            attempt, _ = self.topups.claim(
                attempt,
                month_of(entry.created_at),
                settings.monthly_limit,
                crossing=is_crossing(entry, settings),
            )
        except TopupNotStarted as exc:
            metrics.add_metric(name="TopupsNotStarted", unit=MetricUnit.Count, value=1)
            logger.info("no automatic top-up", account=entry.account_id, reason=exc.reason)
            return "skipped"
        if attempt.status != CLAIMED:
            repair_announcement(self.topups, self.bus, attempt, self.clock())  # a crash while settling
            return attempt.status  # an earlier delivery created the PaymentIntent (or it is settled)
        pack = self.pricing.packs.get(attempt.pack)
        if pack is None or not pack.stripe_prices:
            return self._fail(attempt, None, f"pack {attempt.pack!r} is not sold through Stripe")
        if customer is None:
            return self._fail(attempt, None, NO_CUSTOMER)
        api = self.stripe()
        key = bounded(f"topup:{attempt.attempt_id}", MAX_IDEMPOTENCY_KEY_LENGTH)
        try:
            charge = attempt.charge or self._fix_charge(api, attempt, customer, pack, key)
            if not isinstance(charge, TopupCharge):
                return charge  # why nothing is charged: the attempt's status
            metadata = {
                "credits_pack": pack.name,
                "credits_customer": attempt.account,
                "credits_topup": attempt.attempt_id,
            }
            if attempt.quantity != 1:
                metadata["credits_quantity"] = str(attempt.quantity)
            intent = api.create_payment_intent(
                customer=charge.customer,
                amount=charge.amount,
                currency=charge.currency,
                payment_method=charge.payment_method,
                metadata=metadata,
                idempotency_key=key,
            )
        except CardDeclined as exc:
            intent_id = exc.payment_intent.get("id") if exc.payment_intent else None
            return self._fail(attempt, intent_id, f"declined: {exc.decline_code or exc.info.code}")
        except StripeRejected as exc:
            return self._fail(attempt, None, str(exc))
        if intent.get("status") in ("requires_payment_method", "requires_action", "canceled"):
            return self._fail(attempt, intent.get("id"), f"payment intent {intent.get('status')}")
        self.bus.publish([BusEvent(TOPUP_REQUESTED, topup_detail(attempt, intent.get("id")))])
        self.topups.mark_requested(attempt.attempt_id, str(intent["id"]))
        metrics.add_metric(name="TopupsRequested", unit=MetricUnit.Count, value=1)
        return "requested"

    def _fix_charge(
        self, api: StripeApi, attempt: TopupAttempt, customer: str, pack: Pack, key: str
    ) -> TopupCharge | str:
        """The first delivery of an attempt fixes what it charges (the customer's default card, the pack's
        price x quantity), and every retry sends that again: the same request under the same idempotency key
        is answered with the first PaymentIntent, where a changed price or card would be an idempotency error
        (the attempt settled ``failed`` although the first charge may have gone through). Returns the charge,
        or the attempt's status when it gets none."""
        found = api.retrieve_customer(customer, idempotency_key=f"{key}:customer")
        method = (found.get("invoice_settings") or {}).get("default_payment_method")
        if isinstance(method, dict):
            method = method.get("id")
        if not method:
            return self._fail(attempt, None, "the customer has no default payment method")
        price = api.retrieve_price(pack.stripe_prices[0], idempotency_key=f"{key}:price")
        if price.get("unit_amount") is None:
            return self._fail(attempt, None, f"price {pack.stripe_prices[0]} has no unit_amount")
        amount = int(price["unit_amount"]) * attempt.quantity
        charge = TopupCharge(customer, amount, str(price["currency"]), str(method))
        fixed = self.topups.fix_charge(attempt.attempt_id, charge)
        if fixed is None:  # settled meanwhile by another delivery: nothing to charge
            stored = self.topups.attempt(attempt.attempt_id)
            return stored.status if stored is not None else FAILED
        return fixed

    def _fail(self, attempt: TopupAttempt, intent_id: str | None, reason: str) -> str:
        # The webhook of the same decline may settle it first: only the winner publishes the event.
        if self.topups.settle(
            attempt, FAILED, self.clock(), TOPUP_FAILED, payment_intent=intent_id, reason=reason
        ):
            metrics.add_metric(name="TopupsFailed", unit=MetricUnit.Count, value=1)
            logger.warning("automatic top-up failed", account=attempt.account, reason=reason)
            announce_pending(self.topups, self.bus, attempt.attempt_id)
        return FAILED


class BillingSyncBatch(InOrderBatch):
    def __init__(self, sync: BillingSync, event: dict[str, Any]) -> None:
        self.sync = sync
        self._event = event
        self._settings: dict[str, AccountSettings] | None = None
        self._read_again: set[str] = set()  # accounts without a customer, read again strongly consistent

    def _handle(self, record: DynamoDBRecord) -> None:
        stream = record.dynamodb
        if stream is None or record.event_name is not DynamoDBRecordEventName.INSERT:
            return
        if not str(stream.keys.get("pk", "")).startswith("ENTRY#"):
            return
        entry = it.entry_from_item(stream.new_image)
        if entry.type is not EntryType.DEBIT:
            return
        account = self._settings_of(entry.account_id)
        if OVERAGE_METADATA_KEY in entry.metadata or leaves_below(entry, account.auto_topup):
            account = self._billable_settings_of(entry.account_id)
        if OVERAGE_METADATA_KEY in entry.metadata:
            self.sync.report_overage(entry, account.billing_customer)
        topup = account.auto_topup
        if leaves_below(entry, topup):
            assert topup is not None
            self.sync.request_topup(entry, topup, account.billing_customer)

    def _settings_of(self, account_id: str) -> AccountSettings:
        """Settings of every account with a debit in this batch, read once (one BatchGetItem)."""
        if self._settings is None:
            accounts = []
            for raw in self._event.get("Records", []):
                image = raw.get("dynamodb", {}).get("NewImage", {})
                if "account_id" in image:
                    accounts.append(str(image["account_id"].get("S", "")))
            self._settings = self.sync.settings.get_many(accounts or [account_id], consistent=False)
        if account_id not in self._settings:
            self._settings[account_id] = self.sync.settings.get(account_id, consistent=False)
        return self._settings[account_id]

    def _billable_settings_of(self, account_id: str) -> AccountSettings:
        """Settings of an account with something to bill now. One without a Stripe customer is read again,
        strongly consistent and once per batch: "nobody to bill" is answered for good, and the payment that
        linked the account to its customer may be moments old, which an eventually consistent read can miss."""
        settings = self._settings_of(account_id)
        if settings.billing_customer is None and account_id not in self._read_again:
            self._read_again.add(account_id)
            settings = self._settings[account_id] = self.sync.settings.get(account_id, consistent=True)  # type: ignore[index]
        return settings
