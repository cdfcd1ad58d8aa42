"""Request/response models of the HTTP API and the usage glue: exact amounts, times, fingerprints."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from credits_ledger.api_models import (
    BalanceView,
    ErrorBody,
    GrantRequest,
    GrantView,
    TransactionView,
    UsageBatchResult,
    UsageRequest,
)
from credits_ledger.domain.models import (
    Allocation,
    Balance,
    Category,
    CostBasis,
    EntryType,
    Grant,
    GrantStatus,
    LedgerEntry,
    Source,
)
from credits_ledger.pricing import parse_pricing
from credits_ledger.usage import InvalidUsage, answer, debit_request, fingerprint

NOW = datetime.now(UTC)
PRICING = parse_pricing(
    {"meters": {"api_call": {"credits_per_unit": "1"}, "gb": {"credits_per_unit": "0.05"}}}
)


def usage(**fields: Any) -> UsageRequest:
    return UsageRequest.model_validate(
        {"id": "e1", "customer": "cus_A", "meter": "api_call", "quantity": 1, **fields}
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, Decimal("3")),
        ("3", Decimal("3")),
        ("2.50", Decimal("2.5")),
        (Decimal("0.000001"), Decimal("0.000001")),
        ("1.0000000", Decimal("1")),
        ("+4", Decimal("4")),
        (".5", Decimal("0.5")),
        (Decimal("1E+2"), Decimal("100")),
    ],
)
def test_quantities_are_exact_decimals(value: Any, expected: Decimal) -> None:
    quantity = usage(quantity=value).quantity
    assert quantity == expected and isinstance(quantity, Decimal)
    assert str(quantity) == str(expected)


@pytest.mark.parametrize(
    "value",
    [
        0,
        "0",
        -1,
        "-0.5",
        0.5,
        True,
        "abc",
        "1e3",
        "NaN",
        "Infinity",
        "1_000",
        " 1",
        "",
        "1.0000001",
        Decimal("1E+400"),
        10**15,
        Decimal("NaN"),
        None,
        [],
        {},
    ],
)
def test_invalid_quantities_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        usage(quantity=value)
    assert [e["loc"] for e in info.value.errors()] == [("quantity",)]


def test_timestamps_need_an_offset_and_a_recent_time() -> None:
    now = datetime.now(UTC)  # not NOW: the window is relative to when the test runs
    assert usage(
        timestamp=(now - timedelta(hours=1)).astimezone(timezone(timedelta(hours=2))).isoformat()
    ).timestamp
    for bad in [
        (now + timedelta(minutes=6)).isoformat(),
        (now - timedelta(days=35, minutes=1)).isoformat(),
        now.replace(tzinfo=None).isoformat(),
        "today",
        1716557826,
    ]:
        with pytest.raises(ValidationError) as info:
            usage(timestamp=bad)
        assert [e["loc"] for e in info.value.errors()] == [("timestamp",)]


def test_timestamps_are_kept_in_utc() -> None:
    local = (datetime.now(UTC) - timedelta(hours=1)).astimezone(UTC).replace(microsecond=0)
    stamp = local.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert usage(timestamp=stamp).timestamp == local


def test_unknown_fields_and_reserved_metadata_are_refused() -> None:
    with pytest.raises(ValidationError):
        usage(colour="blue")
    with pytest.raises(ValidationError):
        usage(metadata={"available_after": "1"})
    with pytest.raises(ValidationError):
        usage(metadata={f"k{i}": "v" for i in range(21)})


def test_fingerprint_is_canonical() -> None:
    base = fingerprint(usage(quantity="2.50", metadata={"a": "1", "b": "2"}))
    assert fingerprint(usage(quantity=Decimal("2.5"), metadata={"b": "2", "a": "1"})) == base
    assert fingerprint(usage(id="other", quantity="2.5", metadata={"a": "1", "b": "2"})) == base
    assert fingerprint(usage(quantity="2.6", metadata={"a": "1", "b": "2"})) != base
    assert fingerprint(usage(customer="cus_B", quantity="2.5", metadata={"a": "1", "b": "2"})) != base
    assert fingerprint(usage(quantity="2.5")) != base
    when = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    assert fingerprint(usage(timestamp=when.isoformat())) == fingerprint(
        usage(timestamp=when.astimezone(timezone(timedelta(hours=-3))).isoformat())
    )
    assert fingerprint(usage(timestamp=when.isoformat())) != fingerprint(usage())


def test_debit_request_prices_the_meter_and_rounds_up() -> None:
    request = debit_request(usage(meter="gb", quantity="0.00001", metadata={"x": "y"}), PRICING)
    assert request.key == "usage:cus_A:e1"
    assert request.amount == Decimal("0.000001")
    assert request.reference == "e1"
    assert request.metadata == {"x": "y", "meter": "gb", "quantity": "0.00001"}
    with pytest.raises(InvalidUsage) as info:
        debit_request(usage(meter="nope"), PRICING)
    assert info.value.field == "meter"


def test_the_usage_answer_is_rebuilt_from_the_entry_alone() -> None:
    entry = LedgerEntry(
        entry_key="usage:e1",
        account_id="cus_A",
        seq=2,
        type=EntryType.DEBIT,
        amount=Decimal("-7.5"),
        balance_after=Decimal("92.5"),
        allocations=(Allocation("gr_1", Decimal("5")), Allocation("gr_2", Decimal("2.5"))),
        reference="e1",
        created_at=NOW,
        metadata={"meter": "gb", "quantity": "150", "available_after": "90"},
    )
    assert answer(entry).model_dump() == {
        "id": "e1",
        "customer": "cus_A",
        "meter": "gb",
        "quantity": "150",
        "credits": "7.5",
        "balance": "90",
        "status": "debited",
        "allocations": [{"grant_id": "gr_1", "amount": "5"}, {"grant_id": "gr_2", "amount": "2.5"}],
    }


def test_grant_request_defaults_and_strict_priority() -> None:
    request = GrantRequest.model_validate({"amount": "5"})
    assert (request.category, request.priority, request.id) == (Category.PROMOTIONAL, 50, None)
    with pytest.raises(ValidationError):
        GrantRequest.model_validate({"amount": "5", "priority": True})
    with pytest.raises(ValidationError):
        GrantRequest.model_validate({"amount": "5", "priority": Decimal("1.0")})


def test_grant_view_sends_amounts_as_strings_and_times_with_z() -> None:
    grant = Grant(
        grant_id="gr_1",
        account_id="cus_A",
        amount=Decimal("1500"),
        remaining=Decimal("0.25"),
        category=Category.PAID,
        priority=50,
        effective_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
        expires_at=None,
        source=Source("stripe_checkout", "cs_1"),
        cost_basis=CostBasis(Decimal("19.99"), "eur"),
        created_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
        status=GrantStatus.ACTIVE,
    )
    view = json.loads(GrantView.of(grant).model_dump_json())
    assert (view["amount"], view["remaining"]) == ("1500", "0.25")
    assert view["cost_basis"] == {"amount": "19.99", "currency": "eur"}
    assert view["effective_at"] == "2024-05-01T12:00:00.000000Z"
    assert view["source"] == {"type": "stripe_checkout", "id": "cs_1"}


def test_balance_and_transaction_views() -> None:
    balance = Balance(
        "cus_A",
        Decimal("10"),
        Decimal("15"),
        Decimal("4"),
        Decimal("6"),
        Decimal("2"),
        Decimal("3"),
        None,
        Decimal(0),
        NOW,
    )
    view = BalanceView.of(balance).model_dump()
    assert view["by_category"] == {"paid": "4", "promotional": "6"} and view["next_expiry"] is None
    entry = LedgerEntry(
        "grant:x",
        "cus_A",
        1,
        EntryType.GRANT,
        Decimal("1E+3"),
        Decimal("1000"),
        (Allocation("gr_1", Decimal("1000")),),
        None,
        NOW,
        "fp",
        {},
    )
    assert TransactionView.of(entry).model_dump()["amount"] == "1000"


def test_absent_details_and_errors_are_omitted() -> None:
    assert ErrorBody(code="c", message="m").model_dump() == {"code": "c", "message": "m"}
    assert UsageBatchResult(id="e", status="debited").model_dump() == {"id": "e", "status": "debited"}


@pytest.mark.parametrize(
    "cursor",
    ["x", "W10=", "eyJhIjogMX0=", base64.urlsafe_b64encode(b'{"a": {"S": 1}}').decode(), "é"],
)
def test_cursors_must_look_like_ours(cursor: str) -> None:
    from pydantic import TypeAdapter

    from credits_ledger.api_models import Cursor

    with pytest.raises(ValidationError):
        TypeAdapter(Cursor).validate_python(cursor)
    good = base64.urlsafe_b64encode(b'{"account_id": {"S": "cus_A"}, "seq": {"N": "3"}}').decode()
    assert TypeAdapter(Cursor).validate_python(good) == good
