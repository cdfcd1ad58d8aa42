"""Self-tests of credits_dev/local/dynamodb_local.py: the real DynamoDB Local server."""

from __future__ import annotations

import os
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from credits_dev.local.dynamodb_local import DynamoDBLocal

pytestmark = pytest.mark.dynamodb_local


def test_server_answers_and_rejects_duplicate_conditional_put(dynamodb_local: str) -> None:
    assert dynamodb_local.startswith("http://127.0.0.1:")
    client = boto3.client("dynamodb", endpoint_url=dynamodb_local, region_name="us-east-1")
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        item = {"pk": {"S": "idem#1"}, "amount": {"N": "100"}}
        client.put_item(TableName=name, Item=item, ConditionExpression="attribute_not_exists(pk)")
        with pytest.raises(ClientError) as excinfo:
            client.put_item(TableName=name, Item=item, ConditionExpression="attribute_not_exists(pk)")
        assert excinfo.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
        # the modeled exception class matches too
        with pytest.raises(client.exceptions.ConditionalCheckFailedException):
            client.put_item(TableName=name, Item=item, ConditionExpression="attribute_not_exists(pk)")
    finally:
        client.delete_table(TableName=name)


def test_local_tables_fixture_uses_template_and_env(local_tables) -> None:
    assert local_tables, "template.yaml declares no DynamoDB table"
    assert os.environ["TABLE_NAME"] == local_tables.first
    assert os.environ["AWS_ENDPOINT_URL_DYNAMODB"] == local_tables.endpoint_url
    # a client built from the environment alone (as Lambda code does) reaches DynamoDB Local
    names = boto3.client("dynamodb").list_tables()["TableNames"]
    assert set(local_tables.values()) <= set(names)


def test_second_server_starts_and_stops_cleanly(tmp_path, java_executable: str) -> None:
    server = DynamoDBLocal(db_path=tmp_path / "db", java=java_executable)
    with server:
        assert server.running
        pid = server.process.pid
        server.client().list_tables()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
