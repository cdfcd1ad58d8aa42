"""Helpers of the HTTP API tests (no tests here): the handler invoked in-process as API Gateway (HTTP API,
payload v2) calls it, with the sample events of events/api/, on the moto tables of template.yaml."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.api import deps
from credits_ledger.api_keys import KeyService
from credits_ledger.ledger import Ledger
from credits_ledger.pricing import load_pricing
from tools.gen_openapi import load_api_app

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events" / "api"
ADMIN_KEY = "local-admin-key"  # the key the sample events carry; CREDITS_ADMIN_KEY in these tests
NO_KEY = object()


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text(encoding="utf-8"))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: dict[str, Any]

    @property
    def body(self) -> Any:
        text = self.raw.get("body")
        if not text:
            return None
        if self.raw.get("isBase64Encoded"):
            text = base64.b64decode(text).decode()
        return json.loads(text, parse_float=Decimal)

    @property
    def error(self) -> dict[str, Any]:
        body = self.body
        assert isinstance(body, dict) and set(body) == {"error"}, body
        return dict(body["error"])

    def fields(self) -> list[str]:
        return [d["field"] for d in self.error.get("details", [])]


class Api:
    """Calls ``lambda_handler`` with API Gateway HTTP API v2 events."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self._count = 0

    # ---- raw invocation ----------------------------------------------------------------------------------
    def invoke(self, event: dict[str, Any]) -> Reply:
        raw = self.module.lambda_handler(event, FakeLambdaContext("ApiFunction", timeout_s=10))
        headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
        return Reply(status=raw["statusCode"], headers=headers, raw=raw)

    def event(
        self,
        name: str,
        *,
        key: Any = ADMIN_KEY,
        body: Any = None,
        raw_body: str | None = None,
        path: str | None = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A sample event from events/api with overrides (``key=NO_KEY`` drops Authorization)."""
        event = copy.deepcopy(load_event(name))
        self._count += 1
        event["requestContext"]["requestId"] = f"req-{self._count:06d}"
        if key is NO_KEY:
            event["headers"].pop("authorization", None)
        else:
            event["headers"]["authorization"] = f"Bearer {key}"
        if body is not None:
            raw_body = json.dumps(body, default=str)
        if raw_body is not None:
            event["body"] = raw_body
            event["headers"].setdefault("content-type", "application/json")
        if path is not None:
            event["rawPath"] = path
            event["requestContext"]["http"]["path"] = path
        if query is not None:
            event["queryStringParameters"] = query
            event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
        if headers:
            event["headers"].update(headers)
        return event

    def call(self, name: str, **overrides: Any) -> Reply:
        return self.invoke(self.event(name, **overrides))

    # ---- the handler's dependencies -----------------------------------------------------------------------
    @staticmethod
    def ledger() -> Ledger:
        return deps.ledger()

    @staticmethod
    def key_service() -> KeyService:
        return deps.key_service()

    # ---- conveniences ------------------------------------------------------------------------------------
    def grant(self, customer: str, amount: str, key: str = ADMIN_KEY, **fields: Any) -> Reply:
        reply = self.call(
            "grant_create",
            key=key,
            body={"amount": amount, **fields},
            path=f"/v1/customers/{customer}/grants",
        )
        return reply

    def usage(self, key: str = ADMIN_KEY, **fields: Any) -> Reply:
        body = {"id": "evt_1", "customer": "cus_A", "meter": "api_call", "quantity": 1, **fields}
        return self.call("usage", key=key, body=body)

    def balance(self, customer: str, key: str = ADMIN_KEY) -> Reply:
        return self.call("balance", key=key, path=f"/v1/customers/{customer}/balance")

    def available(self, customer: str) -> str:
        reply = self.balance(customer)
        assert reply.status == 200, reply.raw
        return str(reply.body["available"])

    def transactions(self, customer: str, key: str = ADMIN_KEY, **query: str) -> Reply:
        return self.call("transactions", key=key, path=f"/v1/customers/{customer}/transactions", query=query)

    def grants(self, customer: str, key: str = ADMIN_KEY, **query: str) -> Reply:
        return self.call("grants_list", key=key, path=f"/v1/customers/{customer}/grants", query=query)

    def issue_key(self, scopes: list[str], customers: list[str] | None = None) -> str:
        body: dict[str, Any] = {"scopes": scopes, "name": "test"}
        if customers is not None:
            body["customers"] = customers
        reply = self.call("api_key_create", body=body)
        assert reply.status == 201, reply.raw
        return str(reply.body["key"])

    def ledger_snapshot(self, *customers: str) -> dict[str, Any]:
        """What a rejected request must not change: each account's state item and ledger length."""
        ledger = self.ledger()
        return {
            customer: (
                ledger.repository.state(customer, consistent=True),
                len(ledger.transactions(customer, 100).items),
            )
            for customer in customers
        }


PRICING = """
[meters.api_call]
credits_per_unit = "1"

[meters.storage_gb_hour]
credits_per_unit = "0.05"
"""


@pytest.fixture
def api(moto_tables: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Api]:
    """The API handler on fresh moto tables, with the bootstrap admin key of the sample events and the
    contract's two meters (api_call: 1 credit per unit, storage_gb_hour: 0.05)."""
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(PRICING, encoding="utf-8")
    monkeypatch.setenv("CREDITS_PRICING_FILE", str(pricing))
    monkeypatch.setenv("CREDITS_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("ADMIN_KEY_PARAMETER", raising=False)
    module = load_api_app()
    _reset()
    yield Api(module)
    _reset()


def _reset() -> None:
    deps.reset()
    load_pricing.cache_clear()
