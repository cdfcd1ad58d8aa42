"""docs/deploy.md (the runbook) against what it describes, for everything checkable without AWS: the
parameters, outputs, alarms and SSM parameter names it mentions exist in template.yaml / samconfig.toml, the
`make` targets exist, the Stripe events it tells you to select are the ones the webhook handles; samconfig.toml
has the dev and prod environments; secrets reach the functions only as SSM parameter names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from credits_dev.local.template import load_template
from credits_ledger.stripe_facts import HANDLED

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
TEMPLATE = load_template(ROOT / "template.yaml")
SAMCONFIG = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]
OUTPUTS: dict[str, Any] = TEMPLATE.get("Outputs", {})
STAGES = ("dev", "prod")


def _table(first_header: str) -> list[str]:
    """First-column names (in backticks) of the markdown table whose first header cell is ``first_header``."""
    names: list[str] = []
    inside = False
    for line in DOC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and cells[0] == first_header:
            inside = True
            continue
        if inside and not cells:
            break
        if inside and not set(cells[0]) <= {"-", " "}:
            found = re.fullmatch(r"`([A-Za-z0-9]+)`", cells[0])
            assert found, f"table {first_header!r}: first cell {cells[0]!r} is not a `Name`"
            names.append(found.group(1))
    assert names, f"no table headed {first_header!r} in docs/deploy.md"
    return names


def _overrides(stage: str) -> dict[str, str]:
    section = SAMCONFIG[stage]["deploy"]["parameters"]
    pairs = [item.split("=", 1) for item in section["parameter_overrides"]]
    return {key: value.strip('"') for key, value in pairs}


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE)}


def _alarms() -> set[str]:
    return {name for name, r in RESOURCES.items() if r.get("Type") == "AWS::CloudWatch::Alarm"}


# ---- the runbook names only what exists ----------------------------------------------------------------------
def test_parameters_in_the_runbook_exist() -> None:
    documented = _table("parameter")
    assert set(documented) <= set(PARAMETERS), set(documented) - set(PARAMETERS)
    assert set(PARAMETERS) <= set(documented), f"undocumented parameters: {set(PARAMETERS) - set(documented)}"


def test_outputs_in_the_runbook_exist() -> None:
    documented = set(_table("output")) | set(re.findall(r"OutputKey=='(\w+)'", DOC))
    assert documented <= set(OUTPUTS), documented - set(OUTPUTS)


def test_every_alarm_is_in_the_runbook_and_every_documented_alarm_exists() -> None:
    documented = _table("alarm")
    assert len(documented) == len(set(documented))
    assert set(documented) == _alarms(), {
        "documented, not in template": set(documented) - _alarms(),
        "in template, not documented": _alarms() - set(documented),
    }
    # alarms named in prose too
    for name in re.findall(r"`(\w+Alarm)`", DOC):
        assert name in _alarms(), name


def test_ssm_parameter_names_in_the_runbook_are_the_template_and_samconfig_ones() -> None:
    names = ("StripeWebhookSecretParameterName", "AdminKeyParameterName", "StripeApiKeyParameterName")
    known = {PARAMETERS[p]["Default"] for p in names}
    for stage in STAGES:
        overrides = _overrides(stage)
        known |= {overrides[name] for name in names}
    mentioned = {m for m in re.findall(r"/credits/[A-Za-z0-9_./$-]+", DOC) if not m.endswith("/")}
    expanded = {m.replace("$STAGE", stage) for m in mentioned for stage in STAGES}
    expanded = {m for m in expanded if "$" not in m} | {m for m in mentioned if "$" not in m}
    assert expanded <= known, expanded - known
    assert known <= expanded, f"SSM parameters the runbook never mentions: {known - expanded}"


def test_make_targets_in_the_runbook_exist() -> None:
    mentioned = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", DOC))
    assert mentioned, "the runbook mentions no make target"
    assert mentioned <= _make_targets(), mentioned - _make_targets()


def test_stripe_events_to_select_are_the_handled_ones() -> None:
    section = DOC.split("Events to send", 1)[1].split("\n4.", 1)[0]
    selected = re.findall(r"^\s*- `([a-z_.]+)`\s*$", section, re.MULTILINE)
    assert len(selected) == len(set(selected))
    assert set(selected) == set(HANDLED)


def test_documented_tool_and_files_exist() -> None:
    for path in re.findall(r"`((?:tools|events|config|docs|layers)/[\w./-]+\.\w+)`", DOC):
        assert (ROOT / path).exists(), path
    assert (
        "python -m tools.replay_stripe_event" in DOC and (ROOT / "tools" / "replay_stripe_event.py").exists()
    )


# ---- samconfig.toml --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_samconfig_has_the_stage(stage: str) -> None:
    config = SAMCONFIG[stage]
    assert config["global"]["parameters"]["stack_name"] == f"credits-{stage}"
    deploy = config["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True
    overrides = _overrides(stage)
    assert {"Environment", "LogLevel", "AlarmEmail", "LogRetentionDays"} <= set(overrides)
    assert overrides["Environment"] == stage
    for key, value in overrides.items():
        spec = PARAMETERS[key]  # KeyError: an override for a parameter the template does not have
        if "AllowedValues" in spec:
            assert value in map(str, spec["AllowedValues"]), (key, value)
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], value), (key, value)


def test_default_environment_is_dev() -> None:
    assert SAMCONFIG["default"]["global"]["parameters"]["stack_name"] == "credits-dev"
    assert _overrides("default") == _overrides("dev")


# ---- parameters, log level, alarm topic -----------------------------------------------------------------------
def test_stage_parameters_are_used() -> None:
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}
    subscription = RESOURCES["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    for name in _alarms():
        assert RESOURCES[name]["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], name


# ---- secrets: only SSM parameter names reach the functions -----------------------------------------------------
@pytest.mark.parametrize(
    ("function", "role", "variable", "parameter"),
    [
        ("StripeWebhookFunction", "StripeWebhookRole", "STRIPE_WEBHOOK_SECRET_PARAMETER", "StripeWebhookSecretParameterName"),
        ("ApiFunction", "ApiRole", "ADMIN_KEY_PARAMETER", "AdminKeyParameterName"),
        ("BillingSyncFunction", "BillingSyncRole", "STRIPE_API_KEY_PARAMETER", "StripeApiKeyParameterName"),
        ("StripeWebhookFunction", "StripeWebhookRole", "STRIPE_API_KEY_PARAMETER", "StripeApiKeyParameterName"),
    ],
)  # fmt: skip
def test_secrets_come_from_ssm_parameter_names(
    function: str, role: str, variable: str, parameter: str
) -> None:
    from credits_ledger import api_keys, stripe_api, stripe_signature

    variables = RESOURCES[function]["Properties"]["Environment"]["Variables"]
    assert variables[variable] == {"Ref": parameter}
    # the code reads exactly that variable (and decrypts with Powertools parameters)
    sources = "".join(Path(m.__file__).read_text() for m in (stripe_signature, api_keys, stripe_api))
    assert f'"{variable}"' in sources
    statements = RESOURCES[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    # each ssm:GetParameter statement names exactly one parameter; this secret's is among them
    readable = [s["Resource"] for s in statements if s["Action"] == "ssm:GetParameter"]
    assert {
        "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${" + parameter + "}"
    } in readable
    for output in OUTPUTS.values():
        assert parameter not in str(output["Value"])
