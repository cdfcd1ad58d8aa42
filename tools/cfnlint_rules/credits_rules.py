"""Custom cfn-lint rules: what "production-grade" means for this project's SAM template.

Loaded with ``cfn-lint --append-rules tools/cfnlint_rules template.yaml`` (``make cfn-lint``). cfn-lint 1.x
lints SAM templates untransformed, with ``Globals`` merged into each resource, so these rules read
``AWS::Serverless::*`` resources as written (a ``Tracing`` in ``Globals`` counts for every function).

Every rule here is tested on a small good and a small bad template in ``tests/unit/test_cfnlint_rules.py``.
cfn-lint instantiates every ``CloudFormationLintRule`` subclass it finds in this module, so shared code is
plain functions, never a common base class.

| id    | rule |
| ----- | ---- |
| E9101 | every function has its own IAM role, defined in this template and used by no other function |
| E9102 | no SAM policy templates or generated roles (``Policies`` on a function, e.g. ``DynamoDBCrudPolicy``) |
| E9103 | IAM: no ``*`` in an action, no ``NotAction``/``NotResource``, no ``Resource: "*"`` but for actions that |
|       | have no resource-level permissions (X-Ray), no managed policies on a role |
| E9104 | DynamoDB tables: point-in-time recovery, deletion protection, SSE, ``DeletionPolicy`` and |
|       | ``UpdateReplacePolicy`` ``Retain`` (no ``AWS::Serverless::SimpleTable``) |
| E9105 | every function logs to an ``AWS::Logs::LogGroup`` of this template that has ``RetentionInDays`` |
| E9106 | every function has ``Tracing: Active`` |
| E9107 | every asynchronous event source has a DLQ or an on-failure destination |
| E9108 | every DLQ / on-failure queue has a CloudWatch alarm on ``ApproximateNumberOfMessagesVisible`` |
| E9109 | every HTTP API has route throttling limits, and no function event creates an implicit API |
| E9110 | no secret in plain text: secret-looking environment variables only name where the secret is; no |
|       | ``{{resolve:ssm-secure}}``/``{{resolve:secretsmanager}}`` in environment variables or Outputs; no |
|       | literal Stripe secret or AWS access key anywhere |
| E9111 | every function has an ``Errors`` and a ``Throttles`` alarm, and every alarm notifies someone |
| E9112 | every SNS topic is encrypted with a KMS key (``KmsMasterKeyId``) |
| E9113 | a function serving a webhook route (an HTTP API path with ``/webhooks/``) has |
|       | ``ReservedConcurrentExecutions``, so a flood on the other routes cannot starve it |
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

from cfnlint.rules import CloudFormationLintRule, RuleMatch

FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
TABLE_TYPES = ("AWS::DynamoDB::Table",)
POLICY_DOCUMENT_TYPES = ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy")

# Actions that have no resource-level permissions, so "Resource: *" is the only way to allow them.
STAR_RESOURCE_ACTIONS = frozenset({"xray:PutTraceSegments", "xray:PutTelemetryRecords"})

# SAM event types invoked asynchronously (the failure goes nowhere unless configured) ...
ASYNC_EVENT_TYPES = frozenset(
    {"Schedule", "ScheduleV2", "EventBridgeRule", "CloudWatchEvent", "SNS", "S3", "CloudWatchLogs", "IoTRule"}
)
# ... and the polled ones: streams take an on-failure destination, SQS a redrive policy on its queue.
STREAM_EVENT_TYPES = frozenset({"DynamoDB", "Kinesis", "MSK", "SelfManagedKafka", "DocumentDB"})
QUEUE_EVENT_TYPES = frozenset({"SQS"})

SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|CREDENTIAL|API_KEY|ADMIN_KEY|SIGNING_KEY")
SECRET_REFERENCE_SUFFIXES = ("_PARAMETER", "_PARAMETER_NAME", "_PARAM", "_ARN", "_SECRET_ID", "_NAME")
SECRET_LITERAL = re.compile(
    r"\b(?:whsec_|sk_live_|sk_test_|rk_live_|rk_test_)[A-Za-z0-9]{8,}|\bAKIA[0-9A-Z]{16}\b"
)
SECRET_RESOLVE = re.compile(r"\{\{resolve:(?:ssm-secure|secretsmanager):")


# ---- helpers ---------------------------------------------------------------------------------------------
def resources(cfn: Any, types: tuple[str, ...] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in (cfn.template.get("Resources") or {}).items():
        if isinstance(resource, dict) and (types is None or resource.get("Type") in types):
            yield name, resource


def properties(resource: dict[str, Any]) -> dict[str, Any]:
    props = resource.get("Properties")
    return props if isinstance(props, dict) else {}


def target(value: Any) -> str | None:
    """The logical id a ``Ref``/``GetAtt`` (or a ``Sub`` of a single ``${X...}``) points at, else None."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    ((key, arg),) = value.items()
    if key == "Ref" and isinstance(arg, str):
        return arg
    if key == "Fn::GetAtt":
        if isinstance(arg, list) and arg and isinstance(arg[0], str):
            return arg[0]
        if isinstance(arg, str):
            return arg.split(".", 1)[0]
    if key == "Fn::Sub" and isinstance(arg, str):
        found = re.fullmatch(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z.]+)?\}", arg)
        return found.group(1) if found else None
    return None


