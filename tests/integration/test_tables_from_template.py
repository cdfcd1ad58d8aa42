"""Self-tests of credits_dev/local/tables.py: tables from a SAM template, on moto."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from credits_dev.local.tables import create_tables_from_template
from credits_dev.local.template import load_template

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage:
    Type: String
    Default: test
Globals:
  Function:
    Environment:
      Variables:
        TABLE_NAME: !Ref LedgerTable
Resources:
  LedgerTable:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "ledger-${Stage}"
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: pk, AttributeType: S}
        - {AttributeName: sk, AttributeType: S}
        - {AttributeName: account_id, AttributeType: S}
        - {AttributeName: seq, AttributeType: N}
      KeySchema:
        - {AttributeName: pk, KeyType: HASH}
        - {AttributeName: sk, KeyType: RANGE}
      GlobalSecondaryIndexes:
        - IndexName: ByAccount
          KeySchema:
            - {AttributeName: account_id, KeyType: HASH}
            - {AttributeName: seq, KeyType: RANGE}
          Projection:
            ProjectionType: INCLUDE
            NonKeyAttributes: [amount]
      StreamSpecification:
        StreamViewType: NEW_IMAGE
      TimeToLiveSpecification:
        AttributeName: ttl
        Enabled: true
  IdempotencyTable:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: idempotency
      AttributeDefinitions:
        - {AttributeName: id, AttributeType: S}
      KeySchema:
        - {AttributeName: id, KeyType: HASH}
      ProvisionedThroughput: {ReadCapacityUnits: 5, WriteCapacityUnits: 5}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Role: !GetAtt Role.Arn
      Policies:
        - DynamoDBCrudPolicy: {TableName: !Ref LedgerTable}
Outputs:
  Name:
    Value: !Join ["", [!Ref LedgerTable, "-x"]]
"""


@pytest.fixture
def template_path(tmp_path: Path) -> Path:
    """Overrides the conftest fixture: moto_tables reads this template."""
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    return path


def _keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def test_short_form_intrinsics_are_parsed(template_path: Path) -> None:
    t = load_template(template_path)
    res = t["Resources"]
    assert res["LedgerTable"]["Properties"]["TableName"] == {"Fn::Sub": "ledger-${Stage}"}
    assert res["Fn"]["Properties"]["Role"] == {"Fn::GetAtt": ["Role", "Arn"]}
    assert t["Globals"]["Function"]["Environment"]["Variables"]["TABLE_NAME"] == {"Ref": "LedgerTable"}
    assert t["Outputs"]["Name"]["Value"] == {"Fn::Join": ["", [{"Ref": "LedgerTable"}, "-x"]]}


def test_tables_created_with_keys_and_gsis(template_path: Path) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        names = create_tables_from_template(client, template_path)
        # intrinsic TableName -> logical id; literal kept; template order
        assert names == {"LedgerTable": "LedgerTable", "IdempotencyTable": "idempotency"}

        ledger = client.describe_table(TableName="LedgerTable")["Table"]
        assert _keys(ledger["KeySchema"]) == [("pk", "HASH"), ("sk", "RANGE")]
        assert ledger["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        (gsi,) = ledger["GlobalSecondaryIndexes"]
        assert gsi["IndexName"] == "ByAccount"
        assert _keys(gsi["KeySchema"]) == [("account_id", "HASH"), ("seq", "RANGE")]
        assert gsi["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["amount"]}
        attrs = {a["AttributeName"]: a["AttributeType"] for a in ledger["AttributeDefinitions"]}
        assert attrs == {"pk": "S", "sk": "S", "account_id": "S", "seq": "N"}
        assert ledger["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
        ttl = client.describe_time_to_live(TableName="LedgerTable")["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}

        idem = client.describe_table(TableName="idempotency")["Table"]
        assert _keys(idem["KeySchema"]) == [("id", "HASH")]
        assert idem["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_name_suffix(template_path: Path) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        names = create_tables_from_template(client, template_path, name_suffix="-abc")
        assert names == {"LedgerTable": "LedgerTable-abc", "IdempotencyTable": "idempotency-abc"}
        assert sorted(client.list_tables()["TableNames"]) == ["LedgerTable-abc", "idempotency-abc"]


def test_moto_tables_fixture(moto_tables, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert dict(moto_tables) == {"LedgerTable": "LedgerTable", "IdempotencyTable": "idempotency"}
    assert os.environ["TABLE_NAME"] == "LedgerTable"
    # code under test builds its own client from the environment and sees the mocked table
    table = boto3.resource("dynamodb").Table(os.environ["TABLE_NAME"])
    table.put_item(Item={"pk": "A#1", "sk": "META", "account_id": "1", "seq": 1})
    assert table.get_item(Key={"pk": "A#1", "sk": "META"})["Item"]["seq"] == 1
