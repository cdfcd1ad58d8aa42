"""What every scheduled job shares: the EventBridge ``Scheduled Event`` it is given, a deadline that stops
it cleanly before Lambda would kill it, and the asynchronous self re-invocation that continues the run.

The schedule (EventBridge Scheduler, ``ScheduleV2`` in template.yaml) sends an ``Input`` shaped like the
classic EventBridge ``Scheduled Event``, with ``time`` = ``<aws.scheduler.scheduled-time>``: the run's "now"
is the instant it was *scheduled* for, so a retried or late delivery still decides as of the same instant.
A continuation is the same event (same ``id``, same ``time``) plus ``detail.continuation`` = where to resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from credits_ledger import aws
from credits_ledger.environment import DEFAULT_DEADLINE_MARGIN_MS, JobEnvironment, load
from credits_ledger.observability import logger


class Continuation(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    phase: str
    cursor: str | None = None
    hop: int = Field(default=2, ge=1)  # the invocation number (1 = the scheduled one) that runs it


class ScheduledEvent(BaseModel):
    """The EventBridge ``Scheduled Event`` (rule or Scheduler ``Input``); only ``time`` is required."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", defer_build=True)

    id: str = "manual"
    detail_type: str = Field(default="Scheduled Event", alias="detail-type")
    source: str = "aws.scheduler"
    time: AwareDatetime
    resources: list[str] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def now(self) -> datetime:
        return self.time.astimezone(UTC)

    @property
    def continuation(self) -> Continuation | None:
        raw = self.detail.get("continuation")
        return Continuation.model_validate(raw) if raw else None

    def continued(self, continuation: Continuation) -> dict[str, Any]:
        """This event again, resuming at ``continuation``."""
        event = self.model_dump(by_alias=True, mode="json")
        event["time"] = self.now.isoformat().replace("+00:00", "Z")
        event["detail"] = {**self.detail, "continuation": continuation.model_dump()}
        return event


def run_phases(
    phases: Sequence[str], resume: Continuation | None, run_phase: Callable[[str, str | None], str | None]
) -> Continuation | None:
    """Run ``phases`` in order, starting with the one ``resume`` stopped in, at its cursor (from the first
    when ``resume`` names none of them). ``run_phase(phase, cursor)`` returns None when the phase is done,
    else the cursor to resume it with ("" = from its start). The continuation of the phase that stopped
    (numbered as the invocation after ``resume``'s), or None when every phase is done."""
    hop = (resume.hop if resume else 1) + 1  # the invocation number that would continue this run
    start = phases.index(resume.phase) if resume and resume.phase in phases else 0
    for phase in phases[start:]:
        cursor = resume.cursor if resume and phase == resume.phase else None
        stopped_at = run_phase(phase, cursor)
        if stopped_at is not None:
            return Continuation(phase=phase, cursor=stopped_at or None, hop=hop)
    return None


class LambdaContextLike(Protocol):
    invoked_function_arn: str

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class Deadline:
    """``near()`` once less than ``margin_ms`` of the invocation is left (never without a Lambda context)."""

    context: LambdaContextLike | None
    margin_ms: int = DEFAULT_DEADLINE_MARGIN_MS

    def near(self) -> bool:
        return self.context is not None and self.context.get_remaining_time_in_millis() < self.margin_ms


@cache
def lambda_client() -> Any:
    return aws.client("lambda")


def reinvoke_self(context: LambdaContextLike, event: dict[str, Any]) -> None:
    """Invoke this very function (its ARN from the context) asynchronously with ``event``."""
    lambda_client().invoke(
        FunctionName=context.invoked_function_arn,
        InvocationType="Event",
        Payload=json.dumps(event).encode(),
    )


class Summary(Protocol):
    continuation: Continuation | None

    def as_dict(self) -> dict[str, Any]: ...


def run_scheduled(
    event: dict[str, Any],
    context: LambdaContextLike | None,
    job: Callable[[ScheduledEvent, Deadline], Summary],
    reinvoke: Callable[[LambdaContextLike, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Parse the scheduled event, run ``job`` until done or near the deadline, and when it stopped early
    re-invoke this function asynchronously to continue (at most ``JOB_MAX_HOPS`` times per run; past that the
    remainder waits for the next scheduled run, which starts over from the index and finds it)."""
    scheduled = ScheduledEvent.model_validate(event)
    settings = load(JobEnvironment)
    margin = settings.deadline_margin_ms
    summary = job(scheduled, Deadline(context, margin))
    result = summary.as_dict()
    follow = summary.continuation
    if follow is None:
        return result
    max_hops = settings.max_hops
    if context is None or follow.hop > max_hops:
        logger.warning("run stopped early and is not continued", continuation=follow.model_dump())
        result["continued"] = False
        return result
    (reinvoke or reinvoke_self)(context, scheduled.continued(follow))
    logger.info("run continues in a new invocation", continuation=follow.model_dump())
    result["continued"] = True
    return result
