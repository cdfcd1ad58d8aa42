"""The settings route's body (PUT /v1/customers/{customer}/settings): validated in pure code."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from credits_ledger.account_settings import InvalidSettings, SettingsUpdate, parse_settings, settings_view
from credits_ledger.dal.account_settings import AccountSettings


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"low_balance_threshold": "250"}, Decimal(250)),
        ({"low_balance_threshold": Decimal("0.5")}, Decimal("0.5")),  # a JSON number parsed as Decimal
        ({"low_balance_threshold": 0}, Decimal(0)),
        ({"low_balance_threshold": None}, None),  # back to the pricing default
        ({}, None),  # PUT replaces: absent is reset too
    ],
)
def test_valid_bodies(body: dict, expected: Decimal | None) -> None:
    # Given a body / When parsed / Then the threshold it sets (None: the default)
    assert parse_settings(body) == SettingsUpdate(expected)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"low_balance_threshold": "-1"}, "low_balance_threshold"),
        ({"low_balance_threshold": 1.5}, "low_balance_threshold"),  # a float lost precision already
        ({"low_balance_threshold": "1.0000001"}, "low_balance_threshold"),
        ({"low_balance_threshold": "abc"}, "low_balance_threshold"),
        ({"low_balance": "5"}, "low_balance"),
    ],
)
def test_invalid_bodies_name_the_field(body: object, field: str) -> None:
    # Given a bad body / When parsed / Then InvalidSettings names the offending field (422 invalid_request)
    with pytest.raises(InvalidSettings) as raised:
        parse_settings(body)
    assert raised.value.field == field


def test_view_shows_override_and_effective_threshold() -> None:
    # Given stored settings with and without an override / Then the view says which threshold applies
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert settings_view(AccountSettings("cus_1", Decimal(250), at), Decimal(100)) == {
        "customer": "cus_1",
        "low_balance_threshold": "250",
        "effective_low_balance_threshold": "250",
        "overage": {"policy": "reject", "limit": None},
        "auto_topup": None,
        "updated_at": "2030-01-01T00:00:00.000000Z",
    }
    assert settings_view(AccountSettings("cus_2"), Decimal(100))["effective_low_balance_threshold"] == "100"
    assert settings_view(AccountSettings("cus_2"), Decimal(100))["low_balance_threshold"] is None
