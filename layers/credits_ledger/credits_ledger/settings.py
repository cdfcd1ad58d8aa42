"""Per-account settings (admin route ``PUT /v1/customers/{customer}/settings``): the body is validated in pure
code and stored by ``AccountSettingsRepository``. Today one setting: ``low_balance_threshold``, the level at
or below which ``credits.balance.low`` fires (absent or null: the pricing file's ``[alerts]`` default).

PUT replaces the settings document: a key left out is reset to its default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from credits_ledger.dal.items import iso
from credits_ledger.dal.settings import AccountSettings, AccountSettingsRepository, StaleSettingsWrite
from credits_ledger.domain.errors import InvalidField
from credits_ledger.domain.money import InvalidAmount, format_amount, parse_amount
from credits_ledger.pricing import Pricing, load_pricing

KNOWN_KEYS = frozenset({"low_balance_threshold"})


class InvalidSettings(InvalidField):
    """A settings body the domain rejects; ``field`` names the offending key."""


@dataclass(frozen=True)
class SettingsUpdate:
    low_balance_threshold: Decimal | None = None


def parse_settings(body: Any) -> SettingsUpdate:
    """Validate a request body (parsed with ``parse_float=Decimal``). Pure."""
    if not isinstance(body, dict):
        raise InvalidSettings("body", "must be a JSON object")
    unknown = sorted(set(body) - KNOWN_KEYS)
    if unknown:
        raise InvalidSettings(unknown[0], "is not a known setting")
    raw = body.get("low_balance_threshold")
    if raw is None:
        return SettingsUpdate()
    try:
        threshold = parse_amount(raw)
    except InvalidAmount as exc:
        raise InvalidSettings("low_balance_threshold", str(exc)) from exc
    if threshold < 0:
        raise InvalidSettings("low_balance_threshold", "must be 0 or greater")
    return SettingsUpdate(low_balance_threshold=threshold)


def settings_view(settings: AccountSettings, default_threshold: Decimal) -> dict[str, Any]:
    override = settings.low_balance_threshold
    return {
        "customer": settings.account_id,
        "low_balance_threshold": format_amount(override) if override is not None else None,
        "effective_low_balance_threshold": format_amount(
            override if override is not None else default_threshold
        ),
        "updated_at": iso(settings.updated_at) if settings.updated_at else None,
    }


def put_settings(
    account_id: str,
    body: Any,
    *,
    repository: AccountSettingsRepository | None = None,
    pricing: Pricing | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Replace the account's settings with ``body``; returns the settings as stored (200 body).

    Raises InvalidSettings (422). Two writes racing: the one stamped later wins, the other returns it.
    """
    update = parse_settings(body)
    repository = repository or AccountSettingsRepository()
    pricing = pricing or load_pricing()
    try:
        stored = repository.put_threshold(account_id, update.low_balance_threshold, clock())
    except StaleSettingsWrite as exc:
        stored = exc.current
    return settings_view(stored, pricing.low_balance_threshold)


def get_settings(
    account_id: str,
    *,
    repository: AccountSettingsRepository | None = None,
    pricing: Pricing | None = None,
) -> dict[str, Any]:
    """The account's settings (defaults when never set)."""
    repository = repository or AccountSettingsRepository()
    pricing = pricing or load_pricing()
    return settings_view(repository.get(account_id, consistent=False), pricing.low_balance_threshold)
