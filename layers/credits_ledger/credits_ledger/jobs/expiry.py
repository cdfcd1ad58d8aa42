"""The nightly expiry run (docs/api.md section 5): end lapsed reservations, expire what is due, then send expiry
reminders.

Phase ``unreserve`` (also run alone every few minutes: ``detail.phases = ["unreserve"]``): page through the
``RESERVATION`` partition of the same sparse index (open reservations by ``expires_at``) and end each one
that is due with its ``unreserve`` entry (``Reservations.expire``). A lapsed reservation already holds
nothing, so this only tidies the account item; ``unreserve:<id>`` makes a second run a no-op, and a
reservation extended since the index was read is skipped.

Phase ``expire``: page through the sparse ``ExpiringGrants`` index up to "now" (only live grants with an
expiry are in it, and a grant leaves it when it is closed, so the read cost follows what is due, not the
table) and call ``Ledger.expire_with_rollover`` per grant. The entry key ``expire:<grant>`` makes a second
run (or a concurrent duplicate) a replay; concurrent debits are serialised by the account's version lock, so
a grant spent between read and write expires exactly what is left.

Phase ``remind``: the same index up to now + the widest reminder threshold; per grant the tightest threshold
it is inside of (domain/reminders.py), claimed with a conditional write, then published as
``credits.grant.expiring``.

Both phases check the deadline before each grant and report where to resume (the page cursor the current
page was read with: a resumed page re-reads at most one page, whose done grants are replays or gone).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from credits_ledger.bus import BusEvent, Publisher, PublishFailed
from credits_ledger.dal.pages import Page, pages
from credits_ledger.dal.reminders import Reminder, ReminderAlreadySent, ReminderRepository
from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.models import Grant, LiveGrant
from credits_ledger.domain.money import ZERO, format_amount
from credits_ledger.domain.reminders import due_threshold, reminder_window
from credits_ledger.domain.rollover import RolloverPolicy
from credits_ledger.domain.subscriptions import rollover_days
from credits_ledger.domain.times import iso
from credits_ledger.jobs.scheduled import Continuation, Deadline, ScheduledEvent, run_phases
from credits_ledger.ledger import Ledger
from credits_ledger.observability import logger, metrics
from credits_ledger.pricing import Plan, Pricing
from credits_ledger.reservations import Reservations


def plan_rollover_policy(plan: Plan, record: Grant) -> RolloverPolicy | None:
    """A plan month's rollover: ``rollover_percent`` of what remained (at most ``rollover_max``), valid
    ``rollover_months`` calendar months from the month's end; rolled-over credits never roll again."""
    if plan.rollover_percent <= 0 or record.expires_at is None:
        return None
    return RolloverPolicy(
        valid_days=rollover_days(record.expires_at, plan.rollover_months),
        percent=plan.rollover_percent,
        max_amount=plan.rollover_max,
        repeat=False,
    )


UNRESERVE, EXPIRE, REMIND = "unreserve", "expire", "remind"
PHASES = (UNRESERVE, EXPIRE, REMIND)
EXPIRING = "credits.grant.expiring"


@dataclass
class ExpirySummary:
    now: datetime
    run_id: str
    expired: int = 0
    expired_amount: Decimal = ZERO
    rolled_over: int = 0
    rollover_amount: Decimal = ZERO
    reservations_ended: int = 0
    replays: int = 0
    nothing_left: int = 0
    failed: int = 0
    reminders_sent: int = 0
    reminders_already_sent: int = 0
    reminders_failed: int = 0
    continuation: Continuation | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> bool:
        return self.continuation is not None

    def failure(self, exc: Exception, message: str, **item: str) -> None:
        """The one ``item`` (``grant_id=...`` or ``reservation_id=...``) was not handled; it stays due for the
        next run. Counted, listed and logged under its own key."""
        (item_id,) = item.values()
        self.failed += 1
        self.failures.append(f"{item_id}: {exc}")
        logger.warning(message, extra={**item, "error": str(exc)})

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": iso(self.now),
            "run_id": self.run_id,
            "expired": self.expired,
            "expired_amount": format_amount(self.expired_amount),
            "rolled_over": self.rolled_over,
            "rollover_amount": format_amount(self.rollover_amount),
            "reservations_ended": self.reservations_ended,
            "replays": self.replays,
            "nothing_left": self.nothing_left,
            "failed": self.failed,
            "reminders_sent": self.reminders_sent,
            "reminders_already_sent": self.reminders_already_sent,
            "reminders_failed": self.reminders_failed,
            "remaining": self.remaining,
            "continuation": self.continuation.model_dump() if self.continuation else None,
        }


