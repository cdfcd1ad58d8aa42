"""A small reader of the SAM template: the one source of the local stack's routes, handlers, environment,
layers, tables, schedules and event sources (no second list anywhere).

    model = load_stack("template.yaml", LocalNames(...))
    model.functions["ApiFunction"].routes      # [Route("GET", "/v1/customers/{customer}/balance"), ...]
    model.functions["ApiFunction"].environment # resolved: TABLE_NAME -> the local table name, ...

Intrinsics are resolved for local use: ``!Ref`` (resources, parameters, pseudo parameters), ``!GetAtt``
(``Arn``, ``Name``, ``StreamArn`` and friends become plausible local ARNs), ``!Sub`` (both forms), ``!Join``,
``!Select``, ``!Split``, ``!If``/``!Equals``/``!Not``/``!And``/``!Or`` on the template's Conditions,
``!FindInMap`` and ``!ImportValue`` (kept as its name). Anything else becomes a visible placeholder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
STACK_NAME = "credits-local"


class TemplateError(ValueError):
    """The template cannot be used by the local stack."""


# ---------------------------------------------------------------------------------------------------------
# YAML with CloudFormation short forms
class CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader turning ``!Ref X`` into ``{"Ref": "X"}``, ``!GetAtt A.B`` into ``{"Fn::GetAtt": ["A", "B"]}``,
    ``!Condition C`` into ``{"Condition": "C"}`` and any other ``!Fn`` into ``{"Fn::Fn": ...}``."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=CfnLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: not a CloudFormation template (top level is not a mapping)")
    return data


def load_template(template_path: str | Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template (short-form intrinsics allowed); a relative path that does
    not exist here is taken relative to the project root."""
    path = Path(template_path)
    if not (path.is_absolute() or path.exists()) and (PROJECT_ROOT / path).exists():
        path = PROJECT_ROOT / path
    return load_yaml(path)


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalNames:
    """Local values the resolver substitutes for things that only exist in AWS."""

    table_names: Mapping[str, str] = field(default_factory=dict)  # logical id -> local table name
    parameter_values: Mapping[str, str] = field(default_factory=dict)  # template parameter -> value
    region: str = REGION
    account_id: str = ACCOUNT_ID
    stack_name: str = STACK_NAME


@dataclass(frozen=True)
class Route:
    method: str  # upper case, or ANY
    path: str  # /v1/customers/{customer}/balance, /{proxy+} or $default
    event_name: str
    payload_format: str = "2.0"

    @property
    def route_key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"


@dataclass(frozen=True)
class Schedule:
    name: str
    expression: str  # rate(...) / cron(...) / at(...)
    input: str | None
    enabled: bool
    kind: str  # Schedule or ScheduleV2
    timezone: str = "UTC"  # ScheduleExpressionTimezone (cron and at are read in it)


@dataclass(frozen=True)
class StreamSource:
    name: str
    table_logical_id: str | None
    starting_position: str
    batch_size: int
    maximum_retry_attempts: int  # -1: retry until it works (AWS's default)
    filters: tuple[Any, ...]  # EventBridge-style patterns (dicts)
    report_batch_item_failures: bool
    enabled: bool


@dataclass(frozen=True)
class EventRule:
    name: str
    bus: str
    pattern: Any
    input: str | None


@dataclass(frozen=True)
class Function:
    logical_id: str
    code_uri: Path
    handler: str
    runtime: str | None
    timeout: int
    memory_size: int
    environment: dict[str, str]
    layers: tuple[Path, ...]
    routes: tuple[Route, ...]
    schedules: tuple[Schedule, ...]
    streams: tuple[StreamSource, ...]
    event_rules: tuple[EventRule, ...]
    physical_name: str | None  # FunctionName when literal

    @property
    def module_name(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    @property
    def function_name(self) -> str:
        return self.handler.rsplit(".", 1)[1]

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.physical_name or self.logical_id}"


@dataclass(frozen=True)
class Table:
    logical_id: str
    name: str
    properties: dict[str, Any]
    simple: bool = False  # AWS::Serverless::SimpleTable