def resource_type(cfn: Any, logical_id: str | None) -> str | None:
    if logical_id is None:
        return None
    resource = (cfn.template.get("Resources") or {}).get(logical_id)
    return resource.get("Type") if isinstance(resource, dict) else None


def is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def strings(value: Any) -> Iterator[str]:
    """Every string literal inside ``value`` (through lists, dicts and intrinsic functions)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def function_events(resource: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    events = properties(resource).get("Events")
    if not isinstance(events, dict):
        return
    for name, event in events.items():
        if isinstance(event, dict):
            event_props = event.get("Properties")
            yield name, str(event.get("Type")), event_props if isinstance(event_props, dict) else {}


def function_has_failure_destination(resource: dict[str, Any]) -> bool:
    props = properties(resource)
    on_failure = dig(props, "EventInvokeConfig", "DestinationConfig", "OnFailure")
    return bool(on_failure) or bool(props.get("DeadLetterQueue"))


def _serverless_function_destinations(
    resource: dict[str, Any], props: dict[str, Any], base: list[str | int]
) -> Iterator[tuple[list[str | int], Any]]:
    on_failure = dig(props, "EventInvokeConfig", "DestinationConfig", "OnFailure")
    if isinstance(on_failure, dict) and on_failure.get("Type") in (None, "SQS"):
        yield [*base, "EventInvokeConfig"], on_failure.get("Destination")
    dlq = props.get("DeadLetterQueue")
    if isinstance(dlq, dict) and dlq.get("Type") == "SQS":
        yield [*base, "DeadLetterQueue"], dlq.get("TargetArn")
    for event_name, _, event_props in function_events(resource):
        path: list[str | int] = [*base, "Events", event_name, "Properties"]
        dead_letter = event_props.get("DeadLetterConfig")
        if isinstance(dead_letter, dict):
            yield [*path, "DeadLetterConfig"], dead_letter.get("Arn")
        destination = dig(event_props, "DestinationConfig", "OnFailure")
        if isinstance(destination, dict) and destination.get("Type") in (None, "SQS"):
            yield [*path, "DestinationConfig"], destination.get("Destination")


def failure_destinations(cfn: Any) -> Iterator[tuple[list[str | int], Any]]:
    """(path, value) of every place that names a DLQ or on-failure destination."""
    for name, resource in resources(cfn):
        kind, props = resource.get("Type"), properties(resource)
        base: list[str | int] = ["Resources", name, "Properties"]
        if kind == "AWS::Serverless::Function":
            yield from _serverless_function_destinations(resource, props, base)
        elif kind in ("AWS::Lambda::EventInvokeConfig", "AWS::Lambda::EventSourceMapping"):
            destination = dig(props, "DestinationConfig", "OnFailure", "Destination")
            if destination is not None:
                yield [*base, "DestinationConfig"], destination
        elif kind == "AWS::Lambda::Function":
            if dig(props, "DeadLetterConfig", "TargetArn") is not None:
                yield [*base, "DeadLetterConfig"], props["DeadLetterConfig"]["TargetArn"]
        elif kind == "AWS::SQS::Queue":
            dead_letter_target = dig(props, "RedrivePolicy", "deadLetterTargetArn")
            if dead_letter_target is not None:
                yield [*base, "RedrivePolicy"], dead_letter_target
        elif kind == "AWS::Events::Rule":
            for index, rule_target in enumerate(as_list(props.get("Targets"))):
                arn = dig(rule_target, "DeadLetterConfig", "Arn")
                if arn is not None:
                    yield [*base, "Targets", index, "DeadLetterConfig"], arn
        elif kind == "AWS::Scheduler::Schedule":
            arn = dig(props, "Target", "DeadLetterConfig", "Arn")
            if arn is not None:
                yield [*base, "Target", "DeadLetterConfig"], arn


def alarm_metric_targets(alarm: dict[str, Any], namespace: str, metric: str) -> set[str]:
    """Logical ids named by the dimensions of ``alarm`` where it watches ``namespace``/``metric``."""
    props = properties(alarm)
    metric_specs = [props] + [dig(m, "MetricStat", "Metric") for m in as_list(props.get("Metrics"))]
    found: set[str] = set()
    for spec in metric_specs:
        if not isinstance(spec, dict):
            continue
        if spec.get("Namespace") != namespace or spec.get("MetricName") != metric:
            continue
        for dimension in as_list(spec.get("Dimensions")):
            logical_id = target(dimension.get("Value")) if isinstance(dimension, dict) else None
            if logical_id:
                found.add(logical_id)
    return found


def alarmed(cfn: Any, namespace: str, metric: str) -> set[str]:
    found: set[str] = set()
    for _, alarm in resources(cfn, ("AWS::CloudWatch::Alarm",)):
        found |= alarm_metric_targets(alarm, namespace, metric)
    return found


def collect_matches(
    find: Callable[[Any, Any], Iterator[RuleMatch]],
) -> Callable[[Any, Any], list[RuleMatch]]:
    """A rule's ``match`` written as a generator of its findings; cfn-lint's ``match`` returns them as a list."""

    @functools.wraps(find)
    def match(rule: Any, cfn: Any) -> list[RuleMatch]:
        return list(find(rule, cfn))

    return match


def policy_documents(cfn: Any) -> Iterator[tuple[list[str | int], Any]]:
    for name, resource in resources(cfn, ("AWS::IAM::Role",)):
        for index, policy in enumerate(as_list(properties(resource).get("Policies"))):
            if isinstance(policy, dict):
                yield (
                    ["Resources", name, "Properties", "Policies", index, "PolicyDocument"],
                    policy.get("PolicyDocument"),
                )
    for name, resource in resources(cfn, POLICY_DOCUMENT_TYPES):
        yield ["Resources", name, "Properties", "PolicyDocument"], properties(resource).get("PolicyDocument")


# ---- rules -----------------------------------------------------------------------------------------------
class FunctionHasOwnRole(CloudFormationLintRule):
    id = "E9101"
    shortdesc = "One IAM role per function"
    description = (
        "Every Lambda function names its own AWS::IAM::Role of this template (Role: !GetAtt XRole.Arn), "
        "and no two functions share a role"
    )
    tags = ["credits", "iam", "lambda"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        users: dict[str, list[str]] = {}
        for name, resource in resources(cfn, FUNCTION_TYPES):
            role = properties(resource).get("Role")
            role_id = target(role)
            if role is None:
                yield RuleMatch(
                    ["Resources", name, "Properties"],
                    f"Function {name} has no Role: give it its own AWS::IAM::Role with exact permissions",
                )
            elif resource_type(cfn, role_id) != "AWS::IAM::Role":
                yield RuleMatch(
                    ["Resources", name, "Properties", "Role"],
                    f"Function {name}: Role must be !GetAtt <an AWS::IAM::Role of this template>.Arn",
                )
            else:
                users.setdefault(str(role_id), []).append(name)
        for role_id, functions in users.items():
            if len(functions) > 1:
                for name in functions:
                    yield RuleMatch(
                        ["Resources", name, "Properties", "Role"],
                        f"Role {role_id} is shared by {', '.join(functions)}: one role per function",
                    )


class NoSamPolicyTemplates(CloudFormationLintRule):
    id = "E9102"
    shortdesc = "No SAM policy templates"
    description = (
        "Functions get permissions only from their own role: no Policies (DynamoDBCrudPolicy and other SAM "
        "policy templates, managed policy names, inline statements) on AWS::Serverless::Function"
    )
    tags = ["credits", "iam", "sam"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, resource in resources(cfn, ("AWS::Serverless::Function", "AWS::Serverless::StateMachine")):
            policies = properties(resource).get("Policies")
            if policies:
                templates = [p for item in as_list(policies) if isinstance(item, dict) for p in item]
                named = [p for p in templates if p.endswith("Policy")] or templates or as_list(policies)
                yield RuleMatch(
                    ["Resources", name, "Properties", "Policies"],
                    f"{name} uses SAM Policies ({', '.join(map(str, named))}): put exact actions on exact "
                    "ARNs in its own AWS::IAM::Role instead",
                )


class IamExactActionsAndResources(CloudFormationLintRule):
    id = "E9103"
    shortdesc = "Exact IAM actions and resources"
    description = (
        "Allow statements name exact actions (no '*' in an action, no NotAction) on exact resources "
        "(no Resource '*' except for actions without resource-level permissions such as "
        "xray:PutTraceSegments, no NotResource); roles carry no managed policies"
    )
    tags = ["credits", "iam"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for path, document in policy_documents(cfn):
            statements = dig(document, "Statement") if isinstance(document, dict) else None
            for index, statement in enumerate(as_list(statements)):
                if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
                    continue
                here = [*path, "Statement", index]
                label = statement.get("Sid") or f"statement {index}"
                for key in ("NotAction", "NotResource"):
                    if key in statement:
                        yield RuleMatch([*here, key], f"{label}: {key} allows too much")
                actions = [a for a in as_list(statement.get("Action")) if isinstance(a, str)]
                for action in actions:
                    if "*" in action:
                        yield RuleMatch(
                            [*here, "Action"], f"{label}: wildcard action '{action}'; list exact actions"
                        )
                star = [
                    r for r in as_list(statement.get("Resource")) if isinstance(r, str) and r.strip() == "*"
                ]
                if star and not (actions and set(actions) <= STAR_RESOURCE_ACTIONS):
                    others = sorted(set(actions) - STAR_RESOURCE_ACTIONS)
                    yield RuleMatch(
                        [*here, "Resource"],
                        f"{label}: Resource '*' for {', '.join(others) or 'its actions'}; name exact ARNs "
                        f"(only {', '.join(sorted(STAR_RESOURCE_ACTIONS))} may use '*')",
                    )
        for name, resource in resources(cfn, ("AWS::IAM::Role",)):
            if properties(resource).get("ManagedPolicyArns"):
                yield RuleMatch(
                    ["Resources", name, "Properties", "ManagedPolicyArns"],
                    f"Role {name} has managed policies, whose actions and resources this template cannot "
                    "bound: use inline statements with exact actions and ARNs",
                )


class TableProtection(CloudFormationLintRule):
    id = "E9104"
    shortdesc = "DynamoDB tables are protected"
    description = (
        "Every DynamoDB table has point-in-time recovery, deletion protection, server-side encryption "
        "(SSEEnabled), DeletionPolicy: Retain and UpdateReplacePolicy: Retain"
    )
    tags = ["credits", "dynamodb"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, _ in resources(cfn, ("AWS::Serverless::SimpleTable",)):
            yield RuleMatch(
                ["Resources", name],
                f"{name}: AWS::Serverless::SimpleTable cannot be protected; use AWS::DynamoDB::Table",
            )
        for name, resource in resources(cfn, TABLE_TYPES):
            props = properties(resource)
            base = ["Resources", name]
            for attribute in ("DeletionPolicy", "UpdateReplacePolicy"):
                if resource.get(attribute) != "Retain":
                    yield RuleMatch(base, f"Table {name}: {attribute} must be Retain")
            checks = (
                (
                    ("PointInTimeRecoverySpecification", "PointInTimeRecoveryEnabled"),
                    "point-in-time recovery",
                ),
                (("DeletionProtectionEnabled",), "deletion protection"),
                (("SSESpecification", "SSEEnabled"), "server-side encryption (SSEEnabled)"),
            )
            for keys, what in checks:
                if not is_true(dig(props, *keys)):
                    yield RuleMatch(
                        [*base, "Properties"], f"Table {name}: {what} must be on ({'.'.join(keys)})"
                    )


class FunctionLogGroupWithRetention(CloudFormationLintRule):
    id = "E9105"
    shortdesc = "Function log groups with retention"
    description = (
        "Every function logs to an AWS::Logs::LogGroup of this template (LoggingConfig.LogGroup) that has "
        "RetentionInDays"
    )
    tags = ["credits", "lambda", "logs"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, resource in resources(cfn, FUNCTION_TYPES):
            log_group = target(dig(properties(resource), "LoggingConfig", "LogGroup"))
            path = ["Resources", name, "Properties"]
            if resource_type(cfn, log_group) != "AWS::Logs::LogGroup":
                yield RuleMatch(
                    path,
                    f"Function {name}: LoggingConfig.LogGroup must !Ref an AWS::Logs::LogGroup of this "
                    "template (otherwise Lambda creates one that keeps logs forever)",
                )
                continue
            group = cfn.template["Resources"][log_group]
            if properties(group).get("RetentionInDays") is None:
                yield RuleMatch(
                    ["Resources", str(log_group), "Properties"],
                    f"Log group {log_group} of {name} has no RetentionInDays",
                )


class FunctionTracingActive(CloudFormationLintRule):
    id = "E9106"
    shortdesc = "X-Ray tracing on every function"
    description = "Every function has Tracing: Active (in Globals or on the function)"
    tags = ["credits", "lambda", "xray"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, resource in resources(cfn, FUNCTION_TYPES):
            props = properties(resource)
            tracing = props.get("Tracing")
            if resource.get("Type") == "AWS::Lambda::Function":
                tracing = dig(props, "TracingConfig", "Mode")
            if tracing != "Active":
                yield RuleMatch(["Resources", name, "Properties"], f"Function {name}: Tracing must be Active")


class AsyncSourcesHaveFailureDestinations(CloudFormationLintRule):
    id = "E9107"
    shortdesc = "DLQ or on-failure destination on every asynchronous source"
    description = (
        "Schedules, EventBridge rules, SNS and S3 events need a DeadLetterConfig on the event or an "
        "EventInvokeConfig OnFailure / DeadLetterQueue on the function; stream sources need "
        "DestinationConfig.OnFailure; SQS sources need a redrive policy (DLQ) on their queue"
    )
    tags = ["credits", "lambda", "events"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, resource in resources(cfn, ("AWS::Serverless::Function",)):
            function_level = function_has_failure_destination(resource)
            for event_name, kind, event_props in function_events(resource):
                path = ["Resources", name, "Properties", "Events", event_name]
                where = f"Function {name}, event {event_name} ({kind})"
                if kind in ASYNC_EVENT_TYPES:
                    if not (event_props.get("DeadLetterConfig") or function_level):
                        yield RuleMatch(
                            path,
                            f"{where}: no DeadLetterConfig on the event and no EventInvokeConfig OnFailure "
                            "or DeadLetterQueue on the function: failed invocations would be lost",
                        )
                elif kind in STREAM_EVENT_TYPES:
                    if not dig(event_props, "DestinationConfig", "OnFailure", "Destination"):
                        yield RuleMatch(path, f"{where}: no DestinationConfig.OnFailure for failed batches")
                elif kind in QUEUE_EVENT_TYPES:
                    queue = target(event_props.get("Queue"))
                    redrive = None
                    if resource_type(cfn, queue) == "AWS::SQS::Queue":
                        redrive = dig(cfn.template["Resources"][queue], "Properties", "RedrivePolicy")
                    if not redrive:
                        yield RuleMatch(
                            path,
                            f"{where}: the source queue needs a RedrivePolicy (DLQ) in this template",
                        )
        for name, resource in resources(cfn, ("AWS::Lambda::EventSourceMapping",)):
            source = properties(resource).get("EventSourceArn")
            if dig(properties(resource), "DestinationConfig", "OnFailure", "Destination"):
                continue
            if ":sqs:" in str(source) or resource_type(cfn, target(source)) == "AWS::SQS::Queue":
                continue  # SQS: the DLQ is the source queue's redrive policy
            yield RuleMatch(["Resources", name, "Properties"], f"{name}: no DestinationConfig.OnFailure")


class FailureQueuesHaveDepthAlarms(CloudFormationLintRule):
    id = "E9108"
    shortdesc = "Depth alarm on every DLQ"
    description = (
        "Every DLQ or on-failure destination is an AWS::SQS::Queue of this template with an "
        "AWS::CloudWatch::Alarm on AWS/SQS ApproximateNumberOfMessagesVisible (QueueName dimension)"
    )
    tags = ["credits", "sqs", "alarms"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        watched = alarmed(cfn, "AWS/SQS", "ApproximateNumberOfMessagesVisible")
        seen: set[str] = set()
        for path, destination in failure_destinations(cfn):
            queue = target(destination)
            kind = resource_type(cfn, queue)
            if destination is None:
                yield RuleMatch(
                    path,
                    "DLQ without an explicit queue (SAM would create one no alarm can name): point it at "
                    "an AWS::SQS::Queue of this template",
                )
            elif kind == "AWS::SQS::Queue" and queue not in watched and queue not in seen:
                seen.add(str(queue))
                yield RuleMatch(
                    path,
                    f"DLQ {queue} has no CloudWatch alarm on ApproximateNumberOfMessagesVisible: failures "
                    "would pile up unnoticed",
                )


class HttpApiThrottling(CloudFormationLintRule):
    id = "E9109"
    shortdesc = "HTTP APIs are throttled"
    description = (
        "Every AWS::Serverless::HttpApi sets DefaultRouteSettings ThrottlingBurstLimit and "
        "ThrottlingRateLimit, and every HttpApi event names its ApiId (no implicit, unthrottled API)"
    )
    tags = ["credits", "apigateway"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, resource in resources(cfn, ("AWS::Serverless::HttpApi",)):
            settings = properties(resource).get("DefaultRouteSettings")
            for key in ("ThrottlingBurstLimit", "ThrottlingRateLimit"):
                if dig(settings, key) is None:
                    yield RuleMatch(
                        ["Resources", name, "Properties"],
                        f"HTTP API {name}: DefaultRouteSettings.{key} is missing",
                    )
        for name, resource in resources(cfn, ("AWS::Serverless::Function",)):
            for event_name, kind, event_props in function_events(resource):
                if kind == "HttpApi" and not event_props.get("ApiId"):
                    yield RuleMatch(
                        ["Resources", name, "Properties", "Events", event_name],
                        f"Function {name}, event {event_name}: HttpApi event without ApiId creates an "
                        "implicit API without throttling limits",
                    )


class NoPlainSecrets(CloudFormationLintRule):
    id = "E9110"
    shortdesc = "No secrets in plain text"
    description = (
        "Secret-looking environment variables only name where the secret lives (suffix _PARAMETER, _ARN, "
        "...), no {{resolve:ssm-secure/secretsmanager}} in environment variables or Outputs, and no literal "
        "Stripe secret (whsec_, sk_live_ ...) or AWS access key id anywhere in the template"
    )
    tags = ["credits", "secrets"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, resource in resources(cfn, FUNCTION_TYPES):
            variables = dig(properties(resource), "Environment", "Variables")
            if not isinstance(variables, dict):
                continue
            for variable, value in variables.items():
                path = ["Resources", name, "Properties", "Environment", "Variables", variable]
                if SECRET_NAME.search(str(variable)) and not str(variable).endswith(
                    SECRET_REFERENCE_SUFFIXES
                ):
                    yield RuleMatch(
                        path,
                        f"Function {name}: {variable} looks like a secret in plain environment; pass the "
                        "SSM parameter name (…_PARAMETER) and read it at runtime",
                    )
                if any(SECRET_RESOLVE.search(s) for s in strings(value)):
                    yield RuleMatch(
                        path, f"Function {name}: {variable} resolves a secret into plain environment"
                    )
        for name, output in (cfn.template.get("Outputs") or {}).items():
            if any(SECRET_RESOLVE.search(s) for s in strings(output)):
                yield RuleMatch(["Outputs", name], f"Output {name} exposes a secret")
        for section in ("Parameters", "Resources", "Outputs", "Globals", "Mappings"):
            for text in strings(cfn.template.get(section) or {}):
                if SECRET_LITERAL.search(text):
                    yield RuleMatch(
                        [section], f"{section} contains what looks like a literal secret or access key"
                    )
                    break


class FunctionsAreAlarmed(CloudFormationLintRule):
    id = "E9111"
    shortdesc = "Errors and Throttles alarms on every function; alarms notify"
    description = (
        "Every function has an AWS::CloudWatch::Alarm on AWS/Lambda Errors and one on Throttles "
        "(FunctionName dimension), and every alarm has AlarmActions"
    )
    tags = ["credits", "lambda", "alarms"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for metric in ("Errors", "Throttles"):
            watched = alarmed(cfn, "AWS/Lambda", metric)
            for name, _ in resources(cfn, FUNCTION_TYPES):
                if name not in watched:
                    yield RuleMatch(
                        ["Resources", name],
                        f"Function {name} has no alarm on AWS/Lambda {metric} (Dimensions FunctionName: "
                        f"!Ref {name})",
                    )
        for name, alarm in resources(cfn, ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm")):
            if not properties(alarm).get("AlarmActions"):
                yield RuleMatch(
                    ["Resources", name, "Properties"],
                    f"Alarm {name} has no AlarmActions: nobody hears it",
                )


class TopicsEncrypted(CloudFormationLintRule):
    id = "E9112"
    shortdesc = "SNS topics are KMS-encrypted"
    description = "Every AWS::SNS::Topic sets KmsMasterKeyId"
    tags = ["credits", "sns", "encryption"]

    def match(self, cfn: Any) -> list[RuleMatch]:
        return [
            RuleMatch(["Resources", name, "Properties"], f"SNS topic {name} has no KmsMasterKeyId")
            for name, resource in resources(cfn, ("AWS::SNS::Topic",))
            if not properties(resource).get("KmsMasterKeyId")
        ]


class WebhooksHaveReservedConcurrency(CloudFormationLintRule):
    id = "E9113"
    shortdesc = "Webhook functions reserve concurrency"
    description = "A function with an HttpApi/Api event whose Path contains /webhooks/ sets ReservedConcurrentExecutions"
    tags = ["credits", "lambda", "availability"]

    @collect_matches
    def match(self, cfn: Any) -> Iterator[RuleMatch]:
        for name, resource in resources(cfn, ("AWS::Serverless::Function",)):
            paths = [
                str(event_props.get("Path", ""))
                for _, kind, event_props in function_events(resource)
                if kind in ("HttpApi", "Api")
            ]
            webhook = any("/webhooks/" in path for path in paths)
            if webhook and properties(resource).get("ReservedConcurrentExecutions") is None:
                yield RuleMatch(
                    ["Resources", name, "Properties"],
                    f"Function {name} serves a webhook but reserves no concurrency "
                    "(ReservedConcurrentExecutions)",
                )
