"""Request combining on moto: a debit that lost its race for the account joins the account's queue, and the
writer holding the commit lease commits what is queued in one transaction (combining.py).

One process, so the other writers of a busy account are played by queued items put there directly (as
their Lambda instances would have queued them) and by a commit that loses its first race. The concurrent
version of these stories runs on DynamoDB Local in tests/concurrency/test_concurrent_debits.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.combining import CombinerTiming, epoch_ms
from credits_ledger.dal.accounts import VersionConflict
from credits_ledger.dal.debit_queue import MAX_SORT_KEY_BYTES, Answer, DebitQueue, queued_sort_key
from credits_ledger.domain.errors import ConcurrencyConflict, IdempotencyMismatch, InsufficientCredits
from credits_ledger.domain.idempotency import usage_key
from credits_ledger.domain.models import EntryType
from credits_ledger.ledger import QUEUE_BUSY, DebitRequest, Ledger
from credits_ledger.ledger import utc_now as ledger_now
from credits_ledger.retry import answering_by
from tests.support.faults import (
    before_first_call,
    fail_after_commit,
    first_race_loser,
    read_timeout,
    resend_after_commit,
)
from tests.support.ledger import FakeClock, all_entries, assert_books_balance, make_ledger, spec

D = Decimal
ACCT = "cus_busy"
TWI = "TransactWriteItems"


def debit(key: str, amount: str = "1") -> DebitRequest:
    return DebitRequest(key=key, amount=D(amount), fingerprint=f"fp-{key}-{amount}")


@pytest.fixture
def client(moto_tables: Any) -> Any:
    return moto_tables.client


@pytest.fixture
def table(moto_tables: Any) -> str:
    return str(moto_tables["CreditsTable"])


# Waiters that give up after 50 ms: the stories of a lease another writer keeps end without waiting 20 s
GIVES_UP_FAST = CombinerTiming(poll_seconds=0.001, max_wait_seconds=0.05)


def granted_ledger(client: Any, table: str, combiner_timing: CombinerTiming | None = None) -> Ledger:
    """This instance's ledger, on an account of one 10-credit grant."""
    ledger = make_ledger(client, table, FakeClock(), combiner_timing=combiner_timing)
    ledger.grant(ACCT, spec("gr_a", "10"), key="grant:a")
    return ledger


@pytest.fixture
def ledger(client: Any, table: str) -> Ledger:
    return granted_ledger(client, table)


@pytest.fixture
def queue(client: Any, table: str) -> DebitQueue:
    return DebitQueue(client, table)


@pytest.fixture
def transactions(client: Any) -> list[int]:
    """Each TransactWriteItems sent, by its number of actions."""
    sent: list[int] = []

    def count(params: Any, **_: Any) -> None:
        sent.append(len(params["TransactItems"]))

    client.meta.events.register(f"provide-client-params.dynamodb.{TWI}", count)
    return sent


def lose_first_race(monkeypatch: pytest.MonkeyPatch, ledger: Ledger) -> list[int]:
    """The first commit loses its race (another writer moved the version); later commits are real."""
    lost, commit = first_race_loser(ledger.repository)
    monkeypatch.setattr(ledger.repository, "commit", commit)
    return lost


def queued_items(client: Any, table: str) -> list[dict[str, Any]]:
    response = client.query(
        TableName=table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :d)",
        ExpressionAttributeValues={":pk": {"S": f"ACCOUNT#{ACCT}"}, ":d": {"S": "DEBIT"}},
        ConsistentRead=True,
    )
    return list(response["Items"])


def assert_queue_drained(ledger: Ledger, client: Any, table: str, balance: Decimal) -> None:
    """Nothing of the account is left in its queue, and its books balance at ``balance``."""
    assert queued_items(client, table) == []
    assert assert_books_balance(ledger, ACCT) == balance


def test_a_debit_that_lost_its_race_is_committed_through_the_queue(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, client: Any, table: str
) -> None:
    # Given a debit whose first commit loses the race for the account
    lost = lose_first_race(monkeypatch, ledger)
    # When it is sent
    outcome = ledger.debit(ACCT, debit("use:1", "3"))
    # Then it went through the queue, was committed once, and left neither its queued item nor the lease
    assert lost == [1]
    assert not outcome.replayed
    assert outcome.entry.amount == D(-3)
    assert [e.entry_key for e in all_entries(ledger, ACCT) if e.type is EntryType.DEBIT] == ["use:1"]
    assert_queue_drained(ledger, client, table, D(7))


def test_queued_debits_of_other_writers_are_committed_in_the_same_transaction(
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    queue: DebitQueue,
    client: Any,
    table: str,
    transactions: list[int],
) -> None:
    # Given two debits other writers queued for the account
    queue.enqueue(ACCT, debit("use:other:1", "2"), "owner-1", epoch_ms(), epoch_ms() + 60_000)
    queue.enqueue(ACCT, debit("use:other:2", "4"), "owner-2", epoch_ms(), epoch_ms() + 60_000)
    lose_first_race(monkeypatch, ledger)
    before = len(transactions)
    # When a third debit loses its race and takes the commit lease
    outcome = ledger.debit(ACCT, debit("use:mine", "1"))
    # Then one transaction wrote the three entries and removed the three queued items
    assert not outcome.replayed
    assert transactions[before:] == [1 + 3 + 3]
    keys = sorted(e.entry_key for e in all_entries(ledger, ACCT) if e.type is EntryType.DEBIT)
    assert keys == ["use:mine", "use:other:1", "use:other:2"]
    assert_queue_drained(ledger, client, table, D(3))
    # and the other writers, looking at their queued items, find their entries
    assert ledger.repository.entry("use:other:2") is not None


