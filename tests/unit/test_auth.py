"""API key format, hashing and scope rules (credits_ledger.auth, pure)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from credits_ledger.auth import (
    BOOTSTRAP_KEY_ID,
    ApiKey,
    Forbidden,
    Principal,
    Scope,
    Unauthorized,
    bearer_token,
    bootstrap_principal,
    generate_key,
    hash_key,
    key_id_of,
    principal_for,
)


def _stored(key: str, **changes: object) -> ApiKey:
    fields: dict[str, object] = {
        "key_id": key_id_of(key),
        "key_hash": hash_key(key),
        "scopes": frozenset({Scope.USAGE_WRITE}),
        "customers": None,
        "name": None,
        "created_at": datetime(2024, 5, 1, tzinfo=UTC),
        **changes,
    }
    return ApiKey(**fields)  # type: ignore[arg-type]


def test_generated_keys_have_our_format_and_are_unique() -> None:
    keys = [generate_key() for _ in range(50)]
    for new in keys:
        prefix, key_id, secret = new.secret_key.split("_", 2)
        assert prefix == "ck" and key_id == new.key_id and len(key_id) == 16
        assert len(secret) >= 43  # 32 random bytes, URL-safe base64
        assert key_id_of(new.secret_key) == new.key_id
        assert new.key_hash == hashlib.sha256(new.secret_key.encode()).hexdigest()
    assert len({k.secret_key for k in keys}) == 50
    assert len({k.key_id for k in keys}) == 50


@pytest.mark.parametrize(
    "key",
    ["", "ck_", "ck_0123456789abcdef_", "xx_0123456789abcdef_s", "ck_0123456789ABCDEF_s", "ck_short_s", "k"],
)
def test_keys_of_another_format_have_no_id(key: str) -> None:
    assert key_id_of(key) is None


def test_a_secret_may_contain_underscores() -> None:
    assert key_id_of("ck_0123456789abcdef_a_b-c") == "0123456789abcdef"


@pytest.mark.parametrize(
    ("header", "token"), [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER ck_1_2", "ck_1_2")]
)
def test_bearer_token_is_read_from_the_header(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic abc",
        "abc",
        "Bearer " + "x" * 600,
        "Bearer \ud800",  # a lone surrogate: no UTF-8 to hash
        "Bearer ck_0123456789abcdef_\udfff",
        3,  # a header that is no string (a direct invocation's event)
        ["Bearer abc"],
    ],
)
def test_missing_or_malformed_authorization_is_unauthorized(header: object) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(header)


def test_the_right_key_gets_its_principal() -> None:
    new = generate_key()
    principal = principal_for(new.secret_key, _stored(new.secret_key, customers=frozenset({"cus_A"})))
    assert principal == Principal(new.key_id, frozenset({Scope.USAGE_WRITE}), frozenset({"cus_A"}))


def test_a_wrong_secret_unknown_or_revoked_key_is_unauthorized() -> None:
    new = generate_key()
    stored = _stored(new.secret_key)
    with pytest.raises(Unauthorized):
        principal_for(new.secret_key + "x", stored)
    with pytest.raises(Unauthorized):
        principal_for(new.secret_key, None)
    with pytest.raises(Unauthorized):
        principal_for(new.secret_key, _stored(new.secret_key, revoked_at=datetime(2024, 5, 2, tzinfo=UTC)))


def test_bootstrap_key_is_an_unrestricted_admin() -> None:
    admin = bootstrap_principal("s3cret", "s3cret")
    assert admin is not None and admin.key_id == BOOTSTRAP_KEY_ID
    assert admin.scopes == frozenset(Scope) and admin.customers is None
    assert bootstrap_principal("s3cret", "other") is None
    assert bootstrap_principal("s3cret", None) is None
    assert bootstrap_principal("", "") is None


def test_scopes_and_accounts_are_enforced() -> None:
    limited = Principal("k1", frozenset({Scope.USAGE_WRITE}), frozenset({"cus_A"}))
    limited.require(Scope.USAGE_WRITE, "cus_A")
    with pytest.raises(Forbidden):
        limited.require(Scope.USAGE_WRITE, "cus_B")
    with pytest.raises(Forbidden):
        limited.require(Scope.BALANCE_READ, "cus_A")
    with pytest.raises(Forbidden):
        limited.require(Scope.ADMIN)


def test_admin_implies_every_scope_but_account_limits_still_apply() -> None:
    admin = Principal("k2", frozenset({Scope.ADMIN}))
    admin.require(Scope.USAGE_WRITE, "cus_Z")
    admin.require(Scope.BALANCE_READ, "cus_Z")
    admin.require_unrestricted_admin()
    restricted = Principal("k3", frozenset({Scope.ADMIN}), frozenset({"cus_A"}))
    with pytest.raises(Forbidden):
        restricted.require(Scope.BALANCE_READ, "cus_B")
    with pytest.raises(Forbidden):
        restricted.require_unrestricted_admin()


def test_only_admins_manage_keys() -> None:
    with pytest.raises(Forbidden):
        Principal("k4", frozenset({Scope.USAGE_WRITE, Scope.BALANCE_READ})).require_unrestricted_admin()
