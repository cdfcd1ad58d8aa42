"""Expiry reminders: which threshold (days before ``expires_at``) is due for a grant at a given instant.

Pure. Thresholds come from ``[expiry] reminder_days`` in the pricing file (default 30, 7, 1). A grant that is
already inside several thresholds when first seen (e.g. created with 5 days of validity) gets only the
tightest one: one reminder per run, never a burst of stale ones. Thresholds only tighten as time passes, so
recording the one sent is enough to never send it twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta


def due_threshold(expires_at: datetime, now: datetime, thresholds: Iterable[int]) -> int | None:
    """The smallest threshold ``d`` (days) with ``now < expires_at <= now + d days``; None when none applies
    (the grant is further away than every threshold, or already due for expiry)."""
    if expires_at <= now:
        return None
    due = [d for d in thresholds if expires_at - now <= timedelta(days=d)]
    return min(due) if due else None


def reminder_window(now: datetime, thresholds: Iterable[int]) -> datetime | None:
    """Upper bound of the ``expires_at`` range that may need a reminder at ``now`` (None: no thresholds)."""
    days = list(thresholds)
    return now + timedelta(days=max(days)) if days else None
