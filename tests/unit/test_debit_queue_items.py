"""The debit queue's item layout (dal/debit_queue.py): a queued debit reads back as the request it was."""

from __future__ import annotations

from decimal import Decimal

from credits_ledger.dal import items as it
from credits_ledger.dal.debit_queue import (
    KEEP_SECONDS,
    Answer,
    Lease,
    QueuedDebit,
    queued_from_item,
    queued_to_item,
)
from credits_ledger.domain.debits import DebitRequest


def test_a_queued_debit_reads_back_as_the_request_it_was() -> None:
    request = DebitRequest(
        key="usage:cus_1:evt_1",
        amount=Decimal("1.333333"),
        fingerprint="fp",
        reference="evt_1",
        metadata={"meter": "tokens", "quantity": "3"},
        allow_overage=True,
    )
    item = queued_to_item("cus_1", QueuedDebit(request, "owner-1", 1_700_000_000_123, 1_700_000_008_500))
    stored = it.from_dynamo(it.to_dynamo(item))
    assert (stored["pk"], stored["sk"]) == ("ACCOUNT#cus_1", "DEBIT#usage:cus_1:evt_1")
    assert stored["ttl"] == 1_700_000_008 + KEEP_SECONDS
    assert queued_from_item(stored) == QueuedDebit(request, "owner-1", 1_700_000_000_123, 1_700_000_008_500)
    answered = queued_from_item({**stored, "answer": "decide_alone"})
    assert answered.answer is Answer.DECIDE_ALONE


def test_a_bare_queued_debit_reads_back_with_defaults() -> None:
    request = DebitRequest(key="k", amount=Decimal(2))
    stored = it.from_dynamo(it.to_dynamo(queued_to_item("a", QueuedDebit(request, "o", 5, 6))))
    assert queued_from_item(stored).request == request


def test_a_lease_is_free_only_after_its_end() -> None:
    lease = Lease("holder", until_ms=1_000)
    assert not lease.free_at(999) and not lease.free_at(1_000) and lease.free_at(1_001)
