"""Create the template's DynamoDB tables on the local engine when they are missing (never touches existing
ones: data under ``.local/dynamodb`` survives restarts)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from credits_dev.local.template import Table, TemplateError


def _literal(value: Any, what: str, table: str) -> Any:
    if isinstance(value, Mapping) and len(value) == 1 and str(next(iter(value))).startswith(("Ref", "Fn::")):
        raise TemplateError(f"{table}: {what} uses an intrinsic function; the local stack needs literals")
    return value


def _keys(items: Any, table: str) -> list[dict[str, str]]:
    return [
        {"AttributeName": str(k["AttributeName"]), "KeyType": str(k["KeyType"])}
        for k in _literal(items, "KeySchema", table)
    ]


def _projection(spec: Any) -> dict[str, Any]:
    spec = dict(spec or {"ProjectionType": "ALL"})
    out: dict[str, Any] = {"ProjectionType": spec.get("ProjectionType", "ALL")}
    if spec.get("NonKeyAttributes"):
        out["NonKeyAttributes"] = list(spec["NonKeyAttributes"])
    return out


def create_table_request(table: Table) -> tuple[dict[str, Any], str | None]:
    """(CreateTable arguments, TTL attribute or None). Always PAY_PER_REQUEST locally."""
    props = table.properties
    if table.simple:
        pk = props.get("PrimaryKey") or {"Name": "id", "Type": "String"}
        code = {"String": "S", "Number": "N", "Binary": "B"}[pk.get("Type", "String")]
        return (
            {
                "TableName": table.name,
                "KeySchema": [{"AttributeName": pk["Name"], "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": pk["Name"], "AttributeType": code}],
                "BillingMode": "PAY_PER_REQUEST",
            },
            None,
        )
    request: dict[str, Any] = {
        "TableName": table.name,
        "KeySchema": _keys(props["KeySchema"], table.logical_id),
        "AttributeDefinitions": [
            {"AttributeName": a["AttributeName"], "AttributeType": a["AttributeType"]}
            for a in _literal(props["AttributeDefinitions"], "AttributeDefinitions", table.logical_id)
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        indexes = _literal(props.get(key) or [], key, table.logical_id)
        if indexes:
            request[key] = [
                {
                    "IndexName": i["IndexName"],
                    "KeySchema": _keys(i["KeySchema"], table.logical_id),
                    "Projection": _projection(i.get("Projection")),
                }
                for i in indexes
            ]
    stream = props.get("StreamSpecification")
    if isinstance(stream, Mapping) and isinstance(stream.get("StreamViewType"), str):
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    ttl = props.get("TimeToLiveSpecification")
    ttl_attribute = None
    if isinstance(ttl, Mapping) and ttl.get("Enabled") in (True, "true", "True") and ttl.get("AttributeName"):
        ttl_attribute = str(ttl["AttributeName"])
    return request, ttl_attribute


def ensure_tables(client: Any, tables: Mapping[str, Table], log: Any = print) -> dict[str, str]:
    """Create each missing table; return ``{logical_id: "created" | "exists"}``."""
    existing: set[str] = set()
    for page in client.get_paginator("list_tables").paginate():
        existing.update(page.get("TableNames", []))
    result: dict[str, str] = {}
    for logical_id, table in tables.items():
        if table.name in existing:
            result[logical_id] = "exists"
            continue
        request, ttl = create_table_request(table)
        client.create_table(**request)
        _wait_active(client, table.name)
        if ttl:
            with contextlib.suppress(Exception):  # engines without TTL: the table still works
                client.update_time_to_live(
                    TableName=table.name, TimeToLiveSpecification={"AttributeName": ttl, "Enabled": True}
                )
        result[logical_id] = "created"
        log(f"created table {table.name} ({logical_id})")
    return result


def _wait_active(client: Any, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.describe_table(TableName=name)["Table"].get("TableStatus") != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {name} not ACTIVE after {timeout}s")
        time.sleep(0.1)
