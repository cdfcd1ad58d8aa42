"""API keys and what they may do: key format, hashing and scope checks. Pure: no I/O here.

A key reads ``ck_<key id>_<secret>``: the key id finds the stored record (one GetItem), the secret (32 random
bytes, URL-safe base64) makes the key unguessable. Only ``sha256(key)`` is stored; a presented key is
verified by comparing hashes in constant time. A 256-bit random secret needs no slow password hash: there is
nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import string
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from credits_ledger.domain.errors import CreditsError, NotFound

KEY_PREFIX = "ck"
BOOTSTRAP_KEY_ID = "bootstrap"
# The bootstrap admin key opens every account: it must be as hard to guess as the keys this API issues.
MIN_BOOTSTRAP_KEY_BITS = 128
_MIN_DISTINCT_CHARACTERS = 8


class Scope(StrEnum):
    ADMIN = "admin"
    USAGE_WRITE = "usage:write"
    BALANCE_READ = "balance:read"


class Unauthorized(CreditsError):
    """No key, a key this service did not issue, or a revoked one (HTTP 401). Never says which."""

    def __init__(self, message: str = "a valid API key is required: Authorization: Bearer <key>") -> None:
        super().__init__(message)
        self.message = message


class Forbidden(CreditsError):
    """A valid key without the scope, or limited to other accounts (HTTP 403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_key: str  # shown once, never stored
    key_hash: str


@dataclass(frozen=True)
class ApiKey:
    """A stored key: its hash, never the key."""

    key_id: str
    key_hash: str
    scopes: frozenset[Scope]
    customers: frozenset[str] | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified key's id, scopes and accounts (None: every account)."""

    key_id: str
    scopes: frozenset[Scope]
    customers: frozenset[str] | None = None

    def require(self, scope: Scope, customer: str | None = None) -> None:
        """Raise Forbidden unless this key has ``scope`` (``admin`` implies every scope) and may touch
        ``customer``."""
        if scope not in self.scopes and Scope.ADMIN not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope.value!r} scope")
        if customer is not None and not self.may_access(customer):
            raise Forbidden(f"this API key may not access customer {customer!r}")

    def require_unrestricted_admin(self) -> None:
        """Managing keys needs ``admin`` on every account: a key limited to accounts could otherwise mint an
        unlimited one."""
        self.require(Scope.ADMIN)
        if self.customers is not None:
            raise Forbidden("API keys can only be managed with an admin key valid for every account")

    def may_access(self, customer: str) -> bool:
        return self.customers is None or customer in self.customers


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret_key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, secret_key=secret_key, key_hash=hash_key(secret_key))


def key_id_of(key: str) -> str | None:
    """The key id inside a presented key, or None when it does not have our format."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[2]:
        return None
    key_id = parts[1]
    if len(key_id) != 16 or any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def bearer_token(authorization: object) -> str:
    """The key from an ``Authorization: Bearer <key>`` header; Unauthorized when absent or malformed (not a
    string, as a direct invocation may send, or not text at all: a lone surrogate hashes to nothing)."""
    if not isinstance(authorization, str) or not authorization:
        raise Unauthorized()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        raise Unauthorized()
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise Unauthorized() from None
    return token


def hashes_match(presented_hash: str, stored_hash: str) -> bool:
    return hmac.compare_digest(presented_hash.encode("ascii"), stored_hash.encode("ascii"))


def principal_for(presented_key: str, stored: ApiKey | None) -> Principal:
    """The principal of a stored key if the presented key is that key and it is not revoked."""
    if stored is None or not hashes_match(hash_key(presented_key), stored.key_hash) or stored.revoked_at:
        raise Unauthorized()
    return Principal(key_id=stored.key_id, scopes=stored.scopes, customers=stored.customers)


def key_strength_bits(key: str) -> float:
    """An upper estimate of a key's entropy: its length times log2 of the alphabet its character classes
    span (lowercase, uppercase, digits, other printable ASCII, anything else), and 0 for a key of fewer than
    8 distinct characters ("aaaa...", "abab..."). `secrets.token_urlsafe(24)` (32 characters) scores over 180."""
    if len(set(key)) < _MIN_DISTINCT_CHARACTERS:
        return 0.0
    classes = (
        (string.ascii_lowercase, 26),
        (string.ascii_uppercase, 26),
        (string.digits, 10),
        (string.punctuation, 32),
    )
    alphabet = sum(size for chars, size in classes if any(c in chars for c in key))
    if any(not (c.isascii() and c.isprintable()) for c in key):
        alphabet += 64  # generous for anything else: still needs a length no guessable key has
    return len(key) * math.log2(alphabet)


def strong_enough(key: str) -> bool:
    return key_strength_bits(key) >= MIN_BOOTSTRAP_KEY_BITS


def bootstrap_principal(presented_key: str, bootstrap_key: str | None) -> Principal | None:
    """The bootstrap admin key (from a secret) has every scope on every account."""
    if not bootstrap_key or not hashes_match(hash_key(presented_key), hash_key(bootstrap_key)):
        return None
    return Principal(key_id=BOOTSTRAP_KEY_ID, scopes=frozenset(Scope))


def scopes_from(values: Iterable[str]) -> frozenset[Scope]:
    return frozenset(Scope(v) for v in values)


def customers_from(values: Collection[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


class ApiKeyNotFound(NotFound):
    what = "API key"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id} does not exist")
        self.key_id = key_id


class ApiKeyExists(CreditsError):
    """A freshly generated key id collided with a stored one (64 random bits: practically never)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id} exists already")
        self.key_id = key_id
