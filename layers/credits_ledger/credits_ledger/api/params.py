"""Path and query parameters shared by several route modules."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BeforeValidator

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _utc_day(value: Any) -> Any:
    # pydantic's lax dates would also take unix seconds ("0" is 1970-01-01) and midnight datetimes
    if isinstance(value, str) and not _DAY.fullmatch(value):
        raise ValueError("must be a day, YYYY-MM-DD")
    return value


# A query parameter naming a UTC day: exactly YYYY-MM-DD (a day that does not exist is refused by the date).
UtcDay = Annotated[date, BeforeValidator(_utc_day)]

CustomerId = Annotated[str, Path(min_length=1, max_length=255, description="account id (Stripe customer id)")]
