"""Request combining: the debits of a busy account, committed together by one writer at a time.

Every change of an account is one transaction guarded by its version (dal/accounts.py), so concurrent
writers of one account serialize: each round one wins and the others read, decide and write again. A debit
that lost such a race does not retry alone; it joins the account's queue (dal/debit_queue.py) and waits:

1. it queues itself (one item per entry key);
2. whoever takes the account's commit lease (a short lease, one holder at a time) commits what is queued,
   up to 40 debits per transaction, with the ledger's own ``debit_many`` decision: the same transitions,
   the same spend order, the same 402 rule, one entry per debit; the transaction also removes each
   committed debit from the queue, on condition that it is still there (so a debit withdrawn meanwhile is
   never committed);
3. the others watch their queued item: once it is gone, their entry is committed (read it); answered
   ``replayed``, the entry was committed before; answered ``decide_alone`` (refused: too few credits, a
   fingerprint mismatch, a write DynamoDB rejects), the waiter decides it again itself, on a strongly
   consistent read, so every refusal comes from the same code path as when there is no contention.

A waiter whose invocation runs out of time withdraws its debit (a conditional delete that fails when it was
committed or answered meanwhile, in which case it reads the answer) and answers 429: nothing was written.
Correctness never rests on the lease: two committers at once lose races on the account's version, and an
entry key is written once whoever writes it.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from credits_ledger.dal.accounts import RelatedItemChanged
from credits_ledger.dal.debit_queue import Answer, DebitQueue
from credits_ledger.domain.debits import DebitRequest, DebitResult, Outcome, replay
from credits_ledger.domain.errors import ConcurrencyConflict, WriteRejected
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.retry import ATTEMPT_SECONDS, time_for

# commit_chunk(account, requests, extra_actions_for(results)) -> results of the leading requests it wrote
CommitChunk = Callable[
    [str, Sequence[DebitRequest], Callable[[list[DebitResult]], list[dict[str, Any]]]], list[DebitResult]
]


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class CombinerTiming:
    """How long a commit lease lasts (a holder that died is replaced after it), how often a waiter looks at
    its queued debit (first after ``poll_seconds``, then twice as long each time up to ``max_poll_seconds``:
    a round of the queue takes tens of milliseconds, and every look is a read the committer competes with),
    and how long a waiter without an invocation deadline (tools, tests) waits at most."""

    lease_ms: int = 2_000
    poll_seconds: float = 0.01
    max_poll_seconds: float = 0.08
    max_wait_seconds: float = 20.0


class DebitCombiner:
    def __init__(
        self,
        queue: DebitQueue,
        commit_chunk: CommitChunk,
        read_entry: Callable[[str], LedgerEntry | None],
        *,
        batch_size: int,
        timing: CombinerTiming,
        sleep: Callable[[float], None] = time.sleep,
        now_ms: Callable[[], int] = epoch_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._commit_chunk = commit_chunk
        self._read_entry = read_entry
        self._batch_size = batch_size
        self._timing = timing
        self._sleep = sleep
        self._now_ms = now_ms
        self._monotonic = monotonic

    def debit(self, account_id: str, request: DebitRequest) -> Outcome | None:
        """Commit ``request`` through the account's queue. Returns its outcome, or None when the caller must
        decide it alone (it was refused, or its queued item left without an entry). Raises
        ConcurrencyConflict when time ran out with the debit withdrawn (nothing written), IdempotencyMismatch
        when the entry under its key was committed for another request."""
        owner = uuid.uuid4().hex
        mine = self._queue.enqueue(account_id, request, owner, self._now_ms())
        give_up_at = self._monotonic() + self._timing.max_wait_seconds
        pause = self._timing.poll_seconds
        while True:
            look = self._queue.look(account_id, request.key)
            queued, lease = look.queued, look.lease
            if queued is None:
                entry = look.entry or self._read_entry(request.key)
                if entry is None:
                    return None  # withdrawn by another request with its key, or dropped as stale
                replay(entry, request.fingerprint)  # another request's entry under this key: mismatch
                return Outcome(entry, replayed=not mine)
            if queued.answer is not None:
                if mine:
                    self._queue.discard_answered(account_id, request.key, owner)
                if queued.answer is Answer.REPLAYED:
                    entry = look.entry or self._read_entry(request.key)
                    if entry is not None:
                        return replay(entry, request.fingerprint)
                return None
            if lease is None or lease.free_at(self._now_ms()):
                try:
                    self._commit_queue(account_id)
                    continue
                except ConcurrencyConflict:
                    gave_up = True  # as the committer, it kept losing races for the account until now
            else:
                gave_up = not time_for(ATTEMPT_SECONDS) or self._monotonic() > give_up_at
            if gave_up:
                if not mine or self._queue.withdraw(account_id, request.key, owner):
                    raise ConcurrencyConflict(
                        f"account {account_id}: its queued debits were not committed in time"
                    )
                continue  # it left the queue meanwhile: read the answer
            self._sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, self._timing.max_poll_seconds)

    def _commit_queue(self, account_id: str) -> None:
        """Take the lease and commit what is queued until the queue is empty or the lease is about to end.
        Raises ConcurrencyConflict when a commit kept losing races until out of attempts or time."""
        holder = uuid.uuid4().hex
        taken_at = self._now_ms()
        until = taken_at + self._timing.lease_ms
        if not self._queue.take_lease(account_id, holder, taken_at, until):
            return
        try:
            # stop with a quarter of the lease left: the last commit must end before another holder starts
            while self._now_ms() < until - self._timing.lease_ms // 4 and time_for(ATTEMPT_SECONDS):
                if not self._commit_round(account_id):
                    return
        finally:
            self._queue.release_lease(account_id, holder)

    def _commit_round(self, account_id: str) -> bool:
        """One transaction of queued debits; False when nothing was queued."""
        waiting = self._queue.waiting(account_id, self._now_ms(), self._batch_size)
        if not waiting:
            return False
        requests = [queued.request for queued in waiting]

        def taken(results: list[DebitResult]) -> list[dict[str, Any]]:
            return [self._queue.taken_action(account_id, r.request.key) for r in results if _written(r)]

        try:
            results = self._commit_chunk(account_id, requests, taken)
        except RelatedItemChanged:
            return True  # a debit was withdrawn or answered meanwhile: look at the queue again
        except WriteRejected as exc:
            # DynamoDB refuses this account's write as such: each waiter meets it alone (500 and the alarm)
            results = [DebitResult(request, error=exc) for request in requests]
        for result in results:
            if _written(result):
                continue
            refused = result.error is not None
            self._queue.answer(
                account_id, result.request.key, Answer.DECIDE_ALONE if refused else Answer.REPLAYED
            )
        return True


def _written(result: DebitResult) -> bool:
    """This round's transaction wrote the entry of this debit."""
    return result.outcome is not None and not result.outcome.replayed
