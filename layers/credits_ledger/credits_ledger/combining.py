"""Request combining: the debits of a busy account, committed together by one writer at a time.

Every change of an account is one transaction guarded by its version (dal/accounts.py), so concurrent
writers of one account serialize: each round one wins and the others read, decide and write again. A debit
that lost such a race does not retry alone; it joins the account's queue (dal/debit_queue.py) and waits, and
so does, without reading the account first, the next debit of an instance that knows the queue busy
(Ledger._queue_in_use):

1. it queues itself (one item per entry key);
2. whoever takes the account's commit lease (a short lease, one holder at a time) commits what is queued,
   up to 40 debits per transaction, with the ledger's own ``debit_many`` decision: the same transitions,
   the same spend order, the same 402 rule, one entry per debit; the transaction also removes each
   committed debit from the queue, on condition that it is still there, unanswered, of the owner read and
   before its ``commit_by`` (so a debit withdrawn meanwhile, or whose waiter's invocation is over, is never
   committed);
3. the others watch their queued item: once it is gone, their entry is committed (read it); answered
   ``replayed``, the entry was committed before; answered ``decide_alone`` (refused: too few credits, a
   fingerprint mismatch, a write DynamoDB rejects), the waiter decides it again itself, on a strongly
   consistent read, so every refusal comes from the same code path as when there is no contention.

A committer whose transaction loses a race for the account marks the account item busy before it tries
again (Ledger._debit_chunk): debits that would be written alone, from instances whose busy hint lapsed, join
the queue instead of winning every race against its larger transaction.

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
from credits_ledger.dal.debit_queue import MAX_QUEUED_MS, Answer, DebitQueue, Look
from credits_ledger.domain.debits import DebitRequest, DebitResult, Outcome, replay
from credits_ledger.domain.errors import ConcurrencyConflict, IdempotencyMismatch, WriteRejected
from credits_ledger.domain.models import LedgerEntry
from credits_ledger.domain.times import epoch_us
from credits_ledger.retry import ATTEMPT_SECONDS, seconds_left, time_for

# commit_chunk(account, requests, extra_actions_for(results)) -> results of the leading requests it wrote
CommitChunk = Callable[
    [str, Sequence[DebitRequest], Callable[[list[DebitResult]], list[dict[str, Any]]]], list[DebitResult]
]


# The share of this instance's last waits on an account a waiter sleeps before its second look.
EXPECTED_SHARE = 0.7
# A waiter's next look comes no sooner than this many times what its last look took.
LOOKS_APART = 2
# Failed calls a waiter looks past (each after making sure its debit is out of the queue or answered).
MAX_RECOVERIES = 3
# Calls a waiter that gives up still makes (the withdrawal and a read of its entry), each about as long as a
# look: with less time than that left it gives up now, and it never pauses into that time.
GIVING_UP_CALLS = 2
# Accounts whose last waits an instance remembers (forgotten all at once past it: a hint, not a cache).
MAX_ACCOUNTS_REMEMBERED = 1_000


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class CombinerTiming:
    """How long a commit lease lasts (a holder that died is replaced after it), how often a waiter looks at
    its queued debit (at once, since it may have to take a free lease, unless its instance knows the queue
    busy; then, while another holder commits, after most of what its last waits took (forgotten once such a
    pause found nobody committing), or after ``poll_seconds``, twice as long each time up to
    ``max_poll_seconds``, never sooner than LOOKS_APART times its last look: a round takes tens of
    milliseconds, and every look is a read the committer competes with), and how long a waiter without an
    invocation deadline (tools, tests) waits at most."""

    lease_ms: int = 2_000
    poll_seconds: float = 0.01
    max_poll_seconds: float = 0.08
    max_wait_seconds: float = 20.0
    # the first look waits for a share of what this instance's last debits of the account waited, at most this
    max_first_look_seconds: float = 0.5


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
        on_busy: Callable[[str], None] | None = None,
    ) -> None:
        self._queue = queue
        self._commit_chunk = commit_chunk
        self._read_entry = read_entry
        self._batch_size = batch_size
        self._timing = timing
        self._sleep = sleep
        self._now_ms = now_ms
        self._monotonic = monotonic
        # told of an account whose queued debit met other writers' (another holder's lease, or other debits
        # in the queue it committed): the queue is busy
        self._on_busy = on_busy
        # account -> how long this instance's last debits of it waited in its queue (a moving average)
        self._waits: dict[str, float] = {}

    def _expected_wait(self, account_id: str) -> float | None:
        return self._waits.get(account_id)

    def _waited(self, account_id: str, seconds: float) -> None:
        if len(self._waits) > MAX_ACCOUNTS_REMEMBERED and account_id not in self._waits:
            self._waits.clear()
        previous = self._waits.get(account_id, seconds)
        self._waits[account_id] = (previous + seconds) / 2

    def _forget_waits(self, account_id: str) -> None:
        self._waits.pop(account_id, None)

    def debit(self, account_id: str, request: DebitRequest, *, busy: bool = False) -> Outcome | None:
        """Commit ``request`` through the account's queue. Returns its outcome, or None when the caller must
        decide it alone (it was refused, or its queued item left without an entry). Raises
        ConcurrencyConflict when time ran out with the debit withdrawn (nothing written), IdempotencyMismatch
        when the entry under its key was committed for another request, and any other error once the debit
        was withdrawn (nothing of it was or will be written) or, failing that three times, as it stands (the
        debit may then still be committed before its commit_by). ``busy``: the instance knows the account's
        queue busy, so a holder is likely committing: the first look comes after a pause, not at once."""
        owner = uuid.uuid4().hex
        now = self._now_ms()
        left = seconds_left()
        # committed only while this invocation can still answer (or, without one, within its longest wait)
        window = self._timing.max_wait_seconds if left is None else max(left, 0.0)
        commit_by = now + min(int(window * 1000), MAX_QUEUED_MS)
        failure: Exception | None = None
        try:
            mine = self._queue.enqueue(account_id, request, owner, now, commit_by)
        except WriteRejected:
            return None  # DynamoDB refuses this queued item as such: nothing was queued, nothing to withdraw
        except Exception as exc:  # the put may have landed although its answer did not
            mine, failure = True, exc
        wait = _Wait(self, account_id, request, owner, mine, self._expected_wait(account_id))
        if busy and mine and failure is None:
            wait.pause_before_next_look()  # a holder is likely committing: a look at once would find it queued
        recoveries = 0
        while True:
            if failure is not None:
                # A failed call (the put, a read, the holder's commit, whose answer may have been lost after
                # it committed): out of the queue first, so the outcome is known. Withdrawn: the error stands
                # for a debit never written. Otherwise it left the queue (or never entered it): look again.
                if (
                    not mine
                    or recoveries == MAX_RECOVERIES
                    or self._withdrawn(account_id, request.key, owner)
                ):
                    raise failure
                recoveries += 1
                failure = None
                self._sleep(self._timing.poll_seconds)
            try:
                done, outcome = wait.step()
            except (ConcurrencyConflict, IdempotencyMismatch):
                raise
            except Exception as exc:
                failure = exc
                continue
            if done:
                if wait.paused_for_nobody:
                    # Its first pause found nobody committing: what its waits took was mostly the pause itself
                    # (the writers of a small busy account all pausing at once after a round, their next waits
                    # then as long as that pause). Its next debit looks after a poll instead.
                    self._forget_waits(account_id)
                elif outcome is not None:
                    self._waited(account_id, wait.seconds_to_commit(outcome, now))
                if (
                    outcome is not None
                    and wait.met_others
                    and not outcome.replayed
                    and self._on_busy is not None
                ):
                    self._on_busy(account_id)  # written among other writers' debits: the queue is busy
                return outcome

    def _withdrawn(self, account_id: str, key: str, owner: str) -> bool:
        try:
            return self._queue.withdraw(account_id, key, owner)
        except Exception:  # not known to be out of the queue: look again
            return False

    def _commit_queue(self, account_id: str) -> int | None:
        """Take the lease and commit what is queued until the queue is empty or the lease is about to end:
        how many queued debits it met, or None when another holder had the lease. Raises
        ConcurrencyConflict when a commit kept losing races until out of attempts or time."""
        holder = uuid.uuid4().hex
        taken_at = self._now_ms()
        until = taken_at + self._timing.lease_ms
        if not self._queue.take_lease(account_id, holder, taken_at, until):
            return None
        met: set[str] = set()
        try:
            # Stop with a quarter of the lease left, so the last commit usually ends before another holder
            # starts (when it does not, the two lose races on the account's version, never credits).
            while self._now_ms() < until - self._timing.lease_ms // 4 and time_for(ATTEMPT_SECONDS):
                queued = self._commit_round(account_id)
                if not queued:
                    break
                met.update(queued)
        finally:
            self._queue.release_lease(account_id, holder)
        return len(met)

    def _commit_round(self, account_id: str) -> list[str]:
        """One transaction of queued debits: the entry keys of those it read (none: the queue was empty)."""
        waiting = self._queue.waiting(account_id, self._now_ms(), self._batch_size)
        if not waiting:
            return []
        requests = [queued.request for queued in waiting]
        by_key = {queued.request.key: queued for queued in waiting}

        def taken(results: list[DebitResult]) -> list[dict[str, Any]]:
            # each removal names the queued debit that was read (the same owner) and is built at each attempt,
            # so its commit_by condition holds when the transaction is written
            now = self._now_ms()
            return [
                self._queue.taken_action(account_id, by_key[r.request.key], now)
                for r in results
                if _written(r)
            ]

        try:
            results = self._commit_chunk(account_id, requests, taken)
        except RelatedItemChanged:
            return list(by_key)  # a debit was withdrawn or answered meanwhile: look at the queue again
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
        return list(by_key)


class _Wait:
    """One queued debit's waiter: each ``step`` looks once and acts on what it saw."""

    def __init__(
        self,
        combiner: DebitCombiner,
        account_id: str,
        request: DebitRequest,
        owner: str,
        mine: bool,
        expected: float | None,
    ) -> None:
        self._combiner = combiner
        self._queue = combiner._queue
        self._account_id = account_id
        self._request = request
        self._owner = owner
        self._mine = mine
        self._began = combiner._monotonic()
        self._pause = combiner._timing.poll_seconds
        self._look_seconds = 0.0  # what the last look took
        self._expected = expected
        self._answered_replayed = False  # kept: the answered item may be gone at the next look
        self._after_expected_pause = False  # the last pause was taken from the instance's last waits
        # a look right after that pause found the debit still queued and the lease free: nobody was committing
        self.paused_for_nobody = False
        # the account's queue was busy: a look found another holder's lease, or this waiter as the holder met
        # other debits in the queue
        self.met_others = False

    def seconds(self) -> float:
        return self._combiner._monotonic() - self._began

    def seconds_to_commit(self, outcome: Outcome, queued_at_ms: int) -> float:
        """How long this debit waited to be committed: until its entry was decided, when that came before
        this waiter saw it (a waiter that looked long after its commit would teach its instance to pause that
        long again), or until it saw it."""
        waited = self.seconds()
        if not self._mine or outcome.replayed:
            return waited
        decided_after = epoch_us(outcome.entry.created_at) / 1_000_000 - queued_at_ms / 1000
        return min(waited, max(decided_after, 0.0))

    def step(self) -> tuple[bool, Outcome | None]:
        """(True, outcome) when the wait is over (outcome None: decide alone), (False, None) to look again."""
        combiner, account_id, key = self._combiner, self._account_id, self._request.key
        began = combiner._monotonic()
        look = self._queue.look(account_id, key)
        self._look_seconds = combiner._monotonic() - began
        queued = look.queued
        if queued is not None and self._mine and queued.owner != self._owner:
            queued = None  # this request's item left the queue; another request with its id queued since
        if queued is None:
            return True, self._left_queue(look.entry or combiner._read_entry(key))
        if queued.answer is not None:
            return True, self._answered(queued.answer, look)
        why: str | None = None
        lease_free = look.lease is None or look.lease.free_at(combiner._now_ms())
        self.met_others = self.met_others or not lease_free
        self.paused_for_nobody = self.paused_for_nobody or (self._after_expected_pause and lease_free)
        self._after_expected_pause = False
        if not time_for(ATTEMPT_SECONDS + GIVING_UP_CALLS * self._look_seconds):
            why = "no time left in this invocation"
        elif self.seconds() > combiner._timing.max_wait_seconds:
            why = "it waited its longest wait"
        elif lease_free:
            try:
                met = combiner._commit_queue(account_id)
                if met is not None:
                    self.met_others = self.met_others or met > 1
                    return False, None
            except ConcurrencyConflict:
                # as the committer, it kept losing races for the account until out of attempts or time
                why = "its committer kept losing races for the account"
        if why is not None:
            return self._give_up(why)
        self.pause_before_next_look()
        return False, None

    def _left_queue(self, entry: LedgerEntry | None) -> Outcome | None:
        if entry is None:
            return None  # withdrawn by another request with its key, or dropped past its commit_by
        outcome = replay(entry, self._request.fingerprint)  # another request's entry: mismatch
        return outcome if self._answered_replayed else Outcome(entry, replayed=not self._mine)

    def _answered(self, answer: Answer, look: Look) -> Outcome | None:
        self._answered_replayed = answer is Answer.REPLAYED
        if self._mine:
            self._queue.discard_answered(self._account_id, self._request.key, self._owner)
        if answer is Answer.REPLAYED:
            entry = look.entry or self._combiner._read_entry(self._request.key)
            if entry is not None:
                return replay(entry, self._request.fingerprint)
        return None

    def _give_up(self, why: str) -> tuple[bool, Outcome | None]:
        """Out of time: withdraw this request's debit and answer 429 (nothing written), or look again when it
        cannot be withdrawn (it left the queue, or a commit holding it is under way)."""
        combiner, account_id, key = self._combiner, self._account_id, self._request.key
        conflict = ConcurrencyConflict(
            f"account {account_id}: its queued debits were not committed in time ({why})"
        )
        if not self._mine:
            raise conflict
        if not self._queue.withdraw(account_id, key, self._owner):
            combiner._sleep(combiner._timing.poll_seconds)
            return False, None
        entry = combiner._read_entry(key)
        if entry is not None:
            # its id was written by then (a re-sent put had queued this request again after its debit was
            # committed): the id's debit stands, answered from its entry
            return True, replay(entry, self._request.fingerprint)
        raise conflict

    def pause_before_next_look(self) -> None:
        combiner = self._combiner
        if self._expected is not None:
            # Another holder commits the queue, and this instance's debits of the account waited about this
            # long lately: a look before most of that would likely find the debit still queued, and every
            # look is a read the committer competes with.
            share = min(EXPECTED_SHARE * self._expected, combiner._timing.max_first_look_seconds)
            rest = share - self.seconds()
            self._expected = None
            if rest > self._pause and time_for(rest + ATTEMPT_SECONDS):
                combiner._sleep(rest)
                self._after_expected_pause = True
                return
        # a look that came back slowly means DynamoDB (or this host) is busy: looking more often than every
        # LOOKS_APART looks' time would only take more of what the committer needs
        pause = max(self._pause * (0.5 + random.random()), LOOKS_APART * self._look_seconds)
        left = seconds_left()
        if left is not None:
            # but never into the time the next look and giving up after it take: the answer, even a 429,
            # comes before the invocation's deadline however slow the calls are
            pause = min(pause, max(0.0, left - ATTEMPT_SECONDS - (1 + GIVING_UP_CALLS) * self._look_seconds))
        combiner._sleep(pause)
        self._pause = min(self._pause * 2, combiner._timing.max_poll_seconds)


def _written(result: DebitResult) -> bool:
    """This round's transaction wrote the entry of this debit."""
    return result.outcome is not None and not result.outcome.replayed
