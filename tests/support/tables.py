"""Create the DynamoDB tables declared in the SAM/CloudFormation template, on moto or DynamoDB Local.

    names = create_tables_from_template(client)                  # {"CreditsTable": "CreditsTable"}
    names = create_tables_from_template(client, name_suffix="-1a2b")

Handles ``AWS::DynamoDB::Table`` (KeySchema, AttributeDefinitions, GlobalSecondaryIndexes,
LocalSecondaryIndexes, StreamSpecification, TimeToLiveSpecification) and SAM's
``AWS::Serverless::SimpleTable``. Tables are always created PAY_PER_REQUEST. A literal ``TableName`` is
kept (plus the suffix); an absent or intrinsic one (``!Sub``, ``!Ref``, ...) becomes the logical id.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short-form tags into their long form.

    ``!Ref X`` -> ``{"Ref": "X"}``, ``!GetAtt A.B`` -> ``{"Fn::GetAtt": ["A", "B"]}``,
    ``!Sub ...`` -> ``{"Fn::Sub": ...}``, ``!Condition C`` -> ``{"Condition": "C"}``, any other ``!Fn``
    -> ``{"Fn::Fn": ...}``.
    """


def _construct_cfn_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover
        raise yaml.constructor.ConstructorError(
            None, None, f"unexpected node for !{tag_suffix}", node.start_mark
        )
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def load_template(template_path: str | Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template (short-form intrinsics allowed)."""
    path = _resolve(template_path)
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=CfnLoader)  # CfnLoader is a SafeLoader
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a CloudFormation template (top level is {type(data).__name__})")
    return data


def table_requests(template: Mapping[str, Any], name_suffix: str = "") -> dict[str, dict[str, Any]]:
    """CreateTable requests (plus a private ``_ttl`` key) per logical id, in template order."""
    requests: dict[str, dict[str, Any]] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if not isinstance(resource, Mapping):
            continue
        rtype = resource.get("Type")
        props = resource.get("Properties") or {}
        if rtype == "AWS::DynamoDB::Table":
            requests[logical_id] = _table_request(logical_id, props, name_suffix)
        elif rtype == "AWS::Serverless::SimpleTable":
            requests[logical_id] = _simple_table_request(logical_id, props, name_suffix)
    return requests


def create_tables_from_template(
    client: Any,
    template_path: str | Path = "template.yaml",
    *,
    name_suffix: str = "",
    wait: bool = True,
) -> dict[str, str]:
    """Create every DynamoDB table of the template; return ``{logical_id: table_name}`` in template order.

    ``template_path`` is taken as given when it exists, else relative to the project root.
    ``client`` is a boto3 DynamoDB client (moto or DynamoDB Local).
    """
    template = load_template(template_path)
    created: dict[str, str] = {}
    for logical_id, request in table_requests(template, name_suffix).items():
        ttl = request.pop("_ttl", None)
        client.create_table(**request)
        name = request["TableName"]
        created[logical_id] = name
        if wait:
            _wait_active(client, name)
        if ttl:
            _enable_ttl(client, name, ttl)
    return created


def delete_tables(client: Any, table_names: Iterable[str]) -> None:
    """Delete tables, ignoring the ones already gone (or an engine that errs)."""
    for name in table_names:
        with contextlib.suppress(Exception):  # best-effort cleanup
            client.delete_table(TableName=name)


# -- internals ---------------------------------------------------------------------------------------------
def _resolve(template_path: str | Path) -> Path:
    path = Path(template_path)
    if path.is_absolute() or path.exists():
        return path
    candidate = PROJECT_ROOT / path
    return candidate if candidate.exists() else path


def _literal(value: Any, what: str, logical_id: str) -> Any:
    if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)).startswith(("Ref", "Fn::")):
        raise ValueError(
            f"{logical_id}: {what} uses an intrinsic function ({value!r}); only literals are supported"
        )
    return value


def _table_name(logical_id: str, props: Mapping[str, Any], suffix: str) -> str:
    name = props.get("TableName")
    base = name if isinstance(name, str) else logical_id
    return f"{base}{suffix}"


def _key_schema(items: Any, logical_id: str) -> list[dict[str, str]]:
    return [
        {
            "AttributeName": _literal(k["AttributeName"], "KeySchema", logical_id),
            "KeyType": _literal(k["KeyType"], "KeySchema", logical_id),
        }
        for k in _literal(items, "KeySchema", logical_id)
    ]


def _projection(proj: Any) -> dict[str, Any]:
    proj = dict(proj or {"ProjectionType": "ALL"})
    out: dict[str, Any] = {"ProjectionType": proj.get("ProjectionType", "ALL")}
    if proj.get("NonKeyAttributes"):
        out["NonKeyAttributes"] = list(proj["NonKeyAttributes"])
    return out


def _table_request(logical_id: str, props: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TableName": _table_name(logical_id, props, suffix),
        "KeySchema": _key_schema(props["KeySchema"], logical_id),
        "AttributeDefinitions": [
            {"AttributeName": a["AttributeName"], "AttributeType": a["AttributeType"]}
            for a in _literal(props["AttributeDefinitions"], "AttributeDefinitions", logical_id)
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
    gsis = _literal(props.get("GlobalSecondaryIndexes") or [], "GlobalSecondaryIndexes", logical_id)
    if gsis:
        request["GlobalSecondaryIndexes"] = [
            {
                "IndexName": g["IndexName"],
                "KeySchema": _key_schema(g["KeySchema"], logical_id),
                "Projection": _projection(g.get("Projection")),
            }
            for g in gsis
        ]
    lsis = _literal(props.get("LocalSecondaryIndexes") or [], "LocalSecondaryIndexes", logical_id)
    if lsis:
        request["LocalSecondaryIndexes"] = [
            {
                "IndexName": i["IndexName"],
                "KeySchema": _key_schema(i["KeySchema"], logical_id),
                "Projection": _projection(i.get("Projection")),
            }
            for i in lsis
        ]
    stream = props.get("StreamSpecification")
    if isinstance(stream, Mapping) and isinstance(stream.get("StreamViewType"), str):
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    ttl = props.get("TimeToLiveSpecification")
    if isinstance(ttl, Mapping) and ttl.get("Enabled") in (True, "true", "True") and ttl.get("AttributeName"):
        request["_ttl"] = ttl["AttributeName"]
    return request


def _simple_table_request(logical_id: str, props: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    pk = props.get("PrimaryKey") or {"Name": "id", "Type": "String"}
    type_code = {"String": "S", "Number": "N", "Binary": "B"}[pk.get("Type", "String")]
    return {
        "TableName": _table_name(logical_id, props, suffix),
        "KeySchema": [{"AttributeName": pk["Name"], "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": pk["Name"], "AttributeType": type_code}],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _wait_active(client: Any, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = client.describe_table(TableName=name)["Table"].get("TableStatus")
        if status == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {name} still {status} after {timeout}s")
        time.sleep(0.1)


def _enable_ttl(client: Any, name: str, attribute: str) -> None:
    with contextlib.suppress(Exception):  # engines without TTL support: the table is still usable
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"AttributeName": attribute, "Enabled": True}
        )
