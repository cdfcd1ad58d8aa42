"""dal/client.py (what a failed write means) and dal/pages.py (cursors, walking pages), without AWS."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from credits_ledger.dal.client import (
    cancellation_codes,
    error_code,
    failed_condition,
    raise_unless_cancelled,
)
from credits_ledger.dal.pages import Page, decode_cursor, encode_cursor, pages
from credits_ledger.domain.errors import InvalidCursor, WriteRejected


def _error(code: str, reasons: list[dict[str, Any]] | None = None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": f"{code} (injected)"}}
    if reasons is not None:
        response["CancellationReasons"] = reasons
    return ClientError(response, "TransactWriteItems")  # type: ignore[arg-type]


def test_a_failed_condition_is_named() -> None:
    assert failed_condition(_error("ConditionalCheckFailedException"))
    assert not failed_condition(_error("TransactionCanceledException", []))
    assert error_code(ClientError({}, "PutItem")) == ""  # type: ignore[arg-type]


def test_cancellation_codes_in_action_order() -> None:
    exc = _error("TransactionCanceledException", [{"Code": "None"}, {"Code": "ConditionalCheckFailed"}, {}])
    assert cancellation_codes(exc) == ["None", "ConditionalCheckFailed", "None"]


@pytest.mark.parametrize("reason", ["ConditionalCheckFailed", "TransactionConflict", "ThrottlingError"])
def test_a_cancellation_a_new_attempt_may_overcome_returns(reason: str) -> None:
    raise_unless_cancelled(_error("TransactionCanceledException", [{"Code": "None"}, {"Code": reason}]))


def test_a_cancellation_dynamodb_will_repeat_is_rejected() -> None:
    too_large = _error("TransactionCanceledException", [{"Code": "ValidationError", "Message": "Item size"}])
    with pytest.raises(WriteRejected):
        raise_unless_cancelled(too_large)


def test_any_other_error_is_raised_as_it_is() -> None:
    throttled = _error("ProvisionedThroughputExceededException")
    with pytest.raises(ClientError) as raised:
        raise_unless_cancelled(throttled)
    assert raised.value is throttled


def test_cursors_round_trip_and_refuse_what_was_not_issued() -> None:
    key = {"pk": {"S": "ACCOUNT#cus_1"}, "sk": {"S": "GRANT#gr_1"}}
    cursor = encode_cursor(key)
    assert cursor is not None and decode_cursor(cursor) == key
    assert encode_cursor(None) is None and decode_cursor(None) is None
    for forged in ("not base64!", encode_cursor({"x": 1})[:-2] + "$$", "WzFd"):  # "[1]": not an object
        with pytest.raises(InvalidCursor):
            decode_cursor(forged)


def test_pages_follow_the_cursor_to_the_end_with_the_cursor_each_was_read_with() -> None:
    book = {None: Page([1, 2], "b"), "b": Page([3], "c"), "c": Page([], None)}
    read: list[str | None] = []

    def fetch(cursor: str | None) -> Page:
        read.append(cursor)
        return book[cursor]

    walked = list(pages(fetch))
    assert [(cursor, page.items) for cursor, page in walked] == [(None, [1, 2]), ("b", [3]), ("c", [])]
    assert read == [None, "b", "c"]
    assert [cursor for cursor, _ in pages(fetch, "b")] == ["b", "c"]  # resumes where a run stopped
