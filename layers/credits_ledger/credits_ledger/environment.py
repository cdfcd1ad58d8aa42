"""Each function's environment as a typed model, checked when the function starts: a missing or malformed
setting stops the function with a message naming it, instead of a default that quietly does something else
(a missing ``EVENT_BUS_NAME`` used to switch to a bus that only logs).

    environment.at_start_up(PublishingJobEnvironment)  # handler module: inside Lambda, fail the init phase
    env = environment.load(JobEnvironment)             # where the settings are used

Inside Lambda (``LAMBDA_TASK_ROOT`` set) the handler modules load their model at import, so a bad
deployment fails its init, visibly, before any event. Elsewhere (tests, the local stack, which sets each
function's variables at invocation) the model is loaded where the settings are first used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from credits_ledger.domain.errors import CreditsError

DEFAULT_DEADLINE_MARGIN_MS = 30_000
DEFAULT_MAX_HOPS = 50
LOG_ONLY_BUS = "log-only"


class ConfigurationError(CreditsError, RuntimeError):
    """A function's environment lacks a setting or holds a malformed one (the message names each)."""


class FunctionEnvironment(BaseModel):
    """What every function reads: the table (``template.yaml`` Globals) and, locally, another pricing file."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    table_name: str = Field(alias="TABLE_NAME", min_length=1)
    pricing_file: str | None = Field(default=None, alias="CREDITS_PRICING_FILE")


class ApiEnvironment(FunctionEnvironment):
    """ApiFunction: the bootstrap admin key, from the environment (local) or an SSM parameter (AWS); neither
    is a valid setup (then only issued keys work)."""

    admin_key: str | None = Field(default=None, alias="CREDITS_ADMIN_KEY", repr=False)
    admin_key_parameter: str | None = Field(default=None, alias="ADMIN_KEY_PARAMETER")


class WebhookEnvironment(FunctionEnvironment):
    """StripeWebhookFunction: the endpoint secret(s), from the environment (local) or an SSM parameter."""

    webhook_secret: str | None = Field(default=None, alias="STRIPE_WEBHOOK_SECRET", repr=False)
    webhook_secret_parameter: str | None = Field(default=None, alias="STRIPE_WEBHOOK_SECRET_PARAMETER")
    # the deployment's Stripe mode (template parameter StripeMode): events of the other mode are ignored
    stripe_mode: Literal["test", "live"] = Field(default="test", alias="STRIPE_MODE")

    @model_validator(mode="after")
    def _a_secret(self) -> WebhookEnvironment:
        if not (self.webhook_secret or self.webhook_secret_parameter):
            raise ValueError(
                "set STRIPE_WEBHOOK_SECRET or STRIPE_WEBHOOK_SECRET_PARAMETER (every delivery would be 400)"
            )
        return self


class PublishingEnvironment(FunctionEnvironment):
    """Functions that publish on the EventBridge bus. ``CREDITS_EVENT_BUS=log-only`` (asked for explicitly,
    for a run without EventBridge) logs the events instead; otherwise ``EVENT_BUS_NAME`` is required."""

    event_bus_name: str | None = Field(default=None, alias="EVENT_BUS_NAME")
    event_bus: Literal["eventbridge", "log-only"] = Field(default="eventbridge", alias="CREDITS_EVENT_BUS")

    @model_validator(mode="after")
    def _a_bus(self) -> PublishingEnvironment:
        if self.event_bus == "eventbridge" and not self.event_bus_name:
            raise ValueError(
                f"set EVENT_BUS_NAME (or CREDITS_EVENT_BUS={LOG_ONLY_BUS} to log events instead of publishing)"
            )
        return self


class JobEnvironment(FunctionEnvironment):
    """The scheduled jobs (expiry, reconcile): how close to the deadline a run stops and re-invokes itself,
    and how many times it may."""

    deadline_margin_ms: int = Field(default=DEFAULT_DEADLINE_MARGIN_MS, ge=0, alias="JOB_DEADLINE_MARGIN_MS")
    max_hops: int = Field(default=DEFAULT_MAX_HOPS, ge=1, alias="JOB_MAX_HOPS")


class PublishingJobEnvironment(PublishingEnvironment, JobEnvironment):
    """ExpiryFunction and ReconcileFunction: a scheduled job that publishes."""


Model = TypeVar("Model", bound=FunctionEnvironment)


def load(model: type[Model], environ: Mapping[str, str] | None = None) -> Model:
    """``model`` from ``environ`` (default: the process environment); ConfigurationError names every problem."""
    try:
        return model.model_validate(dict(os.environ if environ is None else environ))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'environment'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"{model.__name__} is not configured: {problems}") from None


def at_start_up(model: type[Model]) -> Model | None:
    """Inside Lambda, ``load(model)`` now (a failure fails the init phase); elsewhere nothing, see above."""
    return load(model) if os.environ.get("LAMBDA_TASK_ROOT") else None