def calls_in_order(client: Any) -> list[str]:
    """The name of each DynamoDB operation sent from now on, in order."""
    sent: list[str] = []

    def record(model: Any, **_: Any) -> None:
        sent.append(model.name)

    client.meta.events.register("before-call.dynamodb", record)
    return sent


def hold_lease_until_first_pause(ledger: Ledger, queue: DebitQueue) -> None:
    """Another writer holds the account's commit lease until this instance's waiter first pauses (then it
    ends), so the waiter's first look finds it held and a later look finds it free, whatever the timing."""
    assert queue.take_lease(ACCT, "other-writer", epoch_ms(), epoch_ms() + 60_000)
    assert ledger._combiner is not None
    combiner = ledger._combiner
    pause = combiner._sleep

    def pause_then_release(seconds: float) -> None:
        queue.release_lease(ACCT, "other-writer")
        combiner._sleep = pause
        pause(seconds)

    combiner._sleep = pause_then_release


def send_contended_debit(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A debit that loses its race for the account (and so goes through its queue)."""
    with monkeypatch.context() as patched:
        lose_first_race(patched, ledger)
        ledger.debit(ACCT, debit("use:contended", "1"))


def test_after_a_lost_race_the_next_debit_joins_the_queue_without_reading_the_account(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, client: Any, table: str
) -> None:
    # Given a debit of this instance that lost its race for the account (remembered for a minute here: on a
    # loaded machine the contended debit's own trip through the queue can outlast the real second)
    monkeypatch.setattr("credits_ledger.ledger.QUEUE_BUSY", timedelta(minutes=1))
    send_contended_debit(ledger, monkeypatch)
    sent = calls_in_order(client)
    assert ledger._combiner is not None
    pause = ledger._combiner._sleep
    ledger._combiner._sleep = lambda seconds: (sent.append("pause"), pause(seconds))
    # When this instance sends the next debit of the account
    outcome = ledger.debit(ACCT, debit("use:next", "2"))
    # Then it is queued first thing (no read of the account that would only decide to queue it), its waiter
    # pauses before it looks (a look at once would find it still queued), and it is committed
    assert sent[:2] == ["PutItem", "pause"]
    assert not outcome.replayed and outcome.entry.amount == D(-2)
    assert_queue_drained(ledger, client, table, D(7))


def test_a_debit_of_a_busy_account_with_no_time_left_is_refused_before_any_write(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, client: Any, table: str
) -> None:
    # Given an instance that knows the account's queue busy, in an invocation with no time left
    import credits_ledger.retry as retry

    send_contended_debit(ledger, monkeypatch)
    monkeypatch.setattr(retry, "time_for", lambda seconds: False)
    sent = calls_in_order(client)
    # When it sends a debit of the account
    with pytest.raises(ConcurrencyConflict, match="no time left"):
        ledger.debit(ACCT, debit("use:late", "1"))
    # Then it answers 429 without a call: nothing queued, nothing written
    assert sent == []
    assert queued_items(client, table) == []


@pytest.mark.parametrize(
    "others", ["another-holder-committing", "other-debits-queued", "nobody"], ids=lambda others: others
)
def test_only_a_queued_debit_that_met_other_writers_sends_the_next_one_straight_to_the_queue(
    client: Any, table: str, queue: DebitQueue, others: str
) -> None:
    # Given an instance that never lost a race for the account, and a debit of it sent through the queue
    # while another writer holds the lease (until the waiter's first pause), or with the lease free and
    # another writer's debit queued (this waiter commits both), or with nobody else there
    ledger = granted_ledger(client, table)
    if others == "another-holder-committing":
        hold_lease_until_first_pause(ledger, queue)
    if others == "other-debits-queued":
        queue.enqueue(ACCT, debit("use:other", "1"), "owner-1", epoch_ms(), epoch_ms() + 60_000)
    assert ledger._combiner is not None
    ledger._combiner.debit(ACCT, debit("use:queued", "1"))
    sent = calls_in_order(client)
    # When the instance sends its next debit of the account
    ledger.debit(ACCT, debit("use:next", "1"))
    # Then after meeting other writers it is queued first thing; after committing the queue with nobody else
    # there it reads the account and is written alone
    if others == "nobody":
        assert sent == ["BatchGetItem", TWI]
    else:
        assert sent[0] == "PutItem"
    assert assert_books_balance(ledger, ACCT) == D(7 if others == "other-debits-queued" else 8)


def test_a_replay_through_the_queue_does_not_mark_the_account_busy(
    ledger: Ledger, client: Any, table: str, queue: DebitQueue
) -> None:
    # Given a debit committed earlier, and another writer's debit queued
    first = ledger.debit(ACCT, debit("use:1", "2"))
    queue.enqueue(ACCT, debit("use:other", "1"), "owner-1", epoch_ms(), epoch_ms() + 60_000)
    # When a retry of the first goes through the queue (its waiter commits the other debit and is answered
    # from the first entry)
    assert ledger._combiner is not None
    again = ledger._combiner.debit(ACCT, debit("use:1", "2"))
    assert again is not None and again.replayed and again.entry == first.entry
    # Then the instance's next debit still reads the account and is written alone
    sent = calls_in_order(client)
    ledger.debit(ACCT, debit("use:next", "1"))
    assert sent == ["BatchGetItem", TWI]


def test_a_waiter_whose_looks_come_back_slowly_looks_less_often(
    ledger: Ledger, queue: DebitQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account whose lease another writer holds, and a DynamoDB that answers each look in 300 ms
    assert ledger._combiner is not None
    combiner = ledger._combiner
    queue.take_lease(ACCT, "other-writer", epoch_ms(), epoch_ms() + 60_000)
    clock = [0.0]
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds

    real_look = DebitQueue.look

    def slow_look(self: DebitQueue, *args: Any) -> Any:
        clock[0] += 0.3
        return real_look(self, *args)

    monkeypatch.setattr(combiner, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(combiner, "_sleep", pause)
    monkeypatch.setattr(combiner, "_timing", CombinerTiming(max_wait_seconds=3.0))
    monkeypatch.setattr(DebitQueue, "look", slow_look)
    # When a debit waits in the queue until its longest wait
    with pytest.raises(ConcurrencyConflict, match="longest wait"):
        combiner.debit(ACCT, debit("use:slow", "1"))
    # Then it never looked again sooner than twice the 300 ms a look took (the first pauses of 10-80 ms would
    # have added to the load that made the looks slow), and nothing was written
    assert pauses and min(pauses) >= 0.6 - 1e-9  # the fake clock's float sums
    assert ledger.repository.entry("use:slow") is None


def test_a_refusal_after_a_lost_race_is_the_same_402_and_does_not_renew_the_hint(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any, table: str
) -> None:
    # Given an instance that knows the account's queue busy, with 9 credits left, and another writer's debit
    # of 1 queued (the refused debit's waiter commits it: it meets another writer)
    send_contended_debit(ledger, monkeypatch)
    hint = dict(ledger._queue_busy_until)
    queue.enqueue(ACCT, debit("use:other", "1"), "owner-1", epoch_ms(), epoch_ms() + 60_000)
    # When its next debit asks for more than is left
    with pytest.raises(InsufficientCredits) as refused:
        ledger.debit(ACCT, debit("use:too-much", "50"))
    # Then it is refused as without contention and nothing of it stays queued or written
    assert refused.value.available == D(8)
    assert ledger.repository.entry("use:too-much") is None
    assert queued_items(client, table) == []
    # and the refusal did not renew the hint (it lapses as it would have)
    assert ledger._queue_busy_until == hint
    # once lapsed, a debit reads the account first again
    ledger._queue_busy_until.clear()  # the hint's 1 s, passed
    sent = calls_in_order(client)
    with pytest.raises(InsufficientCredits):
        ledger.debit(ACCT, debit("use:too-much-2", "50"))
    assert set(sent) == {"BatchGetItem"}  # the reads of a 402 without contention, no queue put


def test_a_queued_debit_the_account_cannot_cover_is_decided_again_by_its_waiter(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any, table: str
) -> None:
    # Given another writer's queued debit that fits and this writer's that does not (10 available)
    queue.enqueue(ACCT, debit("use:fits", "6"), "owner-1", epoch_ms(), epoch_ms() + 60_000)
    lose_first_race(monkeypatch, ledger)
    # When this writer's debit of 5 goes through the queue after the 6
    with pytest.raises(InsufficientCredits) as refused:
        ledger.debit(ACCT, debit("use:zz-too-much", "5"))
    # Then it gets the same 402 as without contention (decided again alone on a fresh read), nothing of it
    # was written, and its answered queued item is gone
    assert refused.value.available == D(4)
    assert ledger.repository.entry("use:zz-too-much") is None
    assert ledger.repository.entry("use:fits") is not None
    assert_queue_drained(ledger, client, table, D(4))


def test_a_queued_debit_whose_key_was_committed_before_is_answered_from_that_entry(
    ledger: Ledger, queue: DebitQueue, client: Any, table: str
) -> None:
    # Given a debit committed earlier, and a retry of it that another writer queued
    first = ledger.debit(ACCT, debit("use:1", "2"))
    queue.enqueue(ACCT, debit("use:1", "2"), "owner-retry", epoch_ms(), epoch_ms() + 60_000)
    # When the account's queue is committed (by a contended debit of this writer)
    assert ledger._combiner is not None
    ledger._combiner.debit(ACCT, debit("use:2", "1"))
    # Then the retry is answered "replayed", never written twice
    (item,) = queued_items(client, table)
    assert item["answer"]["S"] == Answer.REPLAYED
    assert [e.entry_key for e in all_entries(ledger, ACCT)].count("use:1") == 1
    # and its owner answers from the first entry
    waited = ledger._combiner.debit(ACCT, debit("use:1", "2"))
    assert waited is not None and waited.entry == first.entry


def test_a_retry_sent_while_its_first_request_is_queued_waits_for_that_one(
    ledger: Ledger, queue: DebitQueue
) -> None:
    # Given a debit queued by a first request, then committed by the holder of the lease
    assert queue.enqueue(ACCT, debit("use:1", "2"), "first", epoch_ms(), epoch_ms() + 60_000)
    assert not queue.enqueue(ACCT, debit("use:1", "2"), "retry", epoch_ms(), epoch_ms() + 60_000)
    assert ledger._combiner is not None
    outcome = ledger._combiner.debit(ACCT, debit("use:1", "2"))
    # Then the retry is answered as a replay of that one entry
    assert outcome is not None and outcome.replayed
    # and a request under the same key asking for something else is sent back to be decided alone, where
    # it is refused as without contention
    assert ledger._combiner.debit(ACCT, debit("use:1", "3")) is None
    with pytest.raises(IdempotencyMismatch):
        ledger.debit(ACCT, debit("use:1", "3"))


def test_a_waiter_out_of_time_withdraws_its_debit_and_nothing_is_written(
    client: Any, table: str, queue: DebitQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account whose commit lease another writer holds and never uses (its instance stopped)
    ledger = granted_ledger(client, table, GIVES_UP_FAST)
    assert queue.take_lease(ACCT, "stuck", epoch_ms(), epoch_ms() + 60_000)
    lose_first_race(monkeypatch, ledger)
    # When a debit goes through the queue
    with pytest.raises(ConcurrencyConflict, match="waited its longest wait"):
        ledger.debit(ACCT, debit("use:late", "1"))
    # Then it withdrew itself: not written, not queued, and a later holder will never commit it
    assert ledger.repository.entry("use:late") is None
    assert [i["sk"]["S"] for i in queued_items(client, table)] == ["DEBIT_LEASE"]
    assert assert_books_balance(ledger, ACCT) == D(10)


def test_a_debit_withdrawn_while_being_committed_is_not_written(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any
) -> None:
    # Given another writer's queued debit, withdrawn by its owner just before the holder's transaction
    queue.enqueue(ACCT, debit("use:gone", "2"), "owner-gone", epoch_ms(), epoch_ms() + 60_000)
    withdrawn = before_first_call(client, TWI, lambda: queue.withdraw(ACCT, "use:gone", "owner-gone"))
    lose_first_race(monkeypatch, ledger)
    # When this writer's debit goes through the queue
    outcome = ledger.debit(ACCT, debit("use:mine", "1"))
    # Then the transaction that named the withdrawn debit failed whole, and the next one wrote only this one
    assert withdrawn == [True]
    assert not outcome.replayed
    assert ledger.repository.entry("use:gone") is None
    assert assert_books_balance(ledger, ACCT) == D(9)


def test_a_stale_queued_debit_is_never_committed(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any, table: str
) -> None:
    # Given a debit whose waiter's invocation is over (past its commit_by) before anyone committed it
    queue.enqueue(ACCT, debit("use:old", "2"), "owner-old", epoch_ms() - 9_000, epoch_ms() - 1)
    lose_first_race(monkeypatch, ledger)
    # When the queue is next committed
    ledger.debit(ACCT, debit("use:new", "1"))
    # Then it was dropped, not written: its client has been told something else, or nothing, by now
    assert ledger.repository.entry("use:old") is None
    assert_queue_drained(ledger, client, table, D(9))


def test_a_queue_commit_whose_answer_is_lost_is_answered_from_its_entry(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, client: Any, table: str
) -> None:
    # Given a debit going through the queue, whose transaction commits but whose answer is lost
    lose_first_race(monkeypatch, ledger)
    fail_after_commit(client, TWI)
    # When it is sent
    outcome = ledger.debit(ACCT, debit("use:1", "3"))
    # Then its waiter finds it left the queue and answers from the one entry written
    assert not outcome.replayed and outcome.entry.amount == D(-3)
    # and a retry under the same id is a replay of it; the lease was released for the next holder
    assert ledger.debit(ACCT, debit("use:1", "3")).replayed
    assert [e.entry_key for e in all_entries(ledger, ACCT)].count("use:1") == 1
    assert_queue_drained(ledger, client, table, D(7))


def test_a_queue_commit_that_failed_withdraws_the_debit_before_the_error_is_answered(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any, table: str
) -> None:
    # Given another writer's queued debit, and a holder whose transaction fails without committing
    queue.enqueue(ACCT, debit("use:other", "2"), "owner-other", epoch_ms(), epoch_ms() + 60_000)
    lose_first_race(monkeypatch, ledger)
    failed: list[int] = []

    def fail_once(**_: Any) -> None:
        if not failed:
            failed.append(1)
            raise read_timeout()

    client.meta.events.register(f"before-call.dynamodb.{TWI}", fail_once)
    # When this writer's debit is sent
    with pytest.raises(Exception, match="timeout"):
        ledger.debit(ACCT, debit("use:mine", "1"))
    # Then its error stands for a debit that is not and never will be written: it left the queue first
    assert ledger.repository.entry("use:mine") is None
    assert [i["sk"]["S"] for i in queued_items(client, table)] == ["DEBIT#use:other"]
    # and the other writer's debit is still queued for the next holder
    assert ledger._combiner is not None
    assert ledger._combiner.debit(ACCT, debit("use:other", "2")) is not None
    assert assert_books_balance(ledger, ACCT) == D(8)


def test_a_full_queue_is_committed_in_transactions_of_at_most_100_actions(
    client: Any, table: str, queue: DebitQueue, monkeypatch: pytest.MonkeyPatch, transactions: list[int]
) -> None:
    # Given an account of 60 one-credit grants (each debit below spends one grant and closes it) and 40 debits
    # other writers queued: one transaction for all would hold 1 + 40 entries + 40 closed grants + 40 removals
    # (no deadline to meet here: moto's large transactions are slow on a loaded machine)
    ledger = make_ledger(client, table, FakeClock(), combiner_timing=CombinerTiming(max_wait_seconds=600))
    for n in range(60):
        ledger.grant(ACCT, spec(f"gr_{n:03d}", "1"), key=f"grant:{n:03d}")
    for n in range(40):
        queue.enqueue(ACCT, debit(f"use:other:{n:02d}"), f"owner-{n}", epoch_ms(), epoch_ms() + 60_000)
    lose_first_race(monkeypatch, ledger)
    before = len(transactions)
    # When a contended debit commits the queue
    ledger.debit(ACCT, debit("use:zz-mine"))
    # Then every queued debit and its own were written, in transactions DynamoDB accepts
    sent = transactions[before:]
    assert len(sent) >= 2 and max(sent) <= 100
    assert queued_items(client, table) == []
    assert len([e for e in all_entries(ledger, ACCT) if e.type is EntryType.DEBIT]) == 41
    assert assert_books_balance(ledger, ACCT) == D(19)


def test_a_waiter_out_of_time_withdraws_even_when_the_lease_is_free(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, client: Any, table: str
) -> None:
    # Given a debit that lost its race, in an invocation with no time left for another attempt
    import credits_ledger.combining as combining

    monkeypatch.setattr(combining, "time_for", lambda seconds: False)
    leases: list[int] = []
    real_take = DebitQueue.take_lease

    def take_lease(self: DebitQueue, *args: Any) -> bool:
        leases.append(1)
        assert len(leases) < 20, "the waiter keeps taking the lease instead of giving up"
        return real_take(self, *args)

    monkeypatch.setattr(DebitQueue, "take_lease", take_lease)
    lose_first_race(monkeypatch, ledger)
    # When it is sent
    with pytest.raises(ConcurrencyConflict, match="no time left"):
        ledger.debit(ACCT, debit("use:late", "1"))
    # Then it withdrew at once (no commit started without time to finish), and nothing was written
    assert leases == []
    assert ledger.repository.entry("use:late") is None
    assert queued_items(client, table) == []


def test_a_queue_put_sent_again_after_it_committed_is_still_this_requests_own(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, client: Any, table: str
) -> None:
    # Given a debit that lost its race, whose queue put commits but is sent again by botocore (answer lost)
    resent = resend_after_commit(client, "PutItem")
    lose_first_race(monkeypatch, ledger)
    # When it is sent
    outcome = ledger.debit(ACCT, debit("use:1", "2"))
    # Then the re-send's failed condition found this request's own item: a first answer, not a replay
    assert resent == [1]
    assert not outcome.replayed
    assert_queue_drained(ledger, client, table, D(8))


def test_a_debit_queued_again_under_the_same_id_during_a_commit_is_written_as_queued_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any
) -> None:
    # Given another writer's queued debit of 2 that the holder reads, then, before its transaction, that
    # writer withdraws it and a new request with the same id queues a debit of 5 (a new owner)
    queue.enqueue(ACCT, debit("use:same", "2"), "owner-first", epoch_ms(), epoch_ms() + 60_000)
    swapped = before_first_call(
        client,
        TWI,
        lambda: (
            queue.withdraw(ACCT, "use:same", "owner-first"),
            queue.enqueue(ACCT, debit("use:same", "5"), "owner-second", epoch_ms(), epoch_ms() + 60_000),
        ),
    )
    lose_first_race(monkeypatch, ledger)
    # When this writer's debit commits the queue
    ledger.debit(ACCT, debit("use:mine", "1"))
    # Then the withdrawn debit of 2 was never written: the id holds the debit queued again, of 5
    assert swapped == [(True, True)]
    entry = ledger.repository.entry("use:same")
    assert entry is not None and entry.amount == D(-5)
    assert assert_books_balance(ledger, ACCT) == D(4)


def test_a_debit_whose_waiter_ran_out_while_the_holder_retried_is_not_written(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any, table: str
) -> None:
    # Given another writer's debit that must be committed within 300 ms (its invocation ends then), and a
    # holder whose first commit of the queue loses its race and is tried again only after that
    queue.enqueue(ACCT, debit("use:other", "2"), "owner-other", epoch_ms(), epoch_ms() + 300)
    real = ledger.repository.commit
    commits: list[int] = []

    def commit(change: Any, **kwargs: Any) -> None:
        commits.append(1)
        if len(commits) == 1:  # this writer's debit alone: lost, so it goes through the queue
            raise VersionConflict(None)
        if len(commits) == 2:  # the holder's first commit of the queue: lost, and slow
            time.sleep(0.4)
            raise VersionConflict(None)
        real(change, **kwargs)

    monkeypatch.setattr(ledger.repository, "commit", commit)
    # When this writer's debit is committed through the queue
    ledger.debit(ACCT, debit("use:mine", "1"))
    # Then the other debit, past its commit_by when the holder tried again, was not written but removed
    assert ledger.repository.entry("use:other") is None
    assert ledger.repository.entry("use:mine") is not None
    assert_queue_drained(ledger, client, table, D(9))


def test_a_withdrawal_that_meets_a_commit_under_way_looks_again(
    client: Any, table: str, queue: DebitQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a waiter out of time whose first withdrawal meets a transaction holding its item
    ledger = granted_ledger(client, table, GIVES_UP_FAST)
    assert queue.take_lease(ACCT, "stuck", epoch_ms(), epoch_ms() + 60_000)
    deletes: list[int] = []

    def conflict_once(**_: Any) -> None:
        deletes.append(1)
        if len(deletes) == 1:
            raise ClientError(
                {"Error": {"Code": "TransactionConflictException", "Message": "conflict"}}, "DeleteItem"
            )

    client.meta.events.register("before-call.dynamodb.DeleteItem", conflict_once)
    lose_first_race(monkeypatch, ledger)
    # When it gives up
    with pytest.raises(ConcurrencyConflict):
        ledger.debit(ACCT, debit("use:late", "1"))
    # Then it looked again and withdrew: a 429 for a debit not written and no longer queued
    assert len(deletes) >= 2
    assert ledger.repository.entry("use:late") is None
    assert [i["sk"]["S"] for i in queued_items(client, table)] == ["DEBIT_LEASE"]


def test_a_queue_put_that_landed_but_failed_is_withdrawn_before_the_error_is_answered(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, client: Any, table: str
) -> None:
    # Given a debit that lost its race, whose queue put lands but answers with an error
    fail_after_commit(client, "PutItem")
    lose_first_race(monkeypatch, ledger)
    # When it is sent
    with pytest.raises(Exception, match="timeout"):
        ledger.debit(ACCT, debit("use:1", "2"))
    # Then the error stands for a debit that is not and never will be written: it left the queue first
    assert ledger.repository.entry("use:1") is None
    assert_queue_drained(ledger, client, table, D(10))


def test_the_queue_is_read_longest_waiting_first(queue: DebitQueue) -> None:
    # Given two queued debits, the one whose key sorts first queued last
    now = epoch_ms()
    queue.enqueue(ACCT, debit("use:b"), "owner-b", now - 500, now + 60_000)
    queue.enqueue(ACCT, debit("use:a"), "owner-a", now, now + 60_000)
    # When a holder reads one
    (first,) = queue.waiting(ACCT, now, limit=1)
    # Then it is the one waiting longest, whatever its key
    assert first.request.key == "use:b"


def test_a_waiter_withdrawing_a_debit_whose_id_was_written_answers_from_that_entry(
    client: Any, table: str, queue: DebitQueue
) -> None:
    # Given a debit written under an id, and this request queued again under that id (as a put re-sent after
    # that debit was committed does), on an account whose lease another holder keeps
    ledger = granted_ledger(client, table, GIVES_UP_FAST)
    first = ledger.debit(ACCT, debit("use:1", "2"))
    assert queue.take_lease(ACCT, "stuck", epoch_ms(), epoch_ms() + 60_000)
    assert ledger._combiner is not None
    # When it runs out of time and withdraws
    outcome = ledger._combiner.debit(ACCT, debit("use:1", "2"))
    # Then it answers from the entry of its id, not 429: that debit was written
    assert outcome is not None and outcome.entry == first.entry
    assert [e.entry_key for e in all_entries(ledger, ACCT)].count("use:1") == 1


# ---- a committer that loses races: the account marked busy (issue 11's livelock) -------------------------------
def queue_busy_until_on_item(client: Any, table: str) -> int | None:
    item = client.get_item(
        TableName=table, Key={"pk": {"S": f"ACCOUNT#{ACCT}"}, "sk": {"S": "STATE"}}, ConsistentRead=True
    )["Item"]
    return int(item["queue_busy_until"]["N"]) if "queue_busy_until" in item else None


def test_a_committer_that_loses_a_race_marks_the_account_busy_before_it_tries_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, queue: DebitQueue, client: Any, table: str
) -> None:
    # Given another writer's queued debit, and a debit of this instance that loses its race and so commits
    # the queue; while the committer decides, another instance writes a debit alone (it read no busy hint)
    queue.enqueue(ACCT, debit("use:queued", "2"), "owner-queued", epoch_ms(), epoch_ms() + 60_000)
    other_instance = make_ledger(client, table, FakeClock())
    real = ledger.repository.commit
    commits: list[int] = []
    seen_at_retry: list[int | None] = []
    retried_at: list[int] = []

    def commit(change: Any, **kwargs: Any) -> None:
        commits.append(1)
        if len(commits) == 1:  # this debit alone: it loses, so it joins the queue and takes the lease
            raise VersionConflict(None)
        if len(commits) == 2:  # the committer's transaction: another instance's debit lands first, for real
            other_instance.debit(ACCT, debit("use:alone", "1"))
        if len(commits) == 3:  # the committer tries again: what the account item says by then
            seen_at_retry.append(queue_busy_until_on_item(client, table))
            retried_at.append(int(time.time() * 1_000_000))
        real(change, **kwargs)

    monkeypatch.setattr(ledger.repository, "commit", commit)
    # When this debit is sent
    outcome = ledger.debit(ACCT, debit("use:mine", "3"))
    # Then the committer lost its race for real, marked the account busy (so the next debits that would be
    # written alone join the queue instead) before trying again, and then committed the queue
    assert len(seen_at_retry) == 1 and seen_at_retry[0] is not None
    assert seen_at_retry[0] > retried_at[0]
    assert not outcome.replayed and outcome.entry.amount == D(-3)
    keys = sorted(e.entry_key for e in all_entries(ledger, ACCT) if e.type is EntryType.DEBIT)
    assert keys == ["use:alone", "use:mine", "use:queued"]
    assert_queue_drained(ledger, client, table, D(4))


def test_a_debit_alone_is_not_written_past_a_busy_mark_it_did_not_read(
    ledger: Ledger, client: Any, table: str
) -> None:
    # Given a debit that read the account while it was quiet, and a committer that marks the account busy
    # between that read and the debit's write
    marked = before_first_call(
        client, TWI, lambda: ledger.repository.mark_queue_busy(ACCT, ledger_now() + QUEUE_BUSY)
    )
    sent = calls_in_order(client)
    # When the debit is written
    outcome = ledger.debit(ACCT, debit("use:1", "3"))
    # Then its write alone failed on the mark and it joined the queue, where it was committed once
    assert marked == [None]
    assert sent.count(TWI) == 2 and "PutItem" in sent[sent.index(TWI) :]
    assert not outcome.replayed and outcome.entry.amount == D(-3)
    assert [e.entry_key for e in all_entries(ledger, ACCT)].count("use:1") == 1
    assert_queue_drained(ledger, client, table, D(7))


def test_a_busy_mark_is_safe_to_apply_twice_and_never_moves_back(
    ledger: Ledger, client: Any, table: str
) -> None:
    accounts = ledger.repository
    version = accounts.state(ACCT).version
    later = ledger_now() + QUEUE_BUSY
    # a mark, sent again (its first answer lost), leaves the one mark; an earlier one leaves it as it is
    accounts.mark_queue_busy(ACCT, later)
    accounts.mark_queue_busy(ACCT, later)
    accounts.mark_queue_busy(ACCT, later - QUEUE_BUSY)
    assert queue_busy_until_on_item(client, table) == int(later.timestamp() * 1_000_000)
    # no new version (a hint, not a change of the account), and no account made up for an unknown id
    assert accounts.state(ACCT).version == version
    accounts.mark_queue_busy("cus_nobody", later)
    assert "Item" not in client.get_item(
        TableName=table, Key={"pk": {"S": "ACCOUNT#cus_nobody"}, "sk": {"S": "STATE"}}
    )


REFUSED_MARKS: dict[str, Any] = {
    "TransactionConflictException": lambda: ClientError(
        {"Error": {"Code": "TransactionConflictException", "Message": "refused"}}, "UpdateItem"
    ),
    "ThrottlingException": lambda: ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "refused"}}, "UpdateItem"
    ),
    # a call that got no answer: the mark may or may not be there
    "ReadTimeoutError": read_timeout,
    "EndpointConnectionError": lambda: EndpointConnectionError(endpoint_url="https://dynamodb.invalid"),
}


@pytest.mark.parametrize("code", list(REFUSED_MARKS))
def test_a_busy_mark_dynamodb_refuses_leaves_the_committer_racing_as_before(
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    queue: DebitQueue,
    client: Any,
    table: str,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a queued debit, and a committer whose transaction loses its race and whose mark DynamoDB refuses
    # (a transaction writing the account item at that moment, or a throttle once botocore's retries are used)
    # or never answers (a timeout, a lost connection)
    queue.enqueue(ACCT, debit("use:queued", "2"), "owner-queued", epoch_ms(), epoch_ms() + 60_000)
    real_commit = ledger.repository.commit
    lost: list[int] = []

    def lose_twice(change: Any, **kwargs: Any) -> None:
        if len(lost) < 2:  # this debit alone (so it joins the queue), then the committer's transaction
            lost.append(1)
            raise VersionConflict(None)
        real_commit(change, **kwargs)

    refused: list[int] = []

    def refuse(**_: Any) -> None:
        refused.append(1)
        raise REFUSED_MARKS[code]()

    monkeypatch.setattr(ledger.repository, "commit", lose_twice)
    client.meta.events.register("before-call.dynamodb.UpdateItem", refuse)
    # When this instance's debit is sent
    outcome = ledger.debit(ACCT, debit("use:mine", "1"))
    # Then the committer went on without the mark (a hint) and committed both debits once; the log says why
    assert len(lost) == 2 and refused == [1]
    assert not outcome.replayed and outcome.entry.amount == D(-1)
    keys = sorted(e.entry_key for e in all_entries(ledger, ACCT) if e.type is EntryType.DEBIT)
    assert keys == ["use:mine", "use:queued"]
    assert_queue_drained(ledger, client, table, D(7))
    assert [
        getattr(r, "error", None) for r in caplog.records if r.getMessage() == "debit queue not marked busy"
    ] == [code]


@pytest.mark.parametrize("during_pause", ["nobody-committing", "another-holder-committing"])
def test_a_first_pause_that_found_nobody_committing_is_not_taken_again(
    ledger: Ledger, queue: DebitQueue, monkeypatch: pytest.MonkeyPatch, during_pause: str
) -> None:
    # Given an instance that knows the account busy and whose debits of it lately waited 300 ms, so its
    # waiter's first look comes after 70% of that; meanwhile either nobody holds the lease, or another writer
    # does (released at the waiter's next pause)
    assert ledger._combiner is not None
    combiner = ledger._combiner
    clock = [0.0]
    pauses: list[float] = []
    if during_pause == "another-holder-committing":
        assert queue.take_lease(ACCT, "other-writer", epoch_ms(), epoch_ms() + 60_000)

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds
        if len(pauses) == 2 and during_pause == "another-holder-committing":
            queue.release_lease(ACCT, "other-writer")

    monkeypatch.setattr(combiner, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(combiner, "_sleep", pause)
    combiner._waits[ACCT] = 0.3
    # When a debit goes through the queue, and then the instance's next one
    first = combiner.debit(ACCT, debit("use:first", "1"), busy=True)
    assert first is not None and not first.replayed
    first_pauses, pauses[:] = list(pauses), []
    combiner.debit(ACCT, debit("use:next", "1"), busy=True)
    # Then both are committed once, each after a first pause of 70% of 300 ms; after a pause that found
    # nobody committing (the lease free, its debit still queued: it waited on itself) the next first look
    # comes after one poll, while a pause spent behind another holder is taken again, from the waits so far
    assert first_pauses[0] == pytest.approx(0.21)
    if during_pause == "nobody-committing":
        assert pauses[0] <= 1.5 * CombinerTiming().poll_seconds
    else:
        assert pauses[0] == pytest.approx(0.7 * (0.3 + sum(first_pauses)) / 2)
    assert assert_books_balance(ledger, ACCT) == D(8)


def test_an_entry_key_too_long_for_a_sort_key_is_queued_under_its_digest(
    ledger: Ledger, client: Any, table: str
) -> None:
    # Given a usage key spelled out in 1,020 bytes (valid: ENTRY#<key> fits a partition key), which the queue's
    # sort key DEBIT#<key> would not fit (DynamoDB refuses any call naming a sort key over 1,024 bytes)
    key = usage_key("abc", "\N{GRINNING FACE}" * 252 + "xx")
    assert len(key.encode()) == 1020 and key.startswith("usage:")
    twin = usage_key("abc", "\N{GRINNING FACE}" * 252 + "xy")
    assert len(queued_sort_key(key).encode()) <= MAX_SORT_KEY_BYTES
    assert queued_sort_key(key) != queued_sort_key(twin)
    assert queued_sort_key("usage:abc:1") == "DEBIT#usage:abc:1"
    # When it goes through the account's queue
    assert ledger._combiner is not None
    outcome = ledger._combiner.debit(ACCT, DebitRequest(key=key, amount=D(1), fingerprint="f"))
    # Then it is committed from the queue (not handed back to be decided alone), once, under its own key
    assert outcome is not None and not outcome.replayed and outcome.entry.entry_key == key
    assert_queue_drained(ledger, client, table, D(9))


def test_a_queued_debit_dynamodb_refuses_as_such_is_handed_back_without_retries(
    ledger: Ledger, client: Any, table: str
) -> None:
    # Given a DynamoDB that refuses the queued item itself (a ValidationException: it never landed)
    sent = calls_in_order(client)  # (a refused put never reaches it: botocore calls the PutItem hook first)
    refused: list[int] = []

    def refuse(**_: Any) -> None:
        refused.append(1)
        raise ClientError({"Error": {"Code": "ValidationException", "Message": "refused"}}, "PutItem")

    client.meta.events.register("before-call.dynamodb.PutItem", refuse)
    # When a debit goes through the account's queue
    assert ledger._combiner is not None
    outcome = ledger._combiner.debit(ACCT, debit("use:refused", "1"))
    # Then it is handed back at once to be decided alone (no withdrawal, no look: nothing was queued)
    assert outcome is None
    assert refused == [1] and sent == []
    assert queued_items(client, table) == []
    client.meta.events.unregister("before-call.dynamodb.PutItem", refuse)
    # and decided alone it is written once
    assert not ledger.debit(ACCT, debit("use:refused", "1")).replayed
    assert assert_books_balance(ledger, ACCT) == D(9)


@pytest.mark.parametrize(("call_seconds", "timeout"), [(0.3, 2.6), (0.4, 3.2), (0.6, 3.4), (0.4, 6.0)])
def test_a_waiter_whose_calls_are_slow_answers_before_its_invocation_ends(
    ledger: Ledger, queue: DebitQueue, monkeypatch: pytest.MonkeyPatch, call_seconds: float, timeout: float
) -> None:
    # Given an account whose lease another writer keeps, a DynamoDB whose every look, withdrawal and read
    # takes call_seconds, and an invocation with ``timeout`` seconds left (answers come 1 s before it)
    assert ledger._combiner is not None
    combiner = ledger._combiner
    assert queue.take_lease(ACCT, "stuck", epoch_ms(), epoch_ms() + 60_000)
    clock = [0.0]

    def slow(call: Any) -> Any:
        def slowly(*args: Any) -> Any:
            clock[0] += call_seconds
            return call(*args)

        return slowly

    def pause(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(combiner, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(combiner, "_sleep", pause)
    monkeypatch.setattr(combiner, "_read_entry", slow(combiner._read_entry))
    for name in ("look", "withdraw"):
        monkeypatch.setattr(DebitQueue, name, slow(getattr(DebitQueue, name)))
    # When a debit waits in the queue
    with (
        answering_by(FakeLambdaContext(remaining_ms=int(timeout * 1000)), monotonic=lambda: clock[0]),
        pytest.raises(ConcurrencyConflict, match="no time left"),
    ):
        combiner.debit(ACCT, debit("use:slow", "1"))
    # Then its 429 comes before the invocation ends (it never pauses into the time giving up takes), and
    # nothing was written
    assert clock[0] <= timeout
    assert ledger.repository.entry("use:slow") is None


def test_a_waiter_that_looked_long_after_its_commit_remembers_the_time_to_the_commit(
    client: Any, table: str, queue: DebitQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an instance whose debits of the account lately waited 300 ms, and another holder that commits
    # this waiter's debit at once, while the waiter sleeps 70% of that before its first look
    ledger = make_ledger(client, table, FakeClock(datetime.now(UTC)))  # entries decided at the real time
    ledger.grant(ACCT, spec("gr_a", "10"), key="grant:a")
    assert ledger._combiner is not None
    combiner = ledger._combiner
    clock = [0.0]

    def pause(seconds: float) -> None:
        if clock[0] == 0.0:
            assert combiner._commit_queue(ACCT) == 1  # the other holder, as soon as the debit is queued
        clock[0] += seconds

    monkeypatch.setattr(combiner, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(combiner, "_sleep", pause)
    combiner._waits[ACCT] = 0.3
    # When the waiter finds its debit committed at its first look, 210 ms after it was queued
    outcome = combiner.debit(ACCT, debit("use:early", "1"), busy=True)
    assert outcome is not None and not outcome.replayed and clock[0] == pytest.approx(0.21)
    # Then its instance remembers the few milliseconds its debit took to be committed, not the 210 ms it
    # slept past that (which would make it sleep as long again next time: the waves of a small busy account)
    assert combiner._waits[ACCT] < (0.3 + 0.1) / 2
    assert assert_books_balance(ledger, ACCT) == D(9)


def test_a_waiter_that_paused_for_nobody_and_then_committed_other_writers_debits_knows_the_queue_busy(
    ledger: Ledger, queue: DebitQueue, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an instance whose debits of the account lately waited 300 ms, and another writer's debit queued
    # with nobody holding the lease
    assert ledger._combiner is not None
    combiner = ledger._combiner
    monkeypatch.setattr(combiner, "_sleep", lambda seconds: None)
    combiner._waits[ACCT] = 0.3
    queue.enqueue(ACCT, debit("use:other", "1"), "owner-1", epoch_ms(), epoch_ms() + 60_000)
    # When its debit's first look, after that pause, finds the lease free and it commits both debits
    outcome = combiner.debit(ACCT, debit("use:mine", "1"), busy=True)
    assert outcome is not None and not outcome.replayed
    # Then it forgets its waits (the pause waited on nobody), yet knows the queue busy: it met another
    # writer's debit there, so the instance's next debit is queued first thing
    assert ACCT not in combiner._waits
    sent = calls_in_order(client)
    ledger.debit(ACCT, debit("use:next", "1"))
    assert sent[0] == "PutItem"
    assert assert_books_balance(ledger, ACCT) == D(7)
