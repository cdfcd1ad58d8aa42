"""Each function's environment model (credits_ledger/environment.py): a missing or malformed setting is an
error naming it, never a quiet default; the log-only bus only when asked for."""

from __future__ import annotations

import pytest

from credits_ledger import bus
from credits_ledger import environment as env
from credits_ledger.bus import EventBus, LogOnlyBus, default_bus
from credits_ledger.environment import ConfigurationError

BASE = {"TABLE_NAME": "credits"}


def test_every_function_needs_its_table() -> None:
    with pytest.raises(ConfigurationError, match="TABLE_NAME"):
        env.load(env.FunctionEnvironment, {})
    assert env.load(env.FunctionEnvironment, BASE).table_name == "credits"


def test_a_publishing_function_needs_a_bus_or_an_explicit_log_only_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no EventBridge client is made here (the cached one would outlive this test)
    monkeypatch.setattr(bus, "events_client", lambda: object())
    with pytest.raises(ConfigurationError, match="EVENT_BUS_NAME"):
        env.load(env.PublishingEnvironment, BASE)
    with pytest.raises(ConfigurationError, match="CREDITS_EVENT_BUS"):
        env.load(env.PublishingEnvironment, {**BASE, "CREDITS_EVENT_BUS": "logs-please"})
    named = env.load(env.PublishingEnvironment, {**BASE, "EVENT_BUS_NAME": "credits-bus"})
    assert (named.event_bus, named.event_bus_name) == ("eventbridge", "credits-bus")
    assert isinstance(default_bus(named), EventBus)
    log_only = env.load(env.PublishingEnvironment, {**BASE, "CREDITS_EVENT_BUS": "log-only"})
    assert isinstance(default_bus(log_only), LogOnlyBus)


def test_default_bus_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABLE_NAME", "credits")
    monkeypatch.delenv("EVENT_BUS_NAME", raising=False)
    monkeypatch.delenv("CREDITS_EVENT_BUS", raising=False)
    with pytest.raises(ConfigurationError, match="EVENT_BUS_NAME"):
        default_bus()


def test_job_limits_are_checked() -> None:
    job = env.load(env.PublishingJobEnvironment, {**BASE, "EVENT_BUS_NAME": "b"})
    assert (job.deadline_margin_ms, job.max_hops) == (30_000, 50)
    tuned = env.load(env.JobEnvironment, {**BASE, "JOB_DEADLINE_MARGIN_MS": "5000", "JOB_MAX_HOPS": "3"})
    assert (tuned.deadline_margin_ms, tuned.max_hops) == (5_000, 3)
    for bad in ({"JOB_MAX_HOPS": "0"}, {"JOB_MAX_HOPS": "many"}, {"JOB_DEADLINE_MARGIN_MS": "-1"}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            env.load(env.JobEnvironment, {**BASE, **bad})


def test_the_webhook_needs_a_secret_and_never_shows_it() -> None:
    with pytest.raises(ConfigurationError, match="STRIPE_WEBHOOK_SECRET"):
        env.load(env.WebhookEnvironment, BASE)
    local = env.load(env.WebhookEnvironment, {**BASE, "STRIPE_WEBHOOK_SECRET": "whsec_x"})
    assert "whsec_x" not in repr(local)
    assert env.load(env.WebhookEnvironment, {**BASE, "STRIPE_WEBHOOK_SECRET_PARAMETER": "/credits/wh"})
    assert local.stripe_mode == "test"
    with pytest.raises(ConfigurationError, match="STRIPE_MODE"):
        env.load(env.WebhookEnvironment, {**BASE, "STRIPE_WEBHOOK_SECRET": "whsec_x", "STRIPE_MODE": "prod"})


def test_the_api_runs_without_a_bootstrap_key_and_never_shows_one() -> None:
    assert env.load(env.ApiEnvironment, BASE).admin_key is None
    assert "ck_secret" not in repr(env.load(env.ApiEnvironment, {**BASE, "CREDITS_ADMIN_KEY": "ck_secret"}))


def test_checked_at_start_up_only_inside_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TABLE_NAME", raising=False)
    monkeypatch.delenv("LAMBDA_TASK_ROOT", raising=False)
    assert env.at_start_up(env.FunctionEnvironment) is None
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    with pytest.raises(ConfigurationError, match="TABLE_NAME"):
        env.at_start_up(env.FunctionEnvironment)
