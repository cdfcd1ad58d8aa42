"""Path and query parameters shared by several route modules."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path

CustomerId = Annotated[str, Path(min_length=1, max_length=255, description="account id (Stripe customer id)")]
