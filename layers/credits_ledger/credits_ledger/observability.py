"""The one place that builds Powertools' Logger, Metrics and Tracer, so every function logs and measures
alike. POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE (set in template.yaml) override the defaults."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "credits")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Credits")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)
