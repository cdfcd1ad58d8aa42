"""Amounts: exact decimals, at most 6 fractional digits, computed debits rounded up, plain wire strings."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits_ledger.domain.money import InvalidAmount, format_amount, parse_amount, round_up

MICRO = Decimal("0.000001")


# ---- parse_amount ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1500", Decimal("1500")),
        ("0.25", Decimal("0.25")),
        ("0.250000", Decimal("0.25")),
        ("1.5E+3", Decimal("1500")),
        ("0.000001", Decimal("0.000001")),
        ("123456789.123456", Decimal("123456789.123456")),
        (42, Decimal(42)),
        (0, Decimal(0)),
        (Decimal("0.5"), Decimal("0.5")),
        (Decimal("2.000000"), Decimal("2")),
        ("-1.5", Decimal("-1.5")),  # sign is checked by the operation (adjust takes negatives), not here
    ],
)
def test_parse_amount_accepts_exact_values(raw: object, expected: Decimal) -> None:
    # Given a string, int or Decimal with at most 6 fractional digits
    # When it is parsed
    amount = parse_amount(raw)
    # Then it is that exact Decimal, in canonical form (prints without exponent or trailing zeros)
    assert isinstance(amount, Decimal)
    assert amount == expected
    assert str(amount) == format_amount(expected)


@pytest.mark.parametrize("raw", [0.25, 1.0, 0.1 + 0.2, float("nan"), float("inf"), True, False])
def test_parse_amount_refuses_floats_and_bools(raw: object) -> None:
    # Given a float (precision already lost) or a bool
    # When / Then it is refused
    with pytest.raises(InvalidAmount):
        parse_amount(raw)


@pytest.mark.parametrize(
    "raw",
    ["0.0000001", "1.1234567", "0.3333333333", Decimal("0.1234567"), Decimal("1E-7"), "12.0000005"],
)
def test_parse_amount_refuses_more_than_six_fractional_digits(raw: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(raw)


@pytest.mark.parametrize("raw", ["", "abc", "1,5", "NaN", "sNaN", "Infinity", "-inf", None, [], {}, b"1"])
def test_parse_amount_refuses_non_numbers(raw: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(raw)


def test_invalid_amount_is_a_value_error() -> None:
    # Handlers map ValueError-like request errors to 422: InvalidAmount must be one
    assert issubclass(InvalidAmount, ValueError)


@pytest.mark.parametrize("raw", ["1e30", "12345678901234567890123.1234567", Decimal("1E+40")])
def test_parse_amount_huge_values_are_a_clean_answer(raw: object) -> None:
    # Given an absurdly large amount in a request
    # When it is parsed
    try:
        amount = parse_amount(raw)
    except InvalidAmount:
        return  # Then either it is refused as an invalid amount...
    # ...or it is accepted exactly
    assert amount == Decimal(raw)


@pytest.mark.parametrize("raw", ["999999999999999999.999999", "-999999999999999999.999999", "1E+17"])
def test_parse_amount_largest_accepted_values_are_exact(raw: str) -> None:
    # Given the largest amounts the contract still accepts (18 integer + 6 fractional digits)
    amount = parse_amount(raw)
    # Then they are exact, and arithmetic on them (a balance plus a grant) stays exact
    assert amount == Decimal(raw)
    assert parse_amount(format_amount(amount)) == amount
    assert (amount + Decimal("0.000001")) - amount == Decimal("0.000001")


@pytest.mark.parametrize("raw", ["1e18", "1000000000000000000", "-1e18", Decimal("1E+18")])
def test_parse_amount_refuses_more_than_18_integer_digits(raw: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(raw)


@given(st.decimals(min_value=-(10**12), max_value=10**12, places=6, allow_nan=False, allow_infinity=False))
def test_parse_amount_round_trips_through_the_wire_form(value: Decimal) -> None:
    # Given any amount with at most 6 fractional digits
    # When it is formatted and parsed back (as the API does)
    wire = format_amount(value)
    # Then the value is unchanged and the wire form is a plain decimal string
    assert parse_amount(wire) == value
    assert "e" not in wire.lower()
    assert parse_amount(str(value)) == value


# ---- round_up ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("computed", "expected"),
    [
        (Decimal("0.0000001"), Decimal("0.000001")),
        (Decimal("1.0000001"), Decimal("1.000001")),
        (Decimal("1.000001"), Decimal("1.000001")),
        (Decimal("2"), Decimal("2")),
        (Decimal("0.3333333333"), Decimal("0.333334")),
        (Decimal("3") * Decimal("0.0000005"), Decimal("0.000002")),  # quantity x rate
        (Decimal("7") * Decimal("0.05"), Decimal("0.35")),
        (Decimal("0.1234560000001"), Decimal("0.123457")),
    ],
)
def test_round_up_to_six_digits_ceiling(computed: Decimal, expected: Decimal) -> None:
    # Given a computed debit (quantity x rate)
    # When it is rounded
    rounded = round_up(computed)
    # Then it is rounded UP to 6 fractional digits: the customer never pays less than used
    assert rounded == expected
    assert str(rounded) == format_amount(expected)


@given(st.decimals(min_value=0, max_value=10**9, places=12, allow_nan=False, allow_infinity=False))
def test_round_up_never_undercharges_and_overcharges_by_less_than_a_micro_credit(value: Decimal) -> None:
    rounded = round_up(value)
    assert rounded >= value
    assert rounded - value < MICRO
    assert rounded == rounded.quantize(MICRO)  # at most 6 fractional digits
    assert parse_amount(format_amount(rounded)) == rounded


# ---- format_amount -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (Decimal("1500"), "1500"),
        (Decimal("1.5E+3"), "1500"),
        (Decimal("1500.000"), "1500"),
        (Decimal("0.25"), "0.25"),
        (Decimal("0.250"), "0.25"),
        (Decimal("0"), "0"),
        (Decimal("0E-6"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("1E-6"), "0.000001"),
        (Decimal("100"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("-12.50"), "-12.5"),
    ],
)
def test_format_amount_is_a_plain_decimal_string(value: Decimal, wire: str) -> None:
    assert format_amount(value) == wire
