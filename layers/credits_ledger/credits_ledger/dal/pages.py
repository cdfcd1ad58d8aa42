"""Pages of a Query, the opaque cursors clients resume them with, and walking every page."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from credits_ledger.domain.errors import InvalidCursor


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    """A Query's LastEvaluatedKey as a client's cursor (URL-safe base64 of its JSON); None: no more pages."""
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """The ExclusiveStartKey a cursor stands for; InvalidCursor (400) for anything we did not issue."""
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError) as exc:
        raise InvalidCursor() from exc
    if not isinstance(key, dict):
        raise InvalidCursor()
    return key


P = TypeVar("P", bound=Page)


def pages(read: Callable[[str | None], P], cursor: str | None = None) -> Iterator[tuple[str | None, P]]:
    """Every page ``read(cursor)`` returns, from ``cursor`` to the last, each with the cursor it was read
    with (where a job stopped by its deadline resumes)."""
    while True:
        page = read(cursor)
        yield cursor, page
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
