"""Low-balance and depleted alerts: pure decisions over the available balance before and after a change.

``alert_crossings`` fires on *crossings*, never on levels: a debit that takes ``available`` from above the
threshold to at or below it is one ``credits.balance.low``; further debits below it are nothing; going back
above re-arms it. ``credits.balance.depleted`` fires when ``available`` goes from more than 0 to 0.
"""

from __future__ import annotations

from decimal import Decimal
from enum import IntEnum, StrEnum

from credits_ledger.domain.balance import available as available  # what the alerts compare
from credits_ledger.domain.money import ZERO


class Alert(StrEnum):
    LOW = "credits.balance.low"
    DEPLETED = "credits.balance.depleted"


class Band(IntEnum):
    """Where an available balance sits relative to the alerts: only a change of band can raise one."""

    DEPLETED = 0
    LOW = 1
    ABOVE = 2


def band(available: Decimal, threshold: Decimal) -> Band:
    if available > threshold:
        return Band.ABOVE
    if available > 0:
        return Band.LOW
    return Band.DEPLETED


def alert_crossings(before: Decimal, after: Decimal, threshold: Decimal) -> tuple[Alert, ...]:
    """Alerts raised when ``available`` goes from ``before`` to ``after`` (``threshold`` >= 0).

    LOW: from above the threshold to at or below it (never with a 0 threshold: that is DEPLETED's job).
    DEPLETED: from more than 0 to 0 (or less). From above a positive threshold straight to 0: both, LOW first.
    """
    alerts: list[Alert] = []
    if before > threshold >= after and threshold > ZERO:
        alerts.append(Alert.LOW)
    if before > ZERO >= after:
        alerts.append(Alert.DEPLETED)
    return tuple(alerts)
