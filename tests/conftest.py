"""Shared pytest fixtures: offline AWS environment, moto tables, DynamoDB Local.

Fixtures
--------
aws_env (autouse)        dummy credentials, region us-east-1, no profile / config files / endpoint overrides.
template_path            Path of the SAM template the table fixtures read (project ``template.yaml``);
                         override it in a test module to use another template.
moto_tables              ``Tables`` (a dict ``{logical_id: table_name}``) created inside ``moto.mock_aws()``;
                         sets ``TABLE_NAME`` to the first table's name. ``.client`` is a boto3 client.
java_executable (session) path of Java 17+ (skips when absent, fails when absent and CI is set).
dynamodb_local (session) endpoint URL (str) of one DynamoDB Local server for the whole run.
dynamodb_local_server    the ``DynamoDBLocal`` object behind it (session).
local_tables             ``Tables`` created on DynamoDB Local with a unique suffix per test, deleted after;
                         sets ``TABLE_NAME`` and ``AWS_ENDPOINT_URL_DYNAMODB`` so code that builds its own
                         boto3 client reaches DynamoDB Local.
botocore_sleeps          list of botocore's retry backoff delays, recorded instead of slept.

Tests using ``dynamodb_local``/``local_tables``/``java_executable`` get the ``dynamodb_local`` marker automatically.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.endpoint
import pytest

from credits_dev.local.dynamodb_local import DynamoDBLocal, find_java, java_major_version
from credits_dev.local.tables import create_tables_from_template, delete_tables
from credits_dev.local.template import DEFAULT_TEMPLATE

REGION = "us-east-1"

# ---------------------------------------------------------------------------------------------------------
# Hypothesis profiles: "dev" (default: new random examples on every run, to find what CI has not seen) and
# "ci" (chosen when CI is set: derandomized, so a CI result is reproducible and a red build is a change's doing,
# not the luck of the draw); HYPOTHESIS_PROFILE overrides.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("dev", deadline=None)
    settings.register_profile(
        "ci", deadline=None, derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
except ImportError:  # pragma: no cover
    pass


class Tables(dict[str, str]):
    """``{logical_id: table_name}`` plus the client and endpoint the tables live on."""

    client: Any
    endpoint_url: str | None

    def __init__(self, mapping: dict[str, str], client: Any, endpoint_url: str | None = None) -> None:
        super().__init__(mapping)
        self.client = client
        self.endpoint_url = endpoint_url

    @property
    def first(self) -> str:
        """Name of the first table in template order (the one ``TABLE_NAME`` points at)."""
        return next(iter(self.values()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if {"dynamodb_local", "dynamodb_local_server", "local_tables", "java_executable"} & set(fixtures):
            item.add_marker(pytest.mark.dynamodb_local)


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test talks to real AWS: dummy credentials, us-east-1, no shared config or endpoint overrides."""
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    missing = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def template_path() -> Path:
    """The SAM template the table fixtures read; override in a module/conftest to use another one."""
    return DEFAULT_TEMPLATE


def _require_template(path: Path) -> Path:
    if not Path(path).is_file():
        pytest.fail(f"table fixtures need a SAM template, {path} does not exist", pytrace=False)
    return Path(path)


@pytest.fixture
def moto_tables(template_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tables]:
    """Tables of the template inside ``moto.mock_aws()``; ``TABLE_NAME`` = first table."""
    import boto3
    from moto import mock_aws

    path = _require_template(template_path)
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        mapping = create_tables_from_template(client, path)
        tables = Tables(mapping, client)
        if mapping:
            monkeypatch.setenv("TABLE_NAME", tables.first)
        yield tables


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def java_executable() -> str:
    """Path of Java 17+. Skips when Java is absent (fails instead when CI is set); fails on Java < 17."""
    java = find_java()
    if java is None:
        reason = "DynamoDB Local needs Java 17+: no `java` on PATH and no JAVA_HOME"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: not skipping)", pytrace=False)
        pytest.skip(reason)
    major = java_major_version(java)
    if major is not None and major < 17:
        pytest.fail(f"DynamoDB Local needs Java 17+, {java} is Java {major}", pytrace=False)
    return java


@pytest.fixture(scope="session")
def dynamodb_local_server(java_executable: str) -> Iterator[DynamoDBLocal]:
    """One DynamoDB Local (in memory, -sharedDb) for the session. Skips only when Java is absent."""
    server = DynamoDBLocal(java=java_executable)
    server.start()  # DynamoDBLocalError (e.g. jar missing: run `make node_modules`) fails the tests
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dynamodb_local(dynamodb_local_server: DynamoDBLocal) -> str:
    """Endpoint URL (``http://127.0.0.1:<port>``) of the session's DynamoDB Local."""
    return dynamodb_local_server.endpoint_url


@pytest.fixture
def local_tables(
    dynamodb_local_server: DynamoDBLocal, template_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Tables]:
    """Tables of the template on DynamoDB Local, names suffixed per test, deleted afterwards."""
    path = _require_template(template_path)
    client = dynamodb_local_server.client()
    suffix = f"-{uuid.uuid4().hex[:10]}"
    mapping = create_tables_from_template(client, path, name_suffix=suffix)
    tables = Tables(mapping, client, dynamodb_local_server.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local_server.endpoint_url)
    if mapping:
        monkeypatch.setenv("TABLE_NAME", tables.first)
    try:
        yield tables
    finally:
        delete_tables(client, mapping.values())


@pytest.fixture
def botocore_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry backoff (``time.sleep`` in botocore.endpoint) recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=slept.append))
    return slept
