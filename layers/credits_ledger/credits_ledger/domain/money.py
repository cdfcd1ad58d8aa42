"""Exact credit amounts: Decimal only, at most 6 fractional digits, computed debits rounded up."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

SCALE = Decimal("0.000001")
MAX_FRACTION_DIGITS = 6
# 18 integer + 6 fractional digits stay inside Decimal's default 28-digit context (and DynamoDB's 38), so
# arithmetic on amounts is exact; nobody sells 10^18 credits.
MAX_INTEGER_DIGITS = 18
ZERO = Decimal(0)


class InvalidAmount(ValueError):
    """An amount that is not a finite decimal with at most 6 fractional digits."""


def parse_amount(value: object) -> Decimal:
    """Turn a request value (str, int or Decimal; never float) into an exact amount.

    Floats are refused because the caller has already lost precision; JSON bodies must be parsed with
    ``parse_float=Decimal`` so that numbers arrive here as Decimal.
    """
    if isinstance(value, (bool, float)):
        raise InvalidAmount("must be a decimal string or an exact JSON number")
    try:
        amount = Decimal(value) if isinstance(value, int | str) else value
    except InvalidOperation as exc:
        raise InvalidAmount("is not a decimal number") from exc
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidAmount("is not a finite decimal number")
    if amount != 0 and amount.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidAmount(f"is too large (at most {MAX_INTEGER_DIGITS} integer digits)")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_FRACTION_DIGITS and amount != amount.quantize(SCALE):
        raise InvalidAmount(f"has more than {MAX_FRACTION_DIGITS} fractional digits")
    return canonical(amount)


def round_up(value: Decimal) -> Decimal:
    """Round a computed debit up to 6 fractional digits: the customer never pays less than used."""
    return canonical(value.quantize(SCALE, rounding=ROUND_CEILING))


def canonical(value: Decimal) -> Decimal:
    """One representation per value (1500, not 1.5E+3 or 1500.000), so equal amounts compare and print alike."""
    if value == 0:
        return ZERO
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        normalized = normalized.quantize(Decimal(1))
    return normalized


def format_amount(value: Decimal) -> str:
    """The wire form of an amount: a plain decimal string without exponent ("1500", "0.25")."""
    return f"{canonical(value):f}"