@dataclass
class StackModel:
    path: Path
    raw: dict[str, Any]
    functions: dict[str, Function]
    tables: dict[str, Table]
    event_buses: dict[str, str]  # logical id -> local bus name
    parameters: dict[str, str]  # parameter -> local value
    warnings: list[str]

    def function(self, name: str) -> Function | None:
        """By logical id, FunctionName, or ARN (``...:function:Name[:qualifier]``)."""
        if name.startswith("arn:"):
            parts = name.split(":")
            name = parts[6] if len(parts) > 6 else name
        elif ":" in name:
            name = name.split(":", 1)[0]
        if name in self.functions:
            return self.functions[name]
        for function in self.functions.values():
            if function.physical_name == name:
                return function
        return None

    def routes(self) -> list[tuple[Route, Function]]:
        return [(route, fn) for fn in self.functions.values() for route in fn.routes]


# ---------------------------------------------------------------------------------------------------------
class Resolver:
    """Resolves intrinsic functions against the template and the local names."""

    def __init__(self, template: Mapping[str, Any], names: LocalNames, warn: Callable[[str], None]) -> None:
        self.template = template
        self.names = names
        self.warn = warn
        self.resources: Mapping[str, Any] = template.get("Resources") or {}
        self.parameters = {**self._parameter_defaults(), **names.parameter_values}
        self.conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self._condition_cache: dict[str, bool] = {}
        self._depth = 0

    def _parameter_defaults(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, spec in (self.template.get("Parameters") or {}).items():
            if isinstance(spec, Mapping) and "Default" in spec:
                default = spec["Default"]
                out[name] = ",".join(map(str, default)) if isinstance(default, list) else str(default)
            else:
                out[name] = f"local-{name}"
        return out

    # -- pseudo parameters / refs --------------------------------------------------------------------------
    def pseudo(self, name: str) -> str | None:
        return {
            "AWS::Region": self.names.region,
            "AWS::AccountId": self.names.account_id,
            "AWS::StackName": self.names.stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{self.names.region}:{self.names.account_id}:stack/"
            f"{self.names.stack_name}/00000000-0000-0000-0000-000000000000",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
            "AWS::NotificationARNs": "",
        }.get(name, f"<{name}>")

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.parameters:
            return self.parameters[name]
        resource = self.resources.get(name)
        if not isinstance(resource, Mapping):
            self.warn(f"!Ref {name}: no such parameter or resource; using the name itself")
            return name
        rtype = resource.get("Type", "")
        props = resource.get("Properties") or {}
        if rtype in ("AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable", "AWS::DynamoDB::GlobalTable"):
            return self.names.table_names.get(name, self._literal_or(props.get("TableName"), name))
        if rtype == "AWS::Events::EventBus":
            return self._literal_or(props.get("Name"), name)
        if rtype == "AWS::SSM::Parameter":
            return self._literal_or(props.get("Name"), f"/{self.names.stack_name}/{name}")
        if rtype == "AWS::SecretsManager::Secret":
            return self.arn("secretsmanager", f"secret:{self._literal_or(props.get('Name'), name)}")
        if rtype in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            return self._literal_or(props.get("FunctionName"), name)
        if rtype == "AWS::SQS::Queue":
            return (
                f"http://127.0.0.1/{self.names.account_id}/{self._literal_or(props.get('QueueName'), name)}"
            )
        if rtype == "AWS::SNS::Topic":
            return self.arn("sns", self._literal_or(props.get("TopicName"), name))
        if rtype in ("AWS::S3::Bucket",):
            return self._literal_or(props.get("BucketName"), name.lower())
        if rtype in ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion"):
            return self.arn("lambda", f"layer:{name}:1")
        return name

    def get_att(self, name: str, attribute: str) -> Any:
        resource = self.resources.get(name) or {}
        rtype = resource.get("Type", "") if isinstance(resource, Mapping) else ""
        base = self.ref(name)
        if rtype in ("AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable"):
            table_arn = self.arn("dynamodb", f"table/{base}")
            if attribute == "StreamArn":
                return f"{table_arn}/stream/local"
            return table_arn if attribute == "Arn" else base
        if rtype == "AWS::Events::EventBus":
            return self.arn("events", f"event-bus/{base}") if attribute == "Arn" else base
        if rtype in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            return self.arn("lambda", f"function:{base}") if attribute == "Arn" else base
        if rtype == "AWS::SQS::Queue":
            queue = str(base).rsplit("/", 1)[-1]
            return self.arn("sqs", queue) if attribute == "Arn" else queue
        if attribute == "Arn":
            service = rtype.split("::")[1].lower() if rtype.count("::") == 2 else "local"
            return self.arn(service, str(base))
        return base

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.names.region}:{self.names.account_id}:{resource}"

    def _literal_or(self, value: Any, fallback: str) -> str:
        """A name property, resolved (``!Sub credits-${Environment}``), else the fallback."""
        if value is None:
            return fallback
        if self._depth > 20:
            return fallback
        self._depth += 1
        try:
            resolved = self.resolve(value)
        finally:
            self._depth -= 1
        return resolved if isinstance(resolved, str) and resolved else fallback

    # -- conditions -----------------------------------------------------------------------------------------
    def condition(self, name: str) -> bool:
        if name not in self._condition_cache:
            spec = self.conditions.get(name)
            self._condition_cache[name] = bool(self.resolve(spec)) if spec is not None else False
        return self._condition_cache[name]

    # -- everything -----------------------------------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, Mapping):
            return value
        if len(value) == 1:
            key, arg = next(iter(value.items()))
            if key == "Ref":
                return self.ref(str(arg))
            if key == "Condition":
                return self.condition(str(arg))
            if key.startswith("Fn::"):
                return self._fn(key[4:], arg)
        return {k: self.resolve(v) for k, v in value.items()}

    def _fn(self, name: str, arg: Any) -> Any:
        if name == "GetAtt":
            parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
            return self.get_att(str(parts[0]), str(self.resolve(parts[1])) if len(parts) > 1 else "Arn")
        if name == "Sub":
            return self._sub(arg)
        if name == "Join":
            sep, items = arg
            return str(sep).join(str(i) for i in self.resolve(items) if i is not None)
        if name == "Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if name == "Split":
            sep, text = self.resolve(arg)
            return str(text).split(str(sep))
        if name == "If":
            cond, yes, no = arg
            return self.resolve(yes if self.condition(cond) else no)
        if name == "Equals":
            a, b = self.resolve(arg)
            return str(a) == str(b)
        if name == "Not":
            return not self.resolve(arg[0])
        if name == "And":
            return all(self.resolve(a) for a in arg)
        if name == "Or":
            return any(self.resolve(a) for a in arg)
        if name == "FindInMap":
            mapping, top, second = self.resolve(arg)
            return ((self.template.get("Mappings") or {}).get(mapping) or {}).get(top, {}).get(second)
        if name == "ImportValue":
            return str(self.resolve(arg))
        if name == "Base64":
            return self.resolve(arg)
        if name == "GetAZs":
            return [f"{self.names.region}a", f"{self.names.region}b"]
        self.warn(f"Fn::{name} is not supported locally; left as a placeholder")
        return f"<Fn::{name}>"

    _SUB = re.compile(r"\$\{([^}!][^}]*)\}")

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], {k: self.resolve(v) for k, v in (arg[1] or {}).items()}
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                resource, attribute = name.split(".", 1)
                return str(self.get_att(resource, attribute))
            return str(self.ref(name))

        return self._SUB.sub(replace, str(text)).replace("${!", "${")


