"""The committed OpenAPI spec, the template's routes, the sample events and the code agree."""

from __future__ import annotations

import json
from typing import Any

import pytest

from credits_dev.local.template import load_template
from tests.integration.test_api_support import EVENTS, ROOT, load_event
from tools.gen_openapi import SPEC, render


def _template_routes() -> set[tuple[str, str]]:
    events = load_template()["Resources"]["ApiFunction"]["Properties"]["Events"]
    return {(e["Properties"]["Method"].upper(), e["Properties"]["Path"]) for e in events.values()}


def _spec_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def test_committed_spec_matches_the_code() -> None:
    # Regenerate with: python tools/gen_openapi.py
    assert SPEC.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: run tools/gen_openapi.py"
    )


def test_template_declares_exactly_the_routes_of_the_spec() -> None:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    assert _template_routes() == _spec_routes(spec)
    assert ("POST", "/v1/webhooks/stripe") not in _template_routes()


def test_there_is_a_sample_event_for_every_route() -> None:
    keys = {tuple(load_event(p.stem)["routeKey"].split(" ", 1)) for p in EVENTS.glob("*.json")}
    assert keys == _template_routes()


def test_every_route_but_health_requires_the_api_key() -> None:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    assert spec["security"] == [{"apiKey": []}]
    public = {path for path, ops in spec["paths"].items() for op in ops.values() if op.get("security") == []}
    assert public == {"/health"}


def test_every_error_response_is_the_contract_error_object() -> None:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    for ops in spec["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (
                        status,
                        op["operationId"],
                    )


def test_the_function_package_ships_the_pricing_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the function's code root as working directory (Lambda's /var/task) and no CREDITS_PRICING_FILE
    from credits_ledger.pricing import load_pricing, pricing_path

    shipped = ROOT / "functions" / "api" / "config" / "pricing.toml"
    assert shipped.read_bytes() == (ROOT / "config" / "pricing.toml").read_bytes()
    monkeypatch.delenv("CREDITS_PRICING_FILE", raising=False)
    monkeypatch.chdir(ROOT / "functions" / "api")
    # Then load_pricing finds the shipped copy and its meters
    load_pricing.cache_clear()
    try:
        assert pricing_path().resolve() == shipped.resolve()
        assert {"api_call", "storage_gb_hour"} <= set(load_pricing().meters)
    finally:
        load_pricing.cache_clear()


# ---- the document states what the API enforces --------------------------------------------------------------
def _schemas() -> dict[str, Any]:
    return dict(json.loads(SPEC.read_text())["components"]["schemas"])


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for branch in schema.get("anyOf", [schema]):
        found += _branches(branch) if "anyOf" in branch else [branch]
    return found


def test_positive_amounts_say_they_are_positive() -> None:
    # every request field the API refuses at <= 0 (usage quantity, grant amount, reservation credits, ...)
    positive = {
        (model, field): _branches(prop)
        for model, schema in _schemas().items()
        for field, prop in schema.get("properties", {}).items()
        if any(b.get("description", "").startswith("exact decimal > 0") for b in [prop, *_branches(prop)])
    }
    assert {("UsageRequest", "quantity"), ("GrantRequest", "amount")} <= set(positive)
    for where, branches in positive.items():
        number = next(b for b in branches if b.get("type") == "number")
        text = next(b for b in branches if b.get("type") == "string")
        assert number["exclusiveMinimum"] == 0, where
        assert text["maxLength"] == 40 and text["pattern"].startswith("^"), where


def test_the_admin_key_rule_is_in_the_schema() -> None:
    rule = _schemas()["ApiKeyRequest"]["not"]
    assert rule["required"] == ["scopes", "customers"]
    assert rule["properties"]["scopes"] == {"contains": {"const": "admin"}}


def test_no_content_responses_have_no_body() -> None:
    spec = json.loads(SPEC.read_text())
    no_content = [
        (path, method)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "204" in operation["responses"]
    ]
    assert no_content  # DELETE /v1/api-keys/{id} at least
    for path, method in no_content:
        assert "content" not in spec["paths"][path][method]["responses"]["204"], (path, method)
