"""The API key service: issue, revoke and verify keys, with a short cache of verified keys.

Verified keys are cached in the Lambda instance for ``CACHE_SECONDS`` (5 s): a revoked key stops working at
once in the instance that revoked it and within 5 seconds everywhere else. Unknown and revoked keys are
never cached (each attempt costs one GetItem). The bootstrap admin key comes from ``CREDITS_ADMIN_KEY``
(local) or the SSM SecureString named by ``ADMIN_KEY_PARAMETER`` (AWS), read through Powertools parameters
(cached 300 s); a stored key under 128 bits of entropy is refused (logged, never accepted). The local stack
refuses to start with a weak ``CREDITS_ADMIN_KEY``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from credits_ledger.auth import (
    MIN_BOOTSTRAP_KEY_BITS,
    ApiKey,
    NewKey,
    Principal,
    Scope,
    Unauthorized,
    bootstrap_principal,
    generate_key,
    hash_key,
    key_id_of,
    principal_for,
    strong_enough,
)
from credits_ledger.dal.api_keys import ApiKeyRepository
from credits_ledger.secrets import secret

CACHE_SECONDS = 5.0
ADMIN_KEY_ENV = "CREDITS_ADMIN_KEY"
ADMIN_KEY_PARAMETER_ENV = "ADMIN_KEY_PARAMETER"


def bootstrap_key() -> str | None:
    """The bootstrap admin key: the environment (local), else the SSM SecureString (AWS), else none."""
    key = secret(ADMIN_KEY_ENV, ADMIN_KEY_PARAMETER_ENV)
    if key is None or os.environ.get(ADMIN_KEY_ENV):
        return key  # a local key (make dev, tests) is taken as it is set
    if not strong_enough(key):
        # Refused, not fatal: issued keys keep working; the error log (and its alarm) says what to fix.
        from credits_ledger.observability import logger

        logger.error(
            "bootstrap admin key refused: under %d bits of entropy; store a random key in %s "
            "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
            MIN_BOOTSTRAP_KEY_BITS,
            os.environ.get(ADMIN_KEY_PARAMETER_ENV),
        )
        return None
    return key


@dataclass(frozen=True)
class IssuedKey:
    record: ApiKey
    key: str  # shown once


class KeyService:
    def __init__(
        self,
        repository: ApiKeyRepository,
        bootstrap: Callable[[], str | None] = bootstrap_key,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repository = repository
        self._bootstrap = bootstrap
        self._monotonic = monotonic
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}

    def verify(self, presented_key: str) -> Principal:
        digest = hash_key(presented_key)
        cached = self._cache.get(digest)
        now = self._monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = self._verify_uncached(presented_key)
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[digest] = (principal, now + CACHE_SECONDS)
        return principal

    def _verify_uncached(self, presented_key: str) -> Principal:
        admin = bootstrap_principal(presented_key, self._bootstrap())
        if admin is not None:
            return admin
        key_id = key_id_of(presented_key)
        if key_id is None:
            raise Unauthorized()
        return principal_for(presented_key, self.repository.get(key_id))

    def issue(
        self, scopes: frozenset[Scope], customers: frozenset[str] | None, name: str | None
    ) -> IssuedKey:
        new: NewKey = generate_key()
        record = ApiKey(
            key_id=new.key_id,
            key_hash=new.key_hash,
            scopes=scopes,
            customers=customers,
            name=name,
            created_at=self._clock(),
        )
        self.repository.create(record)
        return IssuedKey(record=record, key=new.secret_key)

    def revoke(self, key_id: str) -> ApiKey:
        record = self.repository.revoke(key_id, self._clock())
        self._cache = {d: entry for d, entry in self._cache.items() if entry[0].key_id != key_id}
        return record
