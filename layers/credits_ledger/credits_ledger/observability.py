"""The one place that builds Powertools' Logger, Metrics and Tracer, so every function logs and measures
alike. POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE (set in template.yaml) override the defaults.

The Tracer is built only where something is traced: inside Lambda with tracing on (Powertools' own rule:
``LAMBDA_TASK_ROOT`` set, not under ``sam local``, ``POWERTOOLS_TRACE_DISABLED`` not true). Building it imports
the X-Ray SDK and patches botocore, about a fifth of a handler's import; the local stack, the tests and the
tools never trace, so there ``tracer`` is a stand-in whose decorators return the function unchanged.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "credits")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Credits")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


def tracing_enabled() -> bool:
    """What Powertools' Tracer decides for itself (``Tracer._is_tracer_disabled``), without importing it."""
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in (
        "1",
        "t",
        "true",
        "y",
        "yes",
        "on",
    ):
        return False
    in_emulator = os.environ.get("AWS_SAM_LOCAL") or os.environ.get("AWS_CHALICE_CLI_MODE")
    return bool(os.environ.get("LAMBDA_TASK_ROOT")) and not in_emulator


class Untraced:
    """Tracer's decorators and calls where nothing is traced: the function itself, no X-Ray SDK."""

    def capture_lambda_handler(self, lambda_handler: Any = None, **_options: Any) -> Any:
        return lambda_handler if lambda_handler is not None else (lambda handler: handler)

    def capture_method(self, method: Any = None, **_options: Any) -> Any:
        return method if method is not None else (lambda function: function)

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        return None


def _tracer() -> Any:
    if not tracing_enabled():
        return Untraced()
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE)


tracer: Any = _tracer()
