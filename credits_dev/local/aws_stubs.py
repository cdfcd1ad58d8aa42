"""The few AWS APIs the functions may call besides DynamoDB, answered by the local stack itself on its own
port (the functions' SDK is pointed here with ``AWS_ENDPOINT_URL_EVENTS`` / ``_SSM`` / ``_SECRETS_MANAGER``):

* EventBridge ``PutEvents``: events are logged to the console, the last 1,000 kept in memory (served at
  ``GET /_local/events``) and delivered to functions whose ``EventBridgeRule`` pattern matches.
* SSM ``GetParameter``/``GetParameters`` and Secrets Manager ``GetSecretValue``: the local values of the
  template's secret parameters (admin key, webhook secret), never AWS.

All are AWS JSON 1.1 protocol calls: ``POST /`` with ``X-Amz-Target: <Service>.<Operation>``.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from credits_dev.local.patterns import matches
from credits_dev.local.template import ACCOUNT_ID, REGION

MAX_EVENTS = 1000
MAX_ENTRIES = 10


class AwsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


Subscriber = Callable[[dict[str, Any]], None]


class EventBus:
    """The local EventBridge: every bus of the template, one ring buffer."""

    def __init__(self, log: Callable[[str], None] = print, quiet: bool = False) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.lock = threading.Lock()
        self.log = log
        self.quiet = quiet
        self.rules: list[tuple[str, str, Any, Subscriber]] = []  # (name, bus, pattern, deliver)

    def subscribe(self, name: str, bus: str, pattern: Any, deliver: Subscriber) -> None:
        self.rules.append((name, bus, pattern, deliver))

    def put_events(self, entries: list[Mapping[str, Any]]) -> dict[str, Any]:
        if not entries or len(entries) > MAX_ENTRIES:
            raise AwsError(400, "ValidationException", f"Entries must hold 1 to {MAX_ENTRIES} events")
        results: list[dict[str, Any]] = []
        failed = 0
        for entry in entries:
            missing = [k for k in ("Source", "DetailType", "Detail") if not entry.get(k)]
            if missing:
                failed += 1
                results.append(
                    {
                        "ErrorCode": "InvalidArgument",
                        "ErrorMessage": f"Parameter(s) {', '.join(missing)} must be specified.",
                    }
                )
                continue
            try:
                detail = json.loads(entry["Detail"])
            except (TypeError, ValueError):
                failed += 1
                results.append({"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed."})
                continue
            bus = str(entry.get("EventBusName") or "default").rsplit("/", 1)[-1]
            when = entry.get("Time")
            moment = (
                dt.datetime.fromtimestamp(float(when), dt.UTC)
                if isinstance(when, int | float)
                else dt.datetime.now(dt.UTC)
            )
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": entry["DetailType"],
                "source": entry["Source"],
                "account": ACCOUNT_ID,
                "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": REGION,
                "resources": list(entry.get("Resources") or []),
                "detail": detail,
            }
            with self.lock:
                self.events.append({**event, "event-bus-name": bus})
            results.append({"EventId": event["id"]})
            if not self.quiet:
                text = json.dumps(detail, separators=(",", ":"))
                self.log(
                    f"event  {bus}  {event['source']}  {event['detail-type']}  "
                    f"{text if len(text) <= 300 else text[:297] + '...'}"
                )
            for name, rule_bus, pattern, deliver in self.rules:
                if rule_bus == bus and matches(pattern, event):
                    self.log(f"event  -> rule {name}")
                    deliver(event)
        return {"FailedEntryCount": failed, "Entries": results}

    def recent(
        self, limit: int = MAX_EVENTS, source: str | None = None, detail_type: str | None = None
    ) -> list[dict[str, Any]]:
        with self.lock:
            events = list(self.events)
        if source:
            events = [e for e in events if e["source"] == source]
        if detail_type:
            events = [e for e in events if e["detail-type"] == detail_type]
        return events[-limit:]

    def clear(self) -> None:
        with self.lock:
            self.events.clear()


class AwsStubs:
    def __init__(self, bus: EventBus, secrets: Mapping[str, str]) -> None:
        self.bus = bus
        self.secrets = secrets  # parameter / secret name or ARN -> value (filled while the template is read)

    def handle(self, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, _error("SerializationException", "body is not JSON")
        service, _, operation = target.partition(".")
        try:
            if service == "AWSEvents" and operation == "PutEvents":
                return 200, self.bus.put_events(list(request.get("Entries") or []))
            if service == "AmazonSSM" and operation == "GetParameter":
                return 200, {"Parameter": self._parameter(str(request.get("Name", "")))}
            if service == "AmazonSSM" and operation == "GetParameters":
                found, invalid = [], []
                for name in request.get("Names") or []:
                    try:
                        found.append(self._parameter(str(name)))
                    except AwsError:
                        invalid.append(name)
                return 200, {"Parameters": found, "InvalidParameters": invalid}
            if service == "secretsmanager" and operation == "GetSecretValue":
                return 200, self._secret(str(request.get("SecretId", "")))
        except AwsError as exc:
            return exc.status, _error(exc.code, exc.message)
        return 400, _error("UnknownOperationException", f"the local stack does not implement {target}")

    def _lookup(self, name: str) -> str | None:
        if name in self.secrets:
            return self.secrets[name]
        short = name.split(":parameter", 1)[-1] if name.startswith("arn:") else name
        return self.secrets.get(short)

    def _parameter(self, name: str) -> dict[str, Any]:
        value = self._lookup(name)
        if value is None:
            raise AwsError(400, "ParameterNotFound", f"parameter {name} is not known to the local stack")
        return {
            "Name": name,
            "Type": "SecureString",
            "Value": value,
            "Version": 1,
            "ARN": f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/{name.lstrip('/')}",
            "DataType": "text",
        }

    def _secret(self, secret_id: str) -> dict[str, Any]:
        value = self._lookup(secret_id)
        if value is None:
            raise AwsError(
                400, "ResourceNotFoundException", f"secret {secret_id} is not known to the local stack"
            )
        return {
            "ARN": secret_id
            if secret_id.startswith("arn:")
            else f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:{secret_id}",
            "Name": secret_id.rsplit(":", 1)[-1],
            "SecretString": value,
            "VersionId": "local",
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 0,
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"__type": code, "message": message}
