"""ApiKeyRepository: API key records (hash, scopes, accounts), one item per key.

    api key    pk=APIKEY#<key id>  sk=APIKEY

The key itself is never stored, only its SHA-256. Writes state their invariant as a condition: a new key id
is unused (attribute_not_exists; a re-sent put recognizes its own item by the hash), a revoked key exists
(attribute_exists; unknown ids are ApiKeyNotFound).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.auth import ApiKey, ApiKeyExists, ApiKeyNotFound, Scope
from credits_ledger.dal import items as it
from credits_ledger.dal.client import TableRepository, failed_condition

API_KEY_SK = "APIKEY"


def api_key_key(key_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"APIKEY#{key_id}", "sk": API_KEY_SK})


def api_key_to_item(key: ApiKey) -> it.Item:
    return {
        "pk": f"APIKEY#{key.key_id}",
        "sk": API_KEY_SK,
        "key_id": key.key_id,
        "key_hash": key.key_hash,
        "scopes": sorted(s.value for s in key.scopes),
        "customers": sorted(key.customers) if key.customers is not None else None,
        "name": key.name,
        "created_at": it.iso(key.created_at),
        "revoked_at": it.iso(key.revoked_at) if key.revoked_at else None,
    }


def api_key_from_item(item: it.Item) -> ApiKey:
    customers = item.get("customers")
    return ApiKey(
        key_id=item["key_id"],
        key_hash=item["key_hash"],
        scopes=frozenset(Scope(s) for s in item.get("scopes", [])),
        customers=frozenset(customers) if customers is not None else None,
        name=item.get("name"),
        created_at=it.parse_iso(item["created_at"]),
        revoked_at=it.parse_iso(item["revoked_at"]) if item.get("revoked_at") else None,
    )


class ApiKeyRepository(TableRepository):
    def get(self, key_id: str) -> ApiKey | None:
        # Strongly consistent: a revocation is seen by the very next uncached lookup.
        response = self._client.get_item(TableName=self._table, Key=api_key_key(key_id), ConsistentRead=True)
        raw = response.get("Item")
        return api_key_from_item(it.from_dynamo(raw)) if raw else None

    def create(self, key: ApiKey) -> None:
        """Store a new key. Invariant: its id is unused. A put whose answer was lost is sent again by botocore
        and fails that condition on the item it wrote itself: a stored key with this key's hash is this
        write (the hash is of a fresh random secret), anything else under the id is ApiKeyExists."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item=it.to_dynamo(api_key_to_item(key)),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
            stored = self.get(key.key_id)
            if stored is None or stored.key_hash != key.key_hash:
                raise ApiKeyExists(key.key_id) from exc

    def revoke(self, key_id: str, at: datetime) -> ApiKey:
        """Mark a key revoked (the first revocation time is kept); ApiKeyNotFound for an unknown id."""
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=api_key_key(key_id),
                UpdateExpression="SET revoked_at = if_not_exists(revoked_at, :at)",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":at": {"S": it.iso(at)}},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if failed_condition(exc):
                raise ApiKeyNotFound(key_id) from exc
            raise
        return api_key_from_item(it.from_dynamo(response["Attributes"]))
