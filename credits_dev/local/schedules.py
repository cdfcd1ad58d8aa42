"""Schedules of the template (``Schedule`` / ``ScheduleV2`` events), fired on their own when
``CREDITS_RUN_SCHEDULES=1``, plus the Scheduled Event that ``credits expire --now`` sends.

Timing is an approximation of EventBridge's: ``rate(N unit)`` fires every N units counted from the start of
the stack (not on the first one); ``cron(...)`` fires at the next matching minute, UTC (minutes, hours,
day of month, month, day of week with ``* , - /`` and ``?``; ``L``, ``W`` and ``#`` are read as ``*``);
``at(...)`` fires once; cron and at are read in the schedule's ``ScheduleExpressionTimezone``. No catch-up
for times the stack was not running.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from credits_dev.local.template import ACCOUNT_ID, REGION, Function, Schedule

UTC = dt.UTC
_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
_MONTHS = {
    m: i
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
    )
}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], 1)}  # cron: 1 = Sunday


def scheduled_event(when: dt.datetime, resource: str = "", source: str = "aws.events") -> dict[str, Any]:
    """An EventBridge ``Scheduled Event`` for ``when`` (UTC)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": source,
        "account": ACCOUNT_ID,
        "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [resource] if resource else [],
        "detail": {},
    }


def event_for(function: Function, schedule: Schedule, when: dt.datetime) -> Any:
    arn = f"arn:aws:scheduler:{REGION}:{ACCOUNT_ID}:schedule/default/{function.logical_id}-{schedule.name}"
    if schedule.input is not None:
        text = (
            schedule.input.replace("<aws.scheduler.scheduled-time>", when.strftime("%Y-%m-%dT%H:%M:%SZ"))
            .replace("<aws.scheduler.execution-id>", str(uuid.uuid4()))
            .replace("<aws.scheduler.schedule-arn>", arn)
            .replace("<aws.scheduler.attempt-number>", "1")
        )
        try:
            return json.loads(text)
        except ValueError:
            return text
    if schedule.kind == "ScheduleV2":
        return scheduled_event(when, arn, "aws.scheduler")
    rule_arn = f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{function.logical_id}-{schedule.name}"
    return scheduled_event(when, rule_arn)


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int]:
    if text in ("*", "?") or any(c in text for c in "LW#"):
        return set(range(low, high + 1))
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
        if part in ("*", ""):
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, names), _value(b, names)
        else:
            start = _value(part, names)
            end = high if step > 1 else start
        values.update(range(start, end + 1, step))
    return values


def _value(text: str, names: dict[str, int] | None) -> int:
    upper = text.upper()
    if names and upper in names:
        return names[upper]
    return int(text)


def next_fire(expression: str, after: dt.datetime, started: dt.datetime | None = None) -> dt.datetime | None:
    """The next time ``expression`` fires strictly after ``after`` (UTC), None if never again."""
    expr = expression.strip()
    rate = re.fullmatch(r"rate\(\s*(\d+)\s+(\w+)\s*\)", expr)
    if rate:
        seconds = int(rate.group(1)) * _UNITS[rate.group(2).lower()]
        origin = started or after
        periods = int((after - origin).total_seconds() // seconds) + 1
        return origin + dt.timedelta(seconds=seconds * periods)
    at = re.fullmatch(r"at\(\s*([0-9T:\-]+)\s*\)", expr)
    if at:
        moment = dt.datetime.fromisoformat(at.group(1)).replace(tzinfo=after.tzinfo or UTC)
        return moment if moment > after else None
    cron = re.fullmatch(r"cron\((.+)\)", expr)
    if not cron:
        raise ValueError(f"unsupported schedule expression {expression!r}")
    fields = cron.group(1).split()
    if len(fields) != 6:
        raise ValueError(f"cron needs 6 fields: {expression!r}")
    minutes = _field(fields[0], 0, 59)
    hours = _field(fields[1], 0, 23)
    dom_any = fields[2] in ("*", "?")
    dow_any = fields[4] in ("*", "?")
    days = _field(fields[2], 1, 31)
    months = _field(fields[3], 1, 12, _MONTHS)
    weekdays = _field(fields[4], 1, 7, _DAYS)
    years = None if fields[5] in ("*", "?") else _field(fields[5], 1970, 2199)
    moment = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    for _ in range(366 * 24 * 60 * 2):
        weekday = (moment.isoweekday() % 7) + 1  # Sunday = 1
        day_ok = (dom_any or moment.day in days) and (dow_any or weekday in weekdays)
        if (
            moment.minute in minutes
            and moment.hour in hours
            and moment.month in months
            and day_ok
            and (years is None or moment.year in years)
        ):
            return moment
        moment += dt.timedelta(minutes=1)
    return None


def fire_after(
    schedule: Schedule, after: dt.datetime, started: dt.datetime | None = None
) -> dt.datetime | None:
    """next_fire() in the schedule's ScheduleExpressionTimezone, returned in UTC."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(schedule.timezone) if schedule.timezone not in ("UTC", "Etc/UTC") else UTC
    local_started = started.astimezone(zone) if started else None
    moment = next_fire(schedule.expression, after.astimezone(zone), local_started)
    return moment.astimezone(UTC) if moment is not None else None


class Scheduler:
    """One thread per enabled schedule; ``invoke(function, event)`` runs the function."""

    def __init__(
        self,
        functions: list[Function],
        invoke: Callable[[Function, Any], None],
        log: Callable[[str], None] = print,
    ) -> None:
        self.functions = functions
        self.invoke = invoke
        self.log = log
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> list[str]:
        started = dt.datetime.now(UTC)
        lines = []
        for fn in self.functions:
            for schedule in fn.schedules:
                if not schedule.enabled:
                    lines.append(
                        f"{fn.logical_id}.{schedule.name}: {schedule.expression} (disabled in template)"
                    )
                    continue
                try:
                    first = fire_after(schedule, started, started)
                except (ValueError, KeyError) as exc:
                    lines.append(f"{fn.logical_id}.{schedule.name}: not run locally ({exc})")
                    continue
                thread = threading.Thread(
                    target=self._loop,
                    args=(fn, schedule, started),
                    daemon=True,
                    name=f"schedule-{fn.logical_id}-{schedule.name}",
                )
                thread.start()
                self.threads.append(thread)
                lines.append(
                    f"{fn.logical_id}.{schedule.name}: {schedule.expression}, next at "
                    f"{first:%Y-%m-%d %H:%M:%S}Z"
                    if first
                    else f"{fn.logical_id}.{schedule.name}: never"
                )
        return lines

    def _loop(self, fn: Function, schedule: Schedule, started: dt.datetime) -> None:
        now = dt.datetime.now(UTC)
        while not self.stopping.is_set():
            when = fire_after(schedule, now, started)
            if when is None:
                return
            if self.stopping.wait(max(0.0, (when - dt.datetime.now(UTC)).total_seconds())):
                return
            self.log(f"schedule {fn.logical_id}.{schedule.name} fires ({when:%Y-%m-%dT%H:%M:%SZ})")
            try:
                self.invoke(fn, event_for(fn, schedule, when))
            except Exception as exc:  # keep the schedule alive
                self.log(f"schedule {fn.logical_id}.{schedule.name}: {exc}")
            now = when

    def stop(self) -> None:
        self.stopping.set()
