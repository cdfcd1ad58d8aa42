"""Stand-ins for the event bus (``credits_ledger.bus.Publisher``) where a test runs a job in-process: one that
keeps what was published, one that drops it."""

from __future__ import annotations

from collections.abc import Sequence

from credits_ledger.bus import BusEvent


class RecordingBus:
    """Keeps every published event, in order."""

    def __init__(self) -> None:
        self.events: list[BusEvent] = []

    def publish(self, events: Sequence[BusEvent]) -> None:
        self.events.extend(events)

    def types(self) -> list[str]:
        return [event.detail_type for event in self.events]


class DiscardingBus:
    """Drops every published event: for tests that check the ledger and the table only."""

    def publish(self, events: Sequence[BusEvent]) -> None:
        return None
