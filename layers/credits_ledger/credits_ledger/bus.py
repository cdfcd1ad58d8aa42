"""The project's own EventBridge bus (``EVENT_BUS_NAME``): every event has source ``credits``.

Detail types published: ``credits.grant.expiring``, ``credits.ledger.entry``, ``credits.balance.low``,
``credits.balance.depleted``, ``credits.reconcile.mismatch`` (payloads in docs/stream.md and docs/reconcile.md),
``credits.topup.requested`` / ``.succeeded`` / ``.failed`` (topups.py: attempt_id, account, pack, quantity,
crossing_entry, payment_intent, reason). EventBridge
does not deduplicate, so every detail carries an id downstream can deduplicate on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any, Protocol

from credits_ledger import aws
from credits_ledger.domain.errors import CreditsError
from credits_ledger.domain.money import format_amount
from credits_ledger.domain.times import iso
from credits_ledger.environment import LOG_ONLY_BUS, PublishingEnvironment, load
from credits_ledger.observability import logger

SOURCE = "credits"
MAX_ENTRIES_PER_CALL = 10


class PublishFailed(CreditsError):
    """EventBridge refused some entries (FailedEntryCount > 0): the caller must retry them."""

    def __init__(self, failures: dict[int, str]) -> None:
        codes = sorted(set(failures.values()))
        super().__init__(f"{len(failures)} event(s) not published: {', '.join(codes)}")
        self.failures = failures  # index in the published sequence -> error code


@dataclass(frozen=True)
class BusEvent:
    detail_type: str
    detail: dict[str, Any]
    resources: tuple[str, ...] = field(default_factory=tuple)
    time: datetime | None = None


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return format_amount(value)
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@cache
def events_client() -> Any:
    return aws.client("events")


class EventBus:
    def __init__(self, client: Any | None = None, name: str | None = None) -> None:
        self._client = client or events_client()
        self._name = name or str(load(PublishingEnvironment).event_bus_name)

    def publish(self, events: Sequence[BusEvent]) -> None:
        """Put ``events`` on the bus, 10 per call; raises PublishFailed naming the events that failed (the ones
        that went through stay published: consumers deduplicate on the detail's id). An API error (throttling
        after botocore's retries, access denied) propagates as is: then nothing of that call was published."""
        failures: dict[int, str] = {}
        for start in range(0, len(events), MAX_ENTRIES_PER_CALL):
            chunk = events[start : start + MAX_ENTRIES_PER_CALL]
            response = self._client.put_events(Entries=[self._entry(e) for e in chunk])
            if response.get("FailedEntryCount", 0):
                for offset, result in enumerate(response.get("Entries", [])):
                    if result.get("ErrorCode"):
                        failures[start + offset] = str(result["ErrorCode"])
        if failures:
            raise PublishFailed(failures)

    def _entry(self, event: BusEvent) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Source": SOURCE,
            "DetailType": event.detail_type,
            "Detail": json.dumps(event.detail, default=_json_default, separators=(",", ":")),
            "EventBusName": self._name,
        }
        if event.resources:
            entry["Resources"] = list(event.resources)
        if event.time is not None:
            entry["Time"] = event.time
        return entry


class Publisher(Protocol):
    def publish(self, events: Sequence[BusEvent]) -> None: ...


class LogOnlyBus:
    """Stands in where a run asked for no bus (``CREDITS_EVENT_BUS=log-only``): events are logged, not sent.
    Deployed functions always name their bus (template.yaml); a missing ``EVENT_BUS_NAME`` is an error."""

    def publish(self, events: Sequence[BusEvent]) -> None:
        for event in events:
            logger.info(
                "event not published: CREDITS_EVENT_BUS=log-only",
                detail_type=event.detail_type,
                detail=event.detail,
            )


def default_bus(environment: PublishingEnvironment | None = None) -> Publisher:
    """The configured bus; a LogOnlyBus only when the environment asks for one (``CREDITS_EVENT_BUS=log-only``).
    Without either, ConfigurationError (never a silent switch to logging)."""
    settings = environment or load(PublishingEnvironment)
    if settings.event_bus == LOG_ONLY_BUS:
        logger.warning("CREDITS_EVENT_BUS=log-only: events will be logged, not published")
        return LogOnlyBus()
    return EventBus(name=settings.event_bus_name)
