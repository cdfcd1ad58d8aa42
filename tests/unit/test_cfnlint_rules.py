"""The custom cfn-lint rules of tools/cfnlint_rules: each fires on a small bad template and stays quiet on a
good one; the project's template.yaml passes all of them.

cfn-lint lives in .venv-tools (``make tools``) and runs in a subprocess, once for all templates of this
module. Skipped only when .venv-tools is absent and CI is not set.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CFN_LINT = ROOT / ".venv-tools" / "bin" / "cfn-lint"
RULES_DIR = ROOT / "tools" / "cfnlint_rules"
CUSTOM_PREFIX = "E91"


def _role(table: bool = True) -> dict[str, Any]:
    statements: list[dict[str, Any]] = [
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": {"Fn::GetAtt": ["JobLogGroup", "Arn"]},
        },
        {
            "Sid": "XRay",
            "Effect": "Allow",
            "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
            "Resource": "*",
        },
        {
            "Sid": "Dlq",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": ["JobDlq", "Arn"]},
        },
    ]
    if table:
        statements.insert(
            0,
            {
                "Sid": "Table",
                "Effect": "Allow",
                "Action": ["dynamodb:GetItem", "dynamodb:PutItem"],
                "Resource": {"Fn::GetAtt": ["Table", "Arn"]},
            },
        )
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                {
                    "PolicyName": "job",
                    "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
                }
            ],
        },
    }


def _alarm(namespace: str, metric: str, dimension: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmActions": [{"Ref": "AlarmTopic"}],
            "Namespace": namespace,
            "MetricName": metric,
            "Dimensions": [{"Name": dimension, "Value": value}],
            "Statistic": "Sum",
            "Period": 300,
            "EvaluationPeriods": 1,
            "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        },
    }


GOOD: dict[str, Any] = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Transform": "AWS::Serverless-2016-10-31",
    "Globals": {"Function": {"Runtime": "python3.13", "Tracing": "Active", "Timeout": 10}},
    "Resources": {
        "Table": {
            "Type": "AWS::DynamoDB::Table",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "DeletionProtectionEnabled": True,
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "SSESpecification": {"SSEEnabled": True},
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            },
        },
        "AlarmTopic": {"Type": "AWS::SNS::Topic", "Properties": {"KmsMasterKeyId": "alias/alarm-topic"}},
        "Api": {
            "Type": "AWS::Serverless::HttpApi",
            "Properties": {"DefaultRouteSettings": {"ThrottlingBurstLimit": 50, "ThrottlingRateLimit": 100}},
        },
        "JobFunction": {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "InlineCode": "def handler(event, context):\n    return None\n",
                "Handler": "index.handler",
                "Role": {"Fn::GetAtt": ["JobRole", "Arn"]},
                "LoggingConfig": {"LogGroup": {"Ref": "JobLogGroup"}},
                "Environment": {"Variables": {"WEBHOOK_SECRET_PARAMETER": "/x/secret", "TABLE_NAME": "t"}},
                "Events": {
                    "Nightly": {
                        "Type": "ScheduleV2",
                        "Properties": {
                            "ScheduleExpression": "cron(0 3 * * ? *)",
                            "DeadLetterConfig": {"Arn": {"Fn::GetAtt": ["JobDlq", "Arn"]}},
                        },
                    },
                    "Http": {
                        "Type": "HttpApi",
                        "Properties": {"ApiId": {"Ref": "Api"}, "Method": "GET", "Path": "/job"},
                    },
                },
            },
        },
        "JobRole": _role(),
        "JobLogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": 30}},
        "JobDlq": {"Type": "AWS::SQS::Queue", "Properties": {"MessageRetentionPeriod": 1209600}},
        "JobDlqAlarm": _alarm(
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            "QueueName",
            {"Fn::GetAtt": ["JobDlq", "QueueName"]},
        ),
        "JobErrorsAlarm": _alarm("AWS/Lambda", "Errors", "FunctionName", {"Ref": "JobFunction"}),
        "JobThrottlesAlarm": _alarm("AWS/Lambda", "Throttles", "FunctionName", {"Ref": "JobFunction"}),
    },
}

Mutation = Callable[[dict[str, Any]], None]


def _resources(t: dict[str, Any]) -> dict[str, Any]:
    return t["Resources"]


def _job(t: dict[str, Any]) -> dict[str, Any]:
    return t["Resources"]["JobFunction"]["Properties"]


def _statements(t: dict[str, Any]) -> list[dict[str, Any]]:
    return t["Resources"]["JobRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def _second_function_sharing_the_role(t: dict[str, Any]) -> None:
    other = copy.deepcopy(t["Resources"]["JobFunction"])
    del other["Properties"]["Events"]
    t["Resources"]["OtherFunction"] = other
    for metric in ("Errors", "Throttles"):
        t["Resources"][f"Other{metric}Alarm"] = _alarm(
            "AWS/Lambda", metric, "FunctionName", {"Ref": "OtherFunction"}
        )


def _stream_without_on_failure(t: dict[str, Any]) -> None:
    t["Resources"]["Table"]["Properties"]["StreamSpecification"] = {"StreamViewType": "NEW_IMAGE"}
    _job(t)["Events"]["Stream"] = {
        "Type": "DynamoDB",
        "Properties": {"Stream": {"Fn::GetAtt": ["Table", "StreamArn"]}, "StartingPosition": "LATEST"},
    }


def _sqs_source_without_redrive(t: dict[str, Any]) -> None:
    t["Resources"]["Work"] = {"Type": "AWS::SQS::Queue"}
    _job(t)["Events"]["Work"] = {"Type": "SQS", "Properties": {"Queue": {"Fn::GetAtt": ["Work", "Arn"]}}}


def _webhook_route(t: dict[str, Any]) -> None:
    _job(t)["Events"]["Http"]["Properties"].update(Method="POST", Path="/v1/webhooks/stripe")


def _sam_generated_dlq(t: dict[str, Any]) -> None:
    _job(t)["Events"]["Nightly"]["Properties"]["DeadLetterConfig"] = {"Type": "SQS"}


# (case id, custom rule expected to fire, mutation of GOOD)
BAD: list[tuple[str, str, Mutation]] = [
    ("no_role", "E9101", lambda t: _job(t).pop("Role")),
    ("role_not_in_template", "E9101", lambda t: _job(t).update(Role="arn:aws:iam::123456789012:role/x")),
    ("shared_role", "E9101", _second_function_sharing_the_role),
    (
        "sam_policy_template",
        "E9102",
        lambda t: _job(t).update(Policies=[{"DynamoDBCrudPolicy": {"TableName": "t"}}]),
    ),
    ("wildcard_action", "E9103", lambda t: _statements(t)[0].update(Action="dynamodb:*")),
    ("star_action", "E9103", lambda t: _statements(t)[0].update(Action="*")),
    ("star_resource", "E9103", lambda t: _statements(t)[0].update(Resource="*")),
    ("not_action", "E9103", lambda t: _statements(t)[0].update(NotAction="iam:*")),
    (
        "managed_policy",
        "E9103",
        lambda t: _resources(t)["JobRole"]["Properties"].update(
            ManagedPolicyArns=["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
        ),
    ),
    (
        "no_pitr",
        "E9104",
        lambda t: _resources(t)["Table"]["Properties"].pop("PointInTimeRecoverySpecification"),
    ),
    (
        "no_deletion_protection",
        "E9104",
        lambda t: _resources(t)["Table"]["Properties"].pop("DeletionProtectionEnabled"),
    ),
    ("no_sse", "E9104", lambda t: _resources(t)["Table"]["Properties"].pop("SSESpecification")),
    ("deletion_policy_delete", "E9104", lambda t: _resources(t)["Table"].update(DeletionPolicy="Delete")),
    ("no_update_replace_policy", "E9104", lambda t: _resources(t)["Table"].pop("UpdateReplacePolicy")),
    ("no_log_group", "E9105", lambda t: _job(t).pop("LoggingConfig")),
    ("no_retention", "E9105", lambda t: _resources(t)["JobLogGroup"].update(Properties={})),
    ("tracing_passthrough", "E9106", lambda t: t["Globals"]["Function"].update(Tracing="PassThrough")),
    ("no_tracing", "E9106", lambda t: t["Globals"]["Function"].pop("Tracing")),
    (
        "schedule_without_dlq",
        "E9107",
        lambda t: _job(t)["Events"]["Nightly"]["Properties"].pop("DeadLetterConfig"),
    ),
    ("stream_without_on_failure", "E9107", _stream_without_on_failure),
    ("sqs_source_without_redrive", "E9107", _sqs_source_without_redrive),
    ("dlq_without_alarm", "E9108", lambda t: _resources(t).pop("JobDlqAlarm")),
    ("sam_generated_dlq", "E9108", _sam_generated_dlq),
    ("api_without_throttling", "E9109", lambda t: _resources(t)["Api"].update(Properties={})),
    ("implicit_http_api", "E9109", lambda t: _job(t)["Events"]["Http"]["Properties"].pop("ApiId")),
    (
        "secret_in_env",
        "E9110",
        lambda t: _job(t)["Environment"]["Variables"].update(STRIPE_WEBHOOK_SECRET="from-somewhere"),
    ),
    (
        "resolved_secret_in_env",
        "E9110",
        lambda t: _job(t)["Environment"]["Variables"].update(
            SIGNING_PARAMETER="{{resolve:ssm-secure:/credits/stripe-webhook-secret}}"
        ),
    ),
    (
        "literal_stripe_secret",
        "E9110",
        lambda t: _job(t)["Environment"]["Variables"].update(SOMETHING="whsec_" + "abcdefgh12345678"),
    ),
    ("unencrypted_topic", "E9112", lambda t: _resources(t)["AlarmTopic"].pop("Properties")),
    ("webhook_without_reserved_concurrency", "E9113", _webhook_route),
    ("no_errors_alarm", "E9111", lambda t: _resources(t).pop("JobErrorsAlarm")),
    ("no_throttles_alarm", "E9111", lambda t: _resources(t).pop("JobThrottlesAlarm")),
    (
        "alarm_without_action",
        "E9111",
        lambda t: _resources(t)["JobDlqAlarm"]["Properties"].pop("AlarmActions"),
    ),
]


def _bad_template(mutation: Mutation) -> dict[str, Any]:
    template = copy.deepcopy(GOOD)
    mutation(template)
    return template


@pytest.fixture(scope="module")
def lint_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """cfn-lint's JSON findings per template name: "good", every BAD case, and "project" (template.yaml)."""
    if not CFN_LINT.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CFN_LINT} missing in CI: run `make tools`")
        pytest.skip("cfn-lint not installed (.venv-tools absent): run `make tools`")
    folder = tmp_path_factory.mktemp("cfnlint")
    files = {"good": folder / "good.json"}
    files["good"].write_text(json.dumps(GOOD, indent=1))
    for case, _, mutation in BAD:
        files[case] = folder / f"{case}.json"
        files[case].write_text(json.dumps(_bad_template(mutation), indent=1))
    files["project"] = ROOT / "template.yaml"
    env = {k: v for k, v in os.environ.items() if k != "AWS_PROFILE"} | {"AWS_DEFAULT_REGION": "us-east-1"}
    completed = subprocess.run(
        [
            str(CFN_LINT),
            "--format",
            "json",
            "--append-rules",
            str(RULES_DIR),
            "--",
            *map(str, files.values()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert completed.stdout.strip(), completed.stderr
    findings = json.loads(completed.stdout)
    by_file: dict[str, list[dict[str, Any]]] = {name: [] for name in files}
    names = {str(path.resolve()): name for name, path in files.items()}
    for finding in findings:
        by_file[names[str(Path(ROOT, finding["Filename"]).resolve())]].append(finding)
    return by_file


def _custom(findings: list[dict[str, Any]]) -> list[str]:
    return sorted({f["Rule"]["Id"] for f in findings if f["Rule"]["Id"].startswith(CUSTOM_PREFIX)})


def test_good_template_passes_every_custom_rule(lint_results: dict[str, list[dict[str, Any]]]) -> None:
    assert _custom(lint_results["good"]) == [], lint_results["good"]


def test_good_template_is_otherwise_clean(lint_results: dict[str, list[dict[str, Any]]]) -> None:
    # the fixtures must be valid templates, so a bad case fails for its own reason only
    assert lint_results["good"] == []


@pytest.mark.parametrize(
    ("case", "rule"), [(case, rule) for case, rule, _ in BAD], ids=[c for c, _, _ in BAD]
)
def test_rule_fires_on_bad_template(
    lint_results: dict[str, list[dict[str, Any]]], case: str, rule: str
) -> None:
    assert _custom(lint_results[case]) == [rule], [f["Message"] for f in lint_results[case]]


def test_every_custom_rule_is_exercised() -> None:
    source = (RULES_DIR / "credits_rules.py").read_text()
    declared = {line.split('"')[1] for line in source.splitlines() if line.strip().startswith('id = "E91')}
    assert declared == {rule for _, rule, _ in BAD}


def test_project_template_passes_the_custom_rules(lint_results: dict[str, list[dict[str, Any]]]) -> None:
    assert _custom(lint_results["project"]) == [], [
        f"{f['Rule']['Id']} {f['Message']}" for f in lint_results["project"]
    ]
