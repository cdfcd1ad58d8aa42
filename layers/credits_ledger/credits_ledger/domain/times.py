"""How times are written: ISO 8601 in UTC with ``Z`` (responses, ledger items, events) and read back.

Pure, so the domain, the API models, the data layer and the events share one spelling."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
