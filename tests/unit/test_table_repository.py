"""The batched read every repository shares: chunks of at most 100 keys, unprocessed keys asked again after a
growing pause (never a tight loop against a throttled table), absent keys simply missing."""

from __future__ import annotations

from typing import Any

import pytest

from credits_ledger.dal import client as dal_client
from credits_ledger.dal.client import TableRepository


class FakeDynamo:
    """Holds items by pk; leaves the first ``unprocessed`` keys of the first calls unprocessed."""

    def __init__(self, items: dict[str, dict[str, Any]], unprocessed_calls: int = 0) -> None:
        self.items = items
        self.unprocessed_calls = unprocessed_calls
        self.requests: list[dict[str, Any]] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(RequestItems)
        ((table, request),) = RequestItems.items()
        assert len(request["Keys"]) <= 100
        keys = request["Keys"]
        left: list[dict[str, Any]] = []
        if self.unprocessed_calls:
            self.unprocessed_calls -= 1
            keys, left = keys[:1], keys[1:]
        found = [self.items[k["pk"]["S"]] for k in keys if k["pk"]["S"] in self.items]
        answer: dict[str, Any] = {"Responses": {table: found}}
        if left:
            answer["UnprocessedKeys"] = {table: {**request, "Keys": left}}
        return answer


def key(n: int) -> dict[str, Any]:
    return {"pk": {"S": f"K{n}"}, "sk": {"S": "X"}}


def test_reads_more_than_100_keys_in_chunks_and_skips_absent_ones() -> None:
    items = {f"K{n}": {**key(n), "v": {"N": str(n)}} for n in range(0, 250, 2)}  # every other key exists
    fake = FakeDynamo(items)
    repo = TableRepository(fake, "T")
    found = repo._batch_get([key(n) for n in range(250)], consistent=False, ProjectionExpression="pk, v")
    assert sorted(int(i["v"]["N"]) for i in found) == list(range(0, 250, 2))
    assert [len(r["T"]["Keys"]) for r in fake.requests] == [100, 100, 50]
    assert all(
        r["T"]["ConsistentRead"] is False and r["T"]["ProjectionExpression"] == "pk, v" for r in fake.requests
    )


def test_unprocessed_keys_are_asked_again_after_a_growing_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(dal_client.time, "sleep", pauses.append)
    items = {f"K{n}": key(n) for n in range(5)}
    fake = FakeDynamo(items, unprocessed_calls=3)
    found = TableRepository(fake, "T")._batch_get([key(n) for n in range(5)])
    assert sorted(i["pk"]["S"] for i in found) == [f"K{n}" for n in range(5)]
    assert len(fake.requests) == 4
    assert pauses == [0.02, 0.04, 0.08]
