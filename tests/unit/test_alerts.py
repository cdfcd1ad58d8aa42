"""Low-balance / depleted alerts fire on crossings, never on levels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from credits_ledger.domain import transitions as tr
from credits_ledger.domain.alerts import Alert, Band, alert_crossings, available, band
from credits_ledger.domain.models import AccountState, Source
from credits_ledger.domain.transitions import EntryContext, GrantSpec

D = Decimal
LOW, DEPLETED = Alert.LOW, Alert.DEPLETED


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("150", "100", (LOW,)),  # to exactly the threshold
        ("150", "99", (LOW,)),
        ("100", "50", ()),  # already at the threshold: no second low
        ("90", "10", ()),  # below and further below
        ("150", "0", (LOW, DEPLETED)),  # straight to zero: both, low first
        ("10", "0", (DEPLETED,)),
        ("0", "0", ()),
        ("50", "150", ()),  # going up never alerts
        ("150", "101", ()),
        ("0", "100", ()),
    ],
)
def test_alert_crossings(before: str, after: str, expected: tuple[Alert, ...]) -> None:
    # Given a threshold of 100 / When available goes from before to after / Then exactly these alerts
    assert alert_crossings(D(before), D(after), D(100)) == expected


def test_a_sequence_of_debits_raises_one_low_until_the_balance_goes_back_above() -> None:
    # Given available balances over time (threshold 100): down in steps, up by a grant, down again
    path = [D(v) for v in ("500", "120", "100", "80", "40", "300", "90", "0")]
    # When alerts are computed change by change
    raised = [a for b, c in zip(path, path[1:], strict=False) for a in alert_crossings(b, c, D(100))]
    # Then one low per downward crossing and one depleted at zero
    assert raised == [LOW, LOW, DEPLETED]


def test_zero_threshold_only_depletes() -> None:
    # Given a threshold of 0 (low alerts off) / When the balance hits 0 / Then only depleted
    assert alert_crossings(D(5), D(0), D(0)) == (DEPLETED,)
    assert alert_crossings(D(5), D(1), D(0)) == ()


def test_bands() -> None:
    # Given a threshold of 100 / Then bands split at the threshold and at zero
    assert [band(D(v), D(100)) for v in ("101", "100", "1", "0")] == [
        Band.ABOVE,
        Band.LOW,
        Band.LOW,
        Band.DEPLETED,
    ]


def test_available_excludes_past_expiry_held_and_pending() -> None:
    # Given an account with an active, an expiring and a future grant
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    state = AccountState("acct")
    for gid, amount, extra in [
        ("a", "100", {}),
        ("b", "50", {"expires_at": t0 + timedelta(days=1)}),
        ("c", "25", {"effective_at": t0 + timedelta(days=5)}),
    ]:
        spec = GrantSpec(grant_id=gid, amount=D(amount), source=Source("admin"), **extra)  # type: ignore[arg-type]
        state = tr.grant(state, spec, EntryContext(f"grant:{gid}", t0)).state
    # When available is read now and after b's expiry / Then pending never counts, b stops counting at expiry
    assert available(state, t0) == D(150)
    assert available(state, t0 + timedelta(days=2)) == D(100)
