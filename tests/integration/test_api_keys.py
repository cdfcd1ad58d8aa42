"""API keys through the handler: issued once, stored as a hash, scoped, revoked at once; bootstrap key."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

from credits_ledger import observability
from credits_ledger.api import deps
from credits_ledger.api_keys import CACHE_SECONDS, KeyService
from credits_ledger.auth import ApiKeyExists, Scope, Unauthorized
from tests.integration.test_api_support import NO_KEY, Api
from tests.support.faults import resend_after_commit
from tools.gen_openapi import APP

pytest_plugins = ["tests.integration.test_api_support"]


def _table_items(api: Api) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb", region_name="us-east-1")
    return client.scan(TableName=api.ledger().repository._table)["Items"]


def test_sample_key_creation_returns_the_key_once_and_stores_only_its_hash(api: Api) -> None:
    # When the sample key is created
    reply = api.call("api_key_create")
    # Then the answer shows the key, in our format, with what was asked
    assert reply.status == 201
    body = reply.body
    key = body["key"]
    assert key.startswith(f"ck_{body['id']}_") and len(key) > 50
    assert body["scopes"] == ["balance:read", "usage:write"]
    assert body["customers"] == ["cus_NffrFeUfNV2Hib"]
    assert body["name"] == "search backend"
    assert body["created_at"].endswith("Z")
    # And the table holds its hash, never the key
    dump = json.dumps(_table_items(api))
    assert key not in dump
    assert key.split("_", 2)[2] not in dump
    assert hashlib.sha256(key.encode()).hexdigest() in dump


def test_a_new_key_works_within_its_scopes_and_accounts(api: Api) -> None:
    api.grant("cus_A", "10")
    key = api.issue_key(["usage:write"], customers=["cus_A"])
    assert api.usage(key=key).status == 201
    assert api.usage(key=key, id="e2", customer="cus_B").status == 403
    assert api.balance("cus_A", key=key).status == 403  # no balance:read
    assert api.available("cus_A") == "9"


def test_an_admin_key_issued_by_the_api_can_do_everything(api: Api) -> None:
    admin = api.issue_key(["admin"])
    assert api.grant("cus_A", "3", key=admin).status == 201
    assert api.usage(key=admin).status == 201
    assert api.balance("cus_A", key=admin).body["available"] == "2"
    assert api.call("api_key_create", key=admin).status == 201


def test_revoking_a_key_stops_it_at_once(api: Api) -> None:
    # Given a key that was just used (so it is in the verification cache)
    api.grant("cus_A", "10")
    created = api.call("api_key_create", body={"scopes": ["balance:read"]}).body
    assert api.balance("cus_A", key=created["key"]).status == 200
    # When it is revoked
    reply = api.call("api_key_revoke", path=f"/v1/api-keys/{created['id']}")
    # Then 204, and the key is refused at once
    assert reply.status == 204
    assert reply.body is None
    denied = api.balance("cus_A", key=created["key"])
    assert denied.status == 401
    assert denied.error["code"] == "unauthorized"
    # And revoking it again is still 204
    assert api.call("api_key_revoke", path=f"/v1/api-keys/{created['id']}").status == 204


def test_revoking_an_unknown_key_is_404(api: Api) -> None:
    reply = api.call("api_key_revoke")
    assert reply.status == 404
    assert reply.error["code"] == "not_found"


def test_a_revocation_elsewhere_is_seen_within_the_cache_time(api: Api) -> None:
    # Given a key verified by one Lambda instance (with a controllable clock)
    key = api.issue_key(["balance:read"])
    now = [1000.0]
    service = KeyService(api.key_service().repository, bootstrap=lambda: None, monotonic=lambda: now[0])
    assert service.verify(key).key_id == key.split("_")[1]
    # When another instance revokes it
    api.call("api_key_revoke", path=f"/v1/api-keys/{key.split('_')[1]}")
    # Then this instance may still accept it for at most CACHE_SECONDS, and refuses it after
    now[0] += CACHE_SECONDS - 0.1
    assert service.verify(key).key_id == key.split("_")[1]
    now[0] += 0.2
    with pytest.raises(Unauthorized):
        service.verify(key)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic bG9jYWw6a2V5",
        "Bearer wrong-key",
        "Bearer ck_0123456789abcdef_notarealsecretnotarealsecretnotarealsecret0",
        "Bearer ck_zz_x",
    ],
)
def test_missing_or_wrong_keys_are_401(api: Api, authorization: str | None) -> None:
    api.grant("cus_A", "5")
    event = api.event("balance", key=NO_KEY, path="/v1/customers/cus_A/balance")
    if authorization is not None:
        event["headers"]["authorization"] = authorization
    reply = api.invoke(event)
    assert reply.status == 401
    assert reply.error["code"] == "unauthorized"


def test_a_key_with_a_right_id_and_a_wrong_secret_is_401(api: Api) -> None:
    key = api.issue_key(["balance:read"])
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert api.balance("cus_A", key=forged).status == 401


def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    event = api.event("balance")
    event["headers"]["authorization"] = "bearer local-admin-key"
    assert api.invoke(event).status == 200


def test_keys_are_managed_only_by_unrestricted_admin_keys(api: Api) -> None:
    usage_key = api.issue_key(["usage:write", "balance:read"])
    limited = api.issue_key(["usage:write"], customers=["cus_A"])
    assert api.call("api_key_create", key=usage_key).status == 403
    assert api.call("api_key_create", key=limited).status == 403
    victim = api.call("api_key_create", body={"scopes": ["balance:read"]}).body["id"]
    assert api.call("api_key_revoke", key=limited, path=f"/v1/api-keys/{victim}").status == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes.0"),
        ({"scopes": ["admin"], "customers": ["cus_A"]}, "customers"),
        ({"scopes": ["usage:write"], "customers": []}, "customers"),
        ({}, "scopes"),
    ],
)
def test_invalid_key_requests_are_422(api: Api, body: dict[str, Any], field: str) -> None:
    reply = api.call("api_key_create", body=body)
    assert reply.status == 422
    assert field in reply.fields()


def test_bootstrap_admin_key_from_an_ssm_securestring(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the bootstrap key in SSM (as in AWS) and not in the environment
    from aws_lambda_powertools.utilities import parameters

    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name="/credits/admin-api-key", Value="ssm-admin-key-0123456789", Type="SecureString"
    )
    monkeypatch.delenv("CREDITS_ADMIN_KEY")
    monkeypatch.setenv("ADMIN_KEY_PARAMETER", "/credits/admin-api-key")
    parameters.clear_caches()
    deps.key_service.cache_clear()
    try:
        # Then that key is an admin key, and the local one is not
        assert api.grant("cus_A", "5", key="ssm-admin-key-0123456789").status == 201
        assert api.balance("cus_A", key="local-admin-key").status == 401
    finally:
        parameters.clear_caches()


@pytest.mark.parametrize("weak", ["admin", "correcthorse", "a" * 64, "0123456789abcdef"])
def test_a_bootstrap_key_under_128_bits_is_refused(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, weak: str
) -> None:
    # Given a guessable bootstrap key stored in SSM
    from aws_lambda_powertools.utilities import parameters

    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name="/credits/admin-api-key", Value=weak, Type="SecureString", Overwrite=True
    )
    monkeypatch.delenv("CREDITS_ADMIN_KEY")
    monkeypatch.setenv("ADMIN_KEY_PARAMETER", "/credits/admin-api-key")
    parameters.clear_caches()
    deps.key_service.cache_clear()
    try:
        # Then it opens nothing
        assert api.balance("cus_A", key=weak).status == 401
    finally:
        parameters.clear_caches()


def test_key_strength_estimates() -> None:
    import secrets

    from credits_ledger.auth import MIN_BOOTSTRAP_KEY_BITS, key_strength_bits

    assert key_strength_bits(secrets.token_urlsafe(24)) >= MIN_BOOTSTRAP_KEY_BITS  # 32 random characters
    assert key_strength_bits(secrets.token_hex(16)) >= MIN_BOOTSTRAP_KEY_BITS
    for weak in ("local-admin-key", "a" * 200, "abababababababababababab", "ssm-admin"):
        assert key_strength_bits(weak) < MIN_BOOTSTRAP_KEY_BITS


def test_without_a_bootstrap_key_only_issued_keys_work(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDITS_ADMIN_KEY")
    assert api.balance("cus_A").status == 401


def test_a_key_creation_whose_answer_was_lost_still_answers_the_key(api: Api) -> None:
    # Given DynamoDB's answer to the key's put is lost after it committed (botocore sends the put again)
    resent = resend_after_commit(api.key_service().repository._client, "PutItem")
    # When a key is created
    reply = api.call("api_key_create", body={"scopes": ["admin"], "name": "ops"})
    # Then the re-sent put met the item it wrote itself: one key, shown to the caller, and it works
    assert resent == [1]
    assert reply.status == 201, reply.raw
    stored = [i for i in _table_items(api) if i["pk"]["S"].startswith("APIKEY#")]
    assert [i["key_id"]["S"] for i in stored] == [reply.body["id"]]
    assert api.grant("cus_A", "1", key=reply.body["key"]).status == 201


def test_a_new_key_whose_id_is_taken_by_another_key_is_refused(api: Api) -> None:
    repository = api.key_service().repository
    issued = api.key_service().issue(frozenset({Scope.ADMIN}), None, "first")
    other = replace(issued.record, key_hash=hashlib.sha256(b"another secret").hexdigest(), name="second")
    with pytest.raises(ApiKeyExists):
        repository.create(other)
    assert repository.get(issued.record.key_id) == issued.record


class _RecordingSegment(BaseSegment):
    """A trace segment that keeps what is put in it."""

    def __init__(self, recorded: list[Any]) -> None:
        self.recorded = recorded

    def close(self, end_time: int | None = None) -> None: ...
    def add_subsegment(self, subsegment: Any) -> None: ...
    def remove_subsegment(self, subsegment: Any) -> None: ...
    def put_annotation(self, key: str, value: Any) -> None: ...
    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None: ...

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        self.recorded.append((key, value))


class _RecordingProvider(BaseProvider):
    """Stands in for the X-Ray SDK under Powertools' own Tracer: records what its decorators hand to X-Ray."""

    def __init__(self) -> None:
        self.subsegments: list[str | None] = []
        self.recorded: list[Any] = []

    @contextmanager
    def in_subsegment(self, name: str | None = None, **kwargs: Any) -> Iterator[BaseSegment]:
        self.subsegments.append(name)
        yield _RecordingSegment(self.recorded)

    def in_subsegment_async(self, name: str | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def put_annotation(self, key: str, value: Any) -> None: ...
    def patch(self, modules: Any) -> None: ...
    def patch_all(self) -> None: ...

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        self.recorded.append((key, value))


def test_a_new_key_never_reaches_the_trace(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the API handler as inside Lambda with tracing on (template.yaml: Tracing Active)
    provider = _RecordingProvider()
    monkeypatch.setattr(
        observability,
        "tracer",
        Tracer(service="credits", provider=provider, auto_patch=False, disabled=False),
    )
    spec = importlib.util.spec_from_file_location("credits_api_app_traced", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        # When a key is created
        reply = Api(module).call("api_key_create", body={"scopes": ["balance:read"]})
    finally:
        Tracer._reset_config()
    # Then the handler was traced, but the key is in the answer only, not in what went to the trace
    assert reply.status == 201
    assert provider.subsegments == ["## lambda_handler"]
    assert reply.body["key"] not in json.dumps(provider.recorded, default=str)
