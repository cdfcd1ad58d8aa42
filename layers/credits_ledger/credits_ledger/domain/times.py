"""How times are written: ISO 8601 in UTC with ``Z`` (responses, ledger items, events) and read back.

Pure, so the domain, the API models, the data layer and the events share one spelling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def epoch_us(moment: datetime) -> int:
    """Microseconds since 1970 (negative before): how items store instants compactly."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(value: Decimal | int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))
