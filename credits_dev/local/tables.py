"""The template's DynamoDB tables on a local engine (DynamoDB Local or moto): the one reader of their
definitions, for the local stack, the tests and ``make bench``.

    ensure_tables(client, model.tables)                          # local stack: create the missing ones
    names = create_tables_from_template(client)                  # {"CreditsTable": "CreditsTable"}
    names = create_tables_from_template(client, name_suffix="-1a2b")

Handles ``AWS::DynamoDB::Table`` (KeySchema, AttributeDefinitions, GlobalSecondaryIndexes,
LocalSecondaryIndexes, StreamSpecification, TimeToLiveSpecification) and SAM's
``AWS::Serverless::SimpleTable``. Tables are always created PAY_PER_REQUEST. A literal ``TableName`` is
kept (plus the suffix); an absent or intrinsic one (``!Sub``, ``!Ref``, ...) becomes the logical id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from credits_dev.local.template import DEFAULT_TEMPLATE, Table, TemplateError, load_template, read_tables


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


def table_requests(template: Mapping[str, Any], name_suffix: str = "") -> dict[str, dict[str, Any]]:
    """CreateTable requests (plus a private ``_ttl`` key) per logical id, in template order."""
    requests: dict[str, dict[str, Any]] = {}
    for logical_id, table in read_tables(template).items():
        request, ttl = create_table_request(dataclasses.replace(table, name=table.name + name_suffix))
        requests[logical_id] = {**request, "_ttl": ttl} if ttl else request
    return requests


def create_tables_from_template(
    client: Any,
    template_path: str | Path = DEFAULT_TEMPLATE,
    *,
    name_suffix: str = "",
    wait: bool = True,
) -> dict[str, str]:
    """Create every DynamoDB table of the template; return ``{logical_id: table_name}`` in template order.

    ``template_path`` is taken as given when it exists, else relative to the project root.
    ``client`` is a boto3 DynamoDB client (moto or DynamoDB Local).
    """
    created: dict[str, str] = {}
    for logical_id, request in table_requests(load_template(template_path), name_suffix).items():
        ttl = request.pop("_ttl", None)
        client.create_table(**request)
        created[logical_id] = request["TableName"]
        if wait:
            _wait_active(client, request["TableName"])
        if ttl:
            _enable_ttl(client, request["TableName"], ttl)
    return created


def delete_tables(client: Any, table_names: Iterable[str]) -> None:
    """Delete tables, ignoring the ones already gone (or an engine that errs)."""
    for name in table_names:
        with contextlib.suppress(Exception):  # best-effort cleanup
            client.delete_table(TableName=name)


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
            _enable_ttl(client, table.name, ttl)
        result[logical_id] = "created"
        log(f"created table {table.name} ({logical_id})")
    return result


def _wait_active(client: Any, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.describe_table(TableName=name)["Table"].get("TableStatus") != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {name} not ACTIVE after {timeout}s")
        time.sleep(0.1)


def _enable_ttl(client: Any, name: str, attribute: str) -> None:
    with contextlib.suppress(Exception):  # engines without TTL support: the table is still usable
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"AttributeName": attribute, "Enabled": True}
        )
