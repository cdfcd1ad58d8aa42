"""What a function really touches in the table, checked against its role's ``dynamodb:LeadingKeys``.

IAM conditions are not enforced by moto or DynamoDB Local, so a role whose ``LeadingKeys`` miss a prefix the
code uses would only fail in AWS. ``record_keys`` hooks the DynamoDB clients and records every partition key
value of every item operation (indexes excluded: ``LeadingKeys`` on the table's actions do not apply to index
queries); ``leading_key_patterns`` reads the role's patterns from template.yaml.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from credits_dev.local.template import load_yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


def _table_statements(role: str) -> list[dict[str, Any]]:
    template = load_yaml(TEMPLATE)
    return [
        statement
        for policy in template["Resources"][role]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if statement.get("Resource") == {"Fn::GetAtt": ["CreditsTable", "Arn"]}
    ]


def leading_key_patterns(role: str) -> list[str]:
    """The ``ForAllValues:StringLike dynamodb:LeadingKeys`` patterns of the role's table statement."""
    patterns: list[str] = []
    for statement in _table_statements(role):
        condition = statement.get("Condition", {}).get("ForAllValues:StringLike", {})
        patterns += condition.get("dynamodb:LeadingKeys", [])
    return patterns


# Operations authorized per item: a transaction needs the item actions of what it does.
_ITEM_ACTIONS = {"TransactWriteItems": ("PutItem", "UpdateItem"), "TransactGetItems": ("GetItem",)}


def table_actions(role: str) -> set[str]:
    """The DynamoDB operations the role allows on the table itself (``dynamodb:`` stripped)."""
    actions: set[str] = set()
    for statement in _table_statements(role):
        listed = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        actions |= {a.removeprefix("dynamodb:") for a in listed}
    return actions


def _partition_keys(operation: str, params: dict[str, Any]) -> Iterator[str]:
    def pk(item: dict[str, Any] | None) -> Iterator[str]:
        if item and "pk" in item:
            yield item["pk"]["S"]

    if operation in ("GetItem", "DeleteItem", "UpdateItem"):
        yield from pk(params.get("Key"))
    elif operation == "PutItem":
        yield from pk(params.get("Item"))
    elif operation == "BatchGetItem":
        for request in params.get("RequestItems", {}).values():
            for key in request.get("Keys", []):
                yield from pk(key)
    elif operation == "BatchWriteItem":
        for requests in params.get("RequestItems", {}).values():
            for request in requests:
                yield from pk(request.get("PutRequest", {}).get("Item"))
                yield from pk(request.get("DeleteRequest", {}).get("Key"))
    elif operation in ("TransactWriteItems", "TransactGetItems"):
        for action in params.get("TransactItems", []):
            for kind, body in action.items():
                yield from pk(body.get("Item") if kind == "Put" else body.get("Key"))
    elif operation == "Query" and not params.get("IndexName"):
        for value in params.get("ExpressionAttributeValues", {}).values():
            if "S" in value and "#" in value["S"]:
                yield value["S"]


class KeyRecorder:
    def __init__(self) -> None:
        self.keys: set[tuple[str, str]] = set()
        self.on = False

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.on:
            self.keys.update((model.name, key) for key in _partition_keys(model.name, params))

    def outside(self, patterns: list[str]) -> list[tuple[str, str]]:
        return sorted(
            (op, key) for op, key in self.keys if not any(fnmatch.fnmatchcase(key, p) for p in patterns)
        )

    def unallowed_operations(self, allowed: set[str]) -> list[str]:
        """Operations used on the table that the role does not allow (transactions by their item actions)."""
        used = {op for op, _ in self.keys}
        return sorted(op for op in used if not set(_ITEM_ACTIONS.get(op, (op,))) & allowed)

    def check(self, role: str) -> None:
        """Every operation is one the role allows and, when its table statement has LeadingKeys, every key."""
        assert self.keys, "nothing recorded: the hook saw no DynamoDB call"
        patterns = leading_key_patterns(role)
        if patterns:
            assert self.outside(patterns) == [], f"{role} LeadingKeys do not allow these keys"
        assert self.unallowed_operations(table_actions(role)) == [], f"{role} does not allow these actions"


@contextlib.contextmanager
def record_keys(*clients: Any) -> Iterator[KeyRecorder]:
    """Record partition keys on every given client (and the functions' shared client) inside the block."""
    from credits_ledger.dal.client import dynamodb_client

    recorder = KeyRecorder()
    hooked = {id(c): c for c in (*clients, dynamodb_client())}
    for client in hooked.values():
        client.meta.events.register("provide-client-params.dynamodb.*", recorder)
    recorder.on = True
    try:
        yield recorder
    finally:
        recorder.on = False
        for client in hooked.values():
            client.meta.events.unregister("provide-client-params.dynamodb.*", recorder)