# ---------------------------------------------------------------------------------------------------------
SERVERLESS_FUNCTION = "AWS::Serverless::Function"


def _merge_globals(template: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    """SAM Globals.Function merged under a function's properties (maps merge, lists append, scalars replace)."""
    defaults = ((template.get("Globals") or {}).get("Function")) or {}
    merged: dict[str, Any] = dict(defaults)
    for key, value in props.items():
        base = merged.get(key)
        if key == "Environment" and isinstance(base, Mapping) and isinstance(value, Mapping):
            variables = {**(base.get("Variables") or {}), **(value.get("Variables") or {})}
            merged[key] = {**base, **value, "Variables": variables}
        elif isinstance(base, list) and isinstance(value, list) and key == "Layers":
            merged[key] = [*base, *value]
        elif isinstance(base, Mapping) and isinstance(value, Mapping):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged


def _layer_path(
    root: Path, template: Mapping[str, Any], ref: Any, warn: Callable[[str], None]
) -> Path | None:
    """A layer reference (``!Ref LayerLogicalId``) -> the folder to put on sys.path."""
    if isinstance(ref, Mapping) and "Ref" in ref:
        logical_id = ref["Ref"]
    elif isinstance(ref, str) and ref in (template.get("Resources") or {}):
        logical_id = ref
    else:
        warn(f"layer {ref!r} is not a layer of this template: ignored locally")
        return None
    layer = (template.get("Resources") or {}).get(logical_id) or {}
    props = layer.get("Properties") or {}
    content = props.get("ContentUri") or props.get("Content")
    if not isinstance(content, str):
        warn(f"layer {logical_id}: ContentUri is not a local folder: ignored locally")
        return None
    folder = (root / content).resolve()
    # A layer built by SAM's python workflow puts the folder's content under python/; a folder that already
    # has python/ is used as it is laid out.
    return folder / "python" if (folder / "python").is_dir() else folder


def _events_of_type(events: Mapping[str, Any], *types: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(name, event)`` of each of a function's ``Events`` whose ``Type`` is one of ``types``."""
    for event_name, event in events.items():
        if isinstance(event, Mapping) and event.get("Type") in types:
            yield event_name, event


def _enabled(props: Mapping[str, Any]) -> bool:
    # a template (or a parameter it resolves) may give the boolean as a string
    return props.get("Enabled", True) not in (False, "false", "False")


def _routes(name: str, events: Mapping[str, Any]) -> list[Route]:
    routes = []
    for event_name, event in _events_of_type(events, "HttpApi"):
        props = event.get("Properties") or {}
        path = props.get("Path")
        method = props.get("Method")
        if path is None and method is None:
            path, method = "$default", "ANY"
        if not isinstance(path, str) or not isinstance(method, str):
            raise TemplateError(f"{name}.{event_name}: Path and Method must be literals")
        method = method.upper()
        if method == "X-AMAZON-APIGATEWAY-ANY-METHOD":
            method = "ANY"
        fmt = str(props.get("PayloadFormatVersion", "2.0"))
        routes.append(Route(method, path, event_name, fmt))
    return routes


def _schedules(resolver: Resolver, events: Mapping[str, Any]) -> list[Schedule]:
    out = []
    for event_name, event in _events_of_type(events, "Schedule", "ScheduleV2"):
        props = resolver.resolve(event.get("Properties") or {})
        enabled = _enabled(props) and props.get("State") != "DISABLED"
        out.append(
            Schedule(
                name=event_name,
                expression=str(props.get("Schedule") or props.get("ScheduleExpression") or ""),
                input=props.get("Input") if isinstance(props.get("Input"), str) else None,
                enabled=enabled,
                kind=str(event["Type"]),
                timezone=str(props.get("ScheduleExpressionTimezone") or "UTC"),
            )
        )
    return out


def _table_of_stream(template: Mapping[str, Any], stream: Any) -> str | None:
    if isinstance(stream, Mapping) and "Fn::GetAtt" in stream:
        return str(stream["Fn::GetAtt"][0])
    if isinstance(stream, Mapping) and "Ref" in stream:
        return str(stream["Ref"])
    return None


def _streams(
    template: Mapping[str, Any], resolver: Resolver, events: Mapping[str, Any]
) -> list[StreamSource]:
    out = []
    for event_name, event in _events_of_type(events, "DynamoDB"):
        raw = event.get("Properties") or {}
        props = resolver.resolve(raw)
        filters = []
        for spec in ((props.get("FilterCriteria") or {}).get("Filters")) or []:
            pattern = spec.get("Pattern") if isinstance(spec, Mapping) else None
            if isinstance(pattern, str):
                pattern = json.loads(pattern)
            if pattern is not None:
                filters.append(pattern)
        responses = props.get("FunctionResponseTypes") or []
        out.append(
            StreamSource(
                name=event_name,
                table_logical_id=_table_of_stream(template, raw.get("Stream")),
                starting_position=str(props.get("StartingPosition", "LATEST")),
                batch_size=int(props.get("BatchSize", 100)),
                maximum_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
                filters=tuple(filters),
                report_batch_item_failures="ReportBatchItemFailures" in responses,
                enabled=_enabled(props),
            )
        )
    return out


def _event_rules(resolver: Resolver, events: Mapping[str, Any]) -> list[EventRule]:
    out = []
    for event_name, event in _events_of_type(events, "EventBridgeRule", "CloudWatchEvent"):
        props = resolver.resolve(event.get("Properties") or {})
        bus = props.get("EventBusName") or "default"
        bus = str(bus).rsplit("/", 1)[-1]
        out.append(EventRule(event_name, bus, props.get("Pattern") or {}, props.get("Input")))
    return out


def table_of(logical_id: str, rtype: str, props: Mapping[str, Any]) -> Table:
    name = props.get("TableName")
    return Table(
        logical_id=logical_id,
        name=name if isinstance(name, str) else logical_id,
        properties=dict(props),
        simple=rtype == "AWS::Serverless::SimpleTable",
    )


def read_tables(template: Mapping[str, Any]) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if not isinstance(resource, Mapping):
            continue
        rtype = resource.get("Type")
        if rtype in ("AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable"):
            tables[logical_id] = table_of(logical_id, str(rtype), resource.get("Properties") or {})
    return tables


def load_stack(
    path: str | Path,
    names: LocalNames | None = None,
    env_overrides: Callable[[str, str, Any], str | None] | None = None,
) -> StackModel:
    """Read the template. ``env_overrides(function_id, variable, raw_value)`` may replace a resolved
    environment value (e.g. a secret's parameter name by a local value); None keeps the resolved one."""
    path = Path(path).resolve()
    root = path.parent
    template = load_yaml(path)
    warnings: list[str] = []
    tables = read_tables(template)
    names = names or LocalNames()
    if not names.table_names:
        names = LocalNames(
            table_names={t.logical_id: t.name for t in tables.values()},
            parameter_values=names.parameter_values,
            region=names.region,
            account_id=names.account_id,
            stack_name=names.stack_name,
        )
    resolver = Resolver(template, names, warnings.append)
    buses = {
        logical_id: resolver.ref(logical_id)
        for logical_id, res in (template.get("Resources") or {}).items()
        if isinstance(res, Mapping) and res.get("Type") == "AWS::Events::EventBus"
    }
    functions: dict[str, Function] = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if not isinstance(resource, Mapping) or resource.get("Type") != SERVERLESS_FUNCTION:
            continue
        if "Condition" in resource and not resolver.condition(str(resource["Condition"])):
            continue
        props = _merge_globals(template, resource.get("Properties") or {})
        for key in ("CodeUri", "Handler", "Timeout", "MemorySize", "FunctionName", "Runtime", "PackageType"):
            if key in props:
                props[key] = resolver.resolve(props[key])
        code_uri = props.get("CodeUri")
        handler = props.get("Handler")
        if (
            props.get("PackageType") == "Image"
            or not isinstance(code_uri, str)
            or not isinstance(handler, str)
        ):
            warnings.append(f"{logical_id}: no local CodeUri/Handler (image or inline code): not served")
            continue
        if "." not in handler:
            warnings.append(f"{logical_id}: Handler {handler!r} is not module.function: not served")
            continue
        raw_env = ((props.get("Environment") or {}).get("Variables")) or {}
        environment: dict[str, str] = {}
        for variable, raw in raw_env.items():
            value = resolver.resolve(raw)
            override = env_overrides(logical_id, variable, value) if env_overrides else None
            if override is not None:
                environment[variable] = override
            elif value is not None:
                environment[variable] = "true" if value is True else "false" if value is False else str(value)
        layers = tuple(
            p
            for p in (_layer_path(root, template, ref, warnings.append) for ref in props.get("Layers") or [])
            if p
        )
        events = props.get("Events") or {}
        physical = props.get("FunctionName")
        functions[logical_id] = Function(
            logical_id=logical_id,
            code_uri=(root / code_uri).resolve(),
            handler=handler,
            runtime=props.get("Runtime"),
            timeout=int(props.get("Timeout", 3)),
            memory_size=int(props.get("MemorySize", 128)),
            environment=environment,
            layers=layers,
            routes=tuple(_routes(logical_id, events)),
            schedules=tuple(_schedules(resolver, events)),
            streams=tuple(_streams(template, resolver, events)),
            event_rules=tuple(_event_rules(resolver, events)),
            physical_name=physical if isinstance(physical, str) else None,
        )
    return StackModel(
        path=path,
        raw=template,
        functions=functions,
        tables=tables,
        event_buses=buses,
        parameters=dict(resolver.parameters),
        warnings=warnings,
    )
