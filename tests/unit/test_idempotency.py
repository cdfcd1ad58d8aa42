"""domain/idempotency.py: one key per operation, never one key for two operations, fingerprints canonical."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from credits_ledger.domain import idempotency as idem

# Identifiers as the API admits them: 1 to 255 printable characters, any script.
identifiers = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f", min_codepoint=0x20),
    min_size=1,
    max_size=255,
)


def test_key_formats_are_stable() -> None:
    # Stored entries are keyed by these strings: changing one silently breaks idempotency of old operations.
    assert idem.usage_key("cus_A", "req-1") == "usage:cus_A:req-1"
    assert idem.admin_grant_key("welcome") == "grant:welcome"
    assert idem.expire_key("gr_1") == "expire:gr_1"
    assert idem.rollover_key("gr_1") == "rollover:gr_1"
    assert idem.void_key("gr_1") == "void:gr_1"
    assert idem.stripe_grant_key("pi_1", "li_1") == "stripe:grant:pi_1:li_1"
    assert idem.stripe_revoke_key("gr_1", Decimal("500")) == "stripe:revoke:gr_1:500"
    assert idem.stripe_dispute_key("hold", "gr_1", 3) == "stripe:hold:gr_1:3"
    assert idem.subscription_month_key("si_1", 1894000000, 2) == "stripe:subscription:si_1:1894000000:2"
    assert idem.proration_grant_key("il_1", 0) == "stripe:proration:il_1:0"
    assert idem.proration_revoke_key("gr_1", Decimal("2500")) == "stripe:proration-revoke:gr_1:2500"
    assert idem.trial_key("sub_1") == "stripe:trial:sub_1"
    assert idem.reserve_key("job-1") == "reserve:job-1"
    assert idem.extend_key("job-1", 7) == "reserve:job-1:extend:7"
    assert idem.capture_key("job-1") == "capture:job-1"
    assert idem.unreserve_key("job-1") == "unreserve:job-1"
    assert idem.unreserve_expire_key("job-1") == "unreserve:job-1:expire"


def test_a_colon_in_the_customer_cannot_make_two_usage_events_one_key() -> None:
    # ("a:b", "c") and ("a", "b:c") would both read "usage:a:b:c" without escaping
    assert idem.usage_key("a:b", "c") != idem.usage_key("a", "b:c")
    assert idem.usage_key("a%3Ab", "c") != idem.usage_key("a:b", "c")


def reservation_keys(reservation_id: str, seq: int) -> dict[str, str]:
    """Every key a reservation's operations write, by operation."""
    return {
        "reserve": idem.reserve_key(reservation_id),
        "extend": idem.extend_key(reservation_id, seq),
        "capture": idem.capture_key(reservation_id),
        "unreserve": idem.unreserve_key(reservation_id),
        "unreserve-expire": idem.unreserve_expire_key(reservation_id),
    }


def test_a_colon_in_a_reservation_id_cannot_spell_another_operations_key() -> None:
    # unescaped, "a:expire"'s end would be "a"'s expired give-back, and "j:extend:5"'s creation j's extension
    assert idem.unreserve_key("a:expire") != idem.unreserve_expire_key("a")
    assert idem.reserve_key("j:extend:5") != idem.extend_key("j", 5)


# ids made of the pieces a key's parts are told apart by
colon_heavy = st.lists(
    st.sampled_from(["a", ":", "%", "3A", ":expire", ":extend:5", "5"]), min_size=1, max_size=4
).map("".join)


@given(colon_heavy | identifiers, colon_heavy, st.integers(0, 9), st.integers(0, 9))
def test_reservation_keys_are_one_per_operation_and_id(base: str, tail: str, s1: int, s2: int) -> None:
    # an id against a longer one that starts with it (where one key format extends another), and any other
    for r1, r2 in ((base, base + tail), (base, tail)):
        first, second = reservation_keys(r1, s1), reservation_keys(r2, s2)
        for op1, key1 in first.items():
            for op2, key2 in second.items():
                same = op1 == op2 and r1 == r2 and (op1 != "extend" or s1 == s2)
                assert (key1 == key2) is same, (op1, r1, s1, op2, r2, s2)


@given(identifiers, identifiers, identifiers, identifiers)
def test_usage_keys_are_one_per_customer_and_id(c1: str, i1: str, c2: str, i2: str) -> None:
    same = (c1, i1) == (c2, i2)
    assert (idem.usage_key(c1, i1) == idem.usage_key(c2, i2)) is same


@given(identifiers, identifiers)
def test_usage_keys_fit_a_dynamodb_partition_key(customer: str, usage_id: str) -> None:
    key = idem.usage_key(customer, usage_id)
    assert len(f"ENTRY#{key}".encode()) <= 2048
    assert key.startswith(idem.USAGE_PREFIX) or key.startswith(idem.USAGE_DIGEST_PREFIX)


def test_a_key_too_long_to_spell_is_a_digest_distinct_per_pair() -> None:
    wide = "\U0001f600" * 255  # 4 bytes each in UTF-8
    long_a, long_b = idem.usage_key(wide, wide), idem.usage_key(wide, wide[:-1])
    assert long_a.startswith(idem.USAGE_DIGEST_PREFIX) and long_b.startswith(idem.USAGE_DIGEST_PREFIX)
    assert long_a != long_b
    assert idem.usage_key(wide, wide) == long_a


def test_fingerprints_ignore_field_order_and_see_every_value() -> None:
    base = {"customer": "cus_A", "quantity": "2", "metadata": [["k", "v"]]}
    assert idem.fingerprint(base) == idem.fingerprint(dict(reversed(base.items())))
    assert len(idem.fingerprint(base)) == 64
    for field, other in (("customer", "cus_B"), ("quantity", "2.5"), ("metadata", [["k", "w"]])):
        assert idem.fingerprint({**base, field: other}) != idem.fingerprint(base)


def test_fingerprint_of_stored_requests_is_unchanged() -> None:
    # Entries written before this module carry this exact digest (sha256 of the compact sorted JSON); a
    # different canonical form would turn every replay of them into a 409.
    fields = {"customer": "cus_A", "meter": "api_call", "quantity": "3", "metadata": []}
    assert idem.fingerprint(fields) == "fafd79cf22b80ae05424714a26be05f9649c0463039448f78a71f0423a28375a"