@dataclass(frozen=True)
class _Due:
    account_id: str
    grant_id: str
    live: LiveGrant
    days: int
    expires_at: datetime


class ExpiryJob:
    def __init__(
        self,
        ledger: Ledger,
        reminders: ReminderRepository,
        bus: Publisher,
        pricing: Pricing,
        *,
        reservations: Reservations,
        page_size: int = 100,
    ) -> None:
        self.ledger = ledger
        self.reservations = reservations  # the same accounts as the ledger's (Reservations.over)
        self.reminders = reminders
        self.bus = bus
        self.pricing = pricing
        self.page_size = page_size

    def __call__(self, event: ScheduledEvent, deadline: Deadline) -> ExpirySummary:
        wanted = event.detail.get("phases")
        phases = tuple(p for p in PHASES if p in wanted) if isinstance(wanted, list) else PHASES
        return self.run(event.now, event.id, deadline, event.continuation, phases=phases)

    def run(
        self,
        now: datetime,
        run_id: str,
        deadline: Deadline,
        resume: Continuation | None = None,
        phases: tuple[str, ...] = PHASES,
    ) -> ExpirySummary:
        summary = ExpirySummary(now=now, run_id=run_id)

        def run_phase(phase: str, cursor: str | None) -> str | None:
            if phase == UNRESERVE:
                return self._unreserve(summary, cursor, deadline)
            if phase == EXPIRE:
                return self._expire(summary, cursor, deadline)
            return self._remind(summary, cursor, deadline)

        summary.continuation = run_phases(phases, resume, run_phase)
        self._measure(summary)
        logger.info("expiry run", **summary.as_dict())
        return summary

    # ---- phase 0: end lapsed reservations -------------------------------------------------------------------
    def _unreserve(self, summary: ExpirySummary, cursor: str | None, deadline: Deadline) -> str | None:
        """None when done; else the cursor to resume with ("" = from the start)."""
        records = self.reservations.records
        for page_cursor, page in pages(
            lambda at: records.due(summary.now, limit=self.page_size, cursor=at), cursor
        ):
            for account_id, reservation_id in page.items:
                if deadline.near():
                    return page_cursor or ""
                self._end_reservation(summary, account_id, reservation_id)
        return None

    def _end_reservation(self, summary: ExpirySummary, account_id: str, reservation_id: str) -> None:
        try:
            ended = self.reservations.expire(account_id, reservation_id, summary.now)
        except CreditsError as exc:  # stays in the index for the next run
            summary.failure(exc, "reservation not ended", reservation_id=reservation_id)
            return
        if ended is None:
            summary.replays += 1
        else:
            summary.reservations_ended += 1
            summary.expired_amount += ended.expired

    # ---- phase 1: expire ---------------------------------------------------------------------------------
    def _pages(self, before: datetime, cursor: str | None) -> Iterator[tuple[str | None, Page]]:
        """(the cursor a page was read with, the page)."""
        return pages(lambda at: self.ledger.grants_expiring(before, limit=self.page_size, cursor=at), cursor)

    def _expire(self, summary: ExpirySummary, cursor: str | None, deadline: Deadline) -> str | None:
        """None when done; else the cursor to resume with ("" = from the start)."""
        for page_cursor, page in self._pages(summary.now, cursor):
            for _account_id, grant_id in page.items:
                if deadline.near():
                    return page_cursor or ""
                self._expire_one(summary, grant_id)
        return None

    def _policy(self, record: Grant) -> RolloverPolicy | None:
        plan = self.pricing.plans.get(record.metadata.get("plan", ""))
        if plan is not None:
            return plan_rollover_policy(plan, record)
        pack = self.pricing.packs.get(record.metadata.get("pack", ""))
        return pack.rollover if pack else None

    def _expire_one(self, summary: ExpirySummary, grant_id: str) -> None:
        try:
            outcome = self.ledger.expire_with_rollover(
                grant_id, as_of=summary.now, policy_for=self._policy, reference=summary.run_id
            )
        except CreditsError as exc:  # e.g. ConcurrencyConflict: the grant stays in the index for the next run
            summary.failure(exc, "grant not expired", grant_id=grant_id)
            return
        if outcome is None:
            summary.nothing_left += 1
        elif outcome.replayed:
            summary.replays += 1
        else:
            summary.expired += 1
            summary.expired_amount += -outcome.entry.amount
            rolled = outcome.entry.metadata.get("rolled_over")
            if rolled:
                summary.rolled_over += 1
                summary.rollover_amount += Decimal(rolled)

    # ---- phase 2: remind ---------------------------------------------------------------------------------
    def _remind(self, summary: ExpirySummary, cursor: str | None, deadline: Deadline) -> str | None:
        window = reminder_window(summary.now, self.pricing.reminder_days)
        if window is None:
            return None
        for page_cursor, page in self._pages(window, cursor):
            due = self._due_reminders(summary.now, page.items)
            already = self.reminders.sent((d.grant_id, d.days) for d in due)
            claimed: list[tuple[Reminder, BusEvent]] = []
            for item in due:
                if deadline.near():
                    self._publish(summary, claimed)
                    return page_cursor or ""
                if (item.grant_id, item.days) in already:
                    summary.reminders_already_sent += 1
                    continue
                reminder = Reminder(
                    item.account_id, item.grant_id, item.days, item.expires_at, summary.run_id
                )
                try:
                    self.reminders.record(reminder, summary.now)
                except ReminderAlreadySent:
                    summary.reminders_already_sent += 1
                    continue
                claimed.append((reminder, self._event(summary, item)))
            self._publish(summary, claimed)
        return None

    def _due_reminders(self, now: datetime, pairs: list[tuple[str, str]]) -> list[_Due]:
        wanted: dict[str, list[str]] = {}
        for account_id, grant_id in pairs:
            wanted.setdefault(account_id, []).append(grant_id)
        states = {
            # the grants of the page wherever the account keeps them (its item holds only the first ones)
            account_id: self.ledger.account_state(account_id, grant_ids)
            for account_id, grant_ids in wanted.items()
        }
        due: list[_Due] = []
        for account_id, grant_id in pairs:
            live = states[account_id].grants.get(grant_id)
            if live is None or live.expires_at is None or live.remaining <= 0:
                continue  # closed since the index was read, or spent and not yet closed by the core
            days = due_threshold(live.expires_at, now, self.pricing.reminder_days)
            if days is not None:
                due.append(_Due(account_id, grant_id, live, days, live.expires_at))
        return due

    @staticmethod
    def _event(summary: ExpirySummary, item: _Due) -> BusEvent:
        return BusEvent(
            EXPIRING,
            {
                "reminder_id": f"{item.grant_id}#{item.days}",
                "account": item.account_id,
                "grant": item.grant_id,
                "remaining": format_amount(item.live.remaining),
                "category": item.live.category.value,
                "expires_at": iso(item.expires_at),
                "threshold_days": item.days,
                "as_of": iso(summary.now),
            },
            time=summary.now,
        )

    def _publish(self, summary: ExpirySummary, claimed: list[tuple[Reminder, BusEvent]]) -> None:
        """Publish the claimed reminders; a reminder that did not go out is un-claimed for the next run."""
        if not claimed:
            return
        failed: set[int] = set()
        try:
            self.bus.publish([event for _, event in claimed])
        except PublishFailed as exc:
            failed = set(exc.failures)
        except Exception:  # the whole call failed: nothing was published
            logger.exception("publishing expiry reminders failed")
            failed = set(range(len(claimed)))
        for index, (reminder, _) in enumerate(claimed):
            if index in failed:
                self.reminders.forget(reminder)
                summary.reminders_failed += 1
            else:
                summary.reminders_sent += 1
        claimed.clear()

    @staticmethod
    def _measure(summary: ExpirySummary) -> None:
        metrics.add_metric(name="ExpiredGrants", unit=MetricUnit.Count, value=summary.expired)
        metrics.add_metric(name="ExpiredCredits", unit=MetricUnit.Count, value=float(summary.expired_amount))
        metrics.add_metric(name="RolledOverGrants", unit=MetricUnit.Count, value=summary.rolled_over)
        metrics.add_metric(name="EndedReservations", unit=MetricUnit.Count, value=summary.reservations_ended)
        metrics.add_metric(name="ExpiryReplays", unit=MetricUnit.Count, value=summary.replays)
        metrics.add_metric(name="ExpiryFailures", unit=MetricUnit.Count, value=summary.failed)
        metrics.add_metric(name="ExpiryRemindersSent", unit=MetricUnit.Count, value=summary.reminders_sent)
        metrics.add_metric(
            name="ExpiryRemindersFailed", unit=MetricUnit.Count, value=summary.reminders_failed
        )
