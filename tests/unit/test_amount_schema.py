"""The JSON Schema the OpenAPI document gives positive amounts accepts exactly what the API accepts."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from credits_ledger.api_models import _POSITIVE_AMOUNT_SCHEMA, _positive, _to_amount

STRING_SCHEMA = _POSITIVE_AMOUNT_SCHEMA["anyOf"][0]
# ECMA-262 semantics: \d is [0-9], no Unicode digits; the pattern uses only constructs both engines share.
PATTERN = re.compile(STRING_SCHEMA["pattern"], re.ASCII)


def api_accepts(text: str) -> bool:
    try:
        _positive(_to_amount(text))
    except ValueError:
        return False
    return True


def schema_accepts(text: str) -> bool:
    return len(text) <= STRING_SCHEMA["maxLength"] and PATTERN.fullmatch(text) is not None


decimal_like = st.from_regex(r"\A[+-]?0{0,3}[0-9]{0,17}(\.[0-9]{0,9}0{0,3})?\Z") | st.text(
    alphabet="+-.0123456789e٣", max_size=45
)


@settings(max_examples=3000)
@given(decimal_like)
def test_the_string_pattern_is_the_api_rule(text: str) -> None:
    assert schema_accepts(text) is api_accepts(text), text


def test_examples_on_both_sides_of_the_rule() -> None:
    for accepted in ("1", "+5", "5.", ".5", "0.000001", "1.0000000", "9" * 15, "0.100000"):
        assert api_accepts(accepted) and schema_accepts(accepted), accepted
    for refused in ("0", "0.0", "-5", "0.0000001", "1.1234567", "1e3", "9" * 16, "٣", "", "."):
        assert not api_accepts(refused) and not schema_accepts(refused), refused
