"""The ledger's operations: read the account, decide with pure transitions, commit atomically, retry on
conflict, replay on a repeated idempotency key. Handlers call these functions and nothing below them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar, cast

from credits_ledger.combining import CombinerTiming, DebitCombiner
from credits_ledger.dal.account_settings import AccountSettingsRepository
from credits_ledger.dal.accounts import AccountRepository, EntryExists, VersionConflict
from credits_ledger.dal.debit_queue import DebitQueue
from credits_ledger.dal.live_grants import GrantsToRead
from credits_ledger.dal.pages import Page
from credits_ledger.domain import idempotency, transitions
from credits_ledger.domain.balance import balance as balance_of
from credits_ledger.domain.balance import with_available_after
from credits_ledger.domain.debits import DebitRequest as DebitRequest
from credits_ledger.domain.debits import DebitResult as DebitResult
from credits_ledger.domain.debits import Outcome as Outcome
from credits_ledger.domain.debits import replay
from credits_ledger.domain.errors import (
    ConcurrencyConflict,
    CreditsError,
    GrantNotLive,
    IdempotencyMismatch,
    InsufficientCredits,
    WriteRejected,
)
from credits_ledger.domain.models import AccountState, Balance, Change, Grant, GrantStatus, LedgerEntry
from credits_ledger.domain.overage import OverageSettings
from credits_ledger.domain.rollover import RolloverPolicy, rollover_ids
from credits_ledger.domain.rollover import expire_with_rollover as _expire_with_rollover
from credits_ledger.domain.spend import GrantStoredApart, MoreGrantsNeeded
from credits_ledger.domain.transitions import EntryContext, GrantSpec
from credits_ledger.observability import logger
from credits_ledger.retry import ensure_time_for_an_attempt, wait_after_conflict


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Time-ordered ids (millisecond prefix) so grant listings sort by creation."""
    return f"{prefix}_{int(time.time() * 1000):012x}{uuid.uuid4().hex[:14]}"


Result = TypeVar("Result")


@dataclass(frozen=True)
class _Step(Generic[Result]):
    """What one attempt of the commit loop decided: ``result`` once ``change`` is written (at once when there
    is nothing to write), or ``reread``: decide again on a strongly consistent read."""

    result: Result | None
    change: Change | None = None
    extra_actions: Sequence[dict[str, Any]] = ()
    reread: bool = False


# A transaction holds at most 100 actions: the account, the entries and the grants they deplete.
MAX_DEBITS_PER_TRANSACTION = 40
MAX_ACTIONS_PER_TRANSACTION = 100
# Index pages one filtered grants listing may read (each at most the page size) before it answers with a cursor.
MAX_GRANT_QUERIES_PER_LISTING = 5
# Listings read again when the account changed between their pages (each page reads its grants' live state).
LISTING_READS = 3


# How long the account's queue counts as busy after a sign of it: on the account item, after a round that
# committed more than one debit or a committer's lost race (its mark; a debit that would be written joins
# the queue instead of writing alone, and one written alone is conditioned on no mark as of its write);
# in an instance, after a lost race, that item hint, or a queued debit of its that met other writers (its
# next debit joins the queue without reading the account). Wall-clock time, whatever clock decides debits.
QUEUE_BUSY = timedelta(seconds=1)


def _queue_busy(state: AccountState) -> bool:
    return state.queue_busy_until is not None and state.queue_busy_until > utc_now()


class _Contended(Exception):
    """A debit lost its race for the account as many times as it may alone, or the account item says its
    queue is busy (Ledger.debit): it joins the queue."""


def _answer(result: DebitResult) -> Outcome:
    if result.error is not None:
        raise result.error
    assert result.outcome is not None
    return result.outcome


class Ledger:
    def __init__(
        self,
        repository: AccountRepository,
        clock: Callable[[], datetime] = utc_now,
        max_attempts: int = 60,
        sleep: Callable[[float], None] = time.sleep,
        overage_settings: Callable[[str], OverageSettings] | None = None,
        combine_contended_debits: bool = True,
        combiner_timing: CombinerTiming | None = None,
    ) -> None:
        self.repository = repository
        self._clock = clock
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._overage_settings = overage_settings
        self._queue_busy_until: dict[str, float] = {}  # account -> time.monotonic() (see _queue_in_use)
        self._combiner = (
            DebitCombiner(
                DebitQueue(repository.client, repository.table),
                lambda account, requests, extra: self._debit_chunk(account, requests, extra),
                repository.entry,
                batch_size=MAX_DEBITS_PER_TRANSACTION,
                timing=combiner_timing or CombinerTiming(),
                on_busy=self._note_queue_busy,
            )
            if combine_contended_debits
            else None
        )

    def overage_settings(self, account_id: str) -> OverageSettings:
        """The account's overage policy. Read only when a usage debit finds too little available, so the
        common debit pays no extra read."""
        if self._overage_settings is None:
            settings = AccountSettingsRepository(self.repository.client, self.repository.table)
            self._overage_settings = lambda account: settings.get(account, consistent=False).overage
        return self._overage_settings(account_id)

    # ---- writes ------------------------------------------------------------------------------------------
    def grant(
        self, account_id: str, spec: GrantSpec, key: str, fingerprint: str = "", reference: str | None = None
    ) -> Outcome:
        now = self._clock()
        ctx = EntryContext(entry_key=key, now=now, reference=reference, fingerprint=fingerprint)
        return self.execute(account_id, key, fingerprint, lambda state: transitions.grant(state, spec, ctx))

    def debit(self, account_id: str, request: DebitRequest) -> Outcome:
        """One debit, written alone while the account is quiet; once it loses a race for the account, or the
        instance knows the account's queue busy, it joins the queue and is committed together with the other
        debits waiting there (combining.py)."""
        if self._combiner is None:
            return _answer(self._debit_alone(account_id, request))
        busy = self._queue_in_use(account_id)
        if not busy:
            try:
                return _answer(self._debit_alone(account_id, request, conflicts_allowed=1))
            except _Contended:
                self._note_queue_busy(account_id)  # a lost race, or the item's hint
        else:
            # The instance knows the queue busy: the debit joins it without reading the account first (a read
            # that would only decide to queue it; a refusal or a replay is answered by the committer's
            # decision, then decided alone as below). With no time left for an attempt, 429 before any write.
            ensure_time_for_an_attempt(account_id)
        outcome = self._combiner.debit(account_id, request, busy=busy)
        if outcome is not None:
            return outcome
        # refused in the queue (too few credits, another request's key): decided again here, alone
        return _answer(self._debit_alone(account_id, request))

    def _note_queue_busy(self, account_id: str) -> None:
        self._queue_busy_until[account_id] = time.monotonic() + QUEUE_BUSY.total_seconds()

    def _queue_in_use(self, account_id: str) -> bool:
        """Less than QUEUE_BUSY ago this instance lost a race for the account, read its item saying its queue
        is busy, or had a debit written through the queue that met other writers (another holder's lease, or
        other debits it committed as the holder): its next debit joins the queue at once. Renewed only by
        what others do, never by this hint itself, so it lapses once the account calms down."""
        now = time.monotonic()
        for account, until in list(self._queue_busy_until.items()):
            if until <= now:
                del self._queue_busy_until[account]
        return account_id in self._queue_busy_until

    def _debit_alone(
        self,
        account_id: str,
        request: DebitRequest,
        conflicts_allowed: int | None = None,
    ) -> DebitResult:
        try:
            chunk = self._debit_chunk(account_id, [request], conflicts_allowed=conflicts_allowed)
            return chunk[0]
        except WriteRejected as exc:
            return DebitResult(request, error=exc)

    def debit_many(self, account_id: str, requests: Sequence[DebitRequest]) -> list[DebitResult]:
        """Debits of one account, each judged alone, written together (one transaction per chunk)."""
        results: list[DebitResult] = []
        pending = list(requests)
        while pending:
            chunk = pending[:MAX_DEBITS_PER_TRANSACTION]
            try:
                # a chunk may answer fewer requests than it got (transaction full): the rest go round again
                answered = self._debit_chunk(account_id, chunk)
            except WriteRejected as exc:
                # nothing of this chunk was written, earlier chunks were: each request gets its own answer
                answered = [DebitResult(request, error=exc) for request in chunk]
            except ConcurrencyConflict as exc:
                # out of races or of time: nothing of this chunk or the ones after it is written, and each of
                # them says so (429); the earlier chunks were written and keep their answers
                results.extend(DebitResult(request, error=exc) for request in pending)
                break
            results.extend(answered)
            pending = pending[len(answered) :]
        return results

    def expire(self, grant_id: str, as_of: datetime) -> Outcome | None:
        """Expire what remains of a due grant; None when nothing remains (spent, voided or expired already)."""
        return self._on_grant(grant_id, idempotency.expire_key(grant_id), transitions.expire, now=as_of)

    def expire_with_rollover(
        self,
        grant_id: str,
        as_of: datetime,
        policy_for: Callable[[Grant], RolloverPolicy | None],
        reference: str | None = None,
    ) -> Outcome | None:
        """``expire``, plus, when ``policy_for(grant)`` gives a policy, the ``rollover`` grant in the same
        transaction (domain/rollover.py). Same idempotency key as ``expire``: either replays the other."""
        return self._on_grant(
            grant_id,
            idempotency.expire_key(grant_id),
            lambda state, record, ctx: _expire_with_rollover(state, record, ctx, policy_for(record)),
            now=as_of,
            reference=reference,
        )

    def void(self, grant_id: str, reference: str | None = None) -> Outcome | None:
        return self._on_grant(grant_id, idempotency.void_key(grant_id), transitions.void, reference=reference)

    def hold(self, grant_id: str, key: str, reference: str | None = None) -> Outcome | None:
        return self._on_grant(grant_id, key, transitions.hold, reference=reference)

    def release(self, grant_id: str, key: str, reference: str | None = None) -> Outcome | None:
        return self._on_grant(grant_id, key, transitions.release, reference=reference)

    def revoke(self, grant_id: str, amount: Decimal, key: str, reference: str | None = None) -> Outcome:
        record = self.repository.grant(grant_id)
        ctx = EntryContext(
            entry_key=key,
            now=self._clock(),
            reference=reference,
            fingerprint=idempotency.amount_fingerprint(amount),
        )
        return self.execute(
            record.account_id, key, ctx.fingerprint, self.revoking(record, amount, ctx), records=[record]
        )

    def revoking(self, record: Grant, amount: Decimal, ctx: EntryContext) -> Callable[[AccountState], Change]:
        """The decision of a revocation of ``record`` (``transitions.revoke``), with the grants its credits
        rolled over into. Those are read at each decision, after the account (strongly consistent): a rollover
        committed before the account was read is among them, and one committed after it changes the account's
        version, so the decision is taken again."""
        return lambda state: transitions.revoke(state, record, amount, ctx, self.rolled_over(record))

    def rolled_over(self, record: Grant) -> list[Grant]:
        """The records of the grants ``record``'s credits rolled over into, oldest first (usually none: one
        read finds that out)."""
        found: list[Grant] = []
        for grant_id in rollover_ids(record):
            successor = self.repository.grant_records([grant_id])
            if not successor:
                return found
            found += successor
        raise AssertionError("unreachable: rollover_ids never ends")

    def adjust(self, account_id: str, amount: Decimal, key: str, reason: str | None = None) -> Outcome:
        ctx = EntryContext(
            entry_key=key,
            now=self._clock(),
            fingerprint=idempotency.amount_fingerprint(amount),
            metadata={"reason": reason} if reason else {},
        )
        grant_id = new_id("gr")
        return self.execute(
            account_id, key, ctx.fingerprint, lambda state: transitions.adjust(state, amount, ctx, grant_id)
        )

    # ---- reads -------------------------------------------------------------------------------------------
    def balance(self, account_id: str, *, consistent: bool = False) -> Balance:
        """The account's balance now; ``consistent`` for a decision that must see the write it follows (e.g.
        whether a debit's account is still below its top-up threshold)."""
        now = self._clock()
        return balance_of(self.repository.state(account_id, consistent=consistent, now=now), now)

    def account_state(self, account_id: str, grant_ids: Sequence[str] = ()) -> AccountState:
        """The account as last committed, holding the live grants among ``grant_ids`` wherever the account
        keeps them (eventually consistent: a reader that acts on it re-checks in the write), e.g. the nightly
        job deciding which grants are due a reminder. Without the next expiry: not a balance."""
        now = self._clock()
        state = self.repository.state(account_id, now=now, next_expiry=False)
        missing = [grant_id for grant_id in grant_ids if grant_id not in state.grants]
        if not missing or not state.unloaded.count:
            return state
        records = self.repository.grant_records(missing)
        return self.repository.state(account_id, now=now, records=records, next_expiry=False)

    def grants_expiring(self, before: datetime, limit: int, cursor: str | None = None) -> Page:
        """(account id, grant id) of live grants with ``expires_at <= before``, ``limit`` per page; cost follows
        what is due, not the number of grants."""
        return self.repository.expiring(before, limit=limit, cursor=cursor)

    def grant_record(self, grant_id: str) -> Grant:
        """The grant as recorded when it was created (GrantNotFound when there is none)."""
        return self.repository.grant(grant_id)

    def cost_basis_correction(self, grant_id: str, amount: Decimal, currency: str | None) -> dict[str, Any]:
        """The transaction action that corrects a grant's cost basis; no credit moves, so no ledger entry. The
        caller commits it with the record that justifies it (a better announcement of the same payment)."""
        return self.repository.cost_basis_update(grant_id, amount, currency)

    def grant_view(self, grant_id: str) -> Grant:
        record = self.repository.grant(grant_id)
        now = self._clock()
        state = self.repository.state(record.account_id, consistent=True, now=now, records=[record])
        return record.merged_with(state.grants.get(grant_id), now)

    def grants(
        self, account_id: str, limit: int, cursor: str | None = None, status: GrantStatus | None = None
    ) -> Page:
        """Grants as readers see them (live remaining and status merged in), oldest first, ``limit`` per page.

        With a ``status`` filter, pages are filled by reading on until ``limit`` grants match, but one request
        reads at most ``MAX_GRANT_QUERIES_PER_LISTING`` index pages: a rare status among many grants then
        gets a short (even empty) page whose cursor continues after the last grant read, so the cost of one
        request stays bounded whatever the account holds. Each index page reads its grants' live state;
        when the account changed between two of them, the listing is read again (up to LISTING_READS
        times; an account that changes between every page read gets the last listing as read).
        """
        now = self._clock()
        for _ in range(LISTING_READS):
            listing, versions = self._grants_listing(account_id, limit, cursor, status, now)
            if len(versions) <= 1:
                return listing
            # the account changed between two index pages' reads of it: one version's grants, or none
        return listing

    def _grants_listing(
        self, account_id: str, limit: int, cursor: str | None, status: GrantStatus | None, now: datetime
    ) -> tuple[Page, set[int]]:
        """One listing, and the versions of the account its pages read the live grants at."""
        collected: list[Grant] = []
        versions: set[int] = set()
        for _ in range(MAX_GRANT_QUERIES_PER_LISTING):
            page = self.repository.grants_page(account_id, limit, cursor)
            # live remaining and status of the page's grants, wherever the account keeps them
            state = self.repository.state(account_id, now=now, records=page.items, next_expiry=False)
            versions.add(state.version)
            for index, record in enumerate(page.items):
                view = record.merged_with(state.grants.get(record.grant_id), now)
                if status is not None and view.status is not status:
                    continue
                collected.append(view)
                if len(collected) == limit:
                    more = index < len(page.items) - 1 or page.next_cursor is not None
                    return Page(collected, self.repository.grant_cursor(record) if more else None), versions
            if page.next_cursor is None:
                return Page(collected, None), versions
            cursor = page.next_cursor
        return Page(collected, cursor), versions

    def transactions(self, account_id: str, limit: int, cursor: str | None = None) -> Page:
        return self.repository.ledger_page(account_id, limit, cursor)

    # ---- the commit loop ---------------------------------------------------------------------------------
    def _on_grant(
        self,
        grant_id: str,
        key: str,
        transition: Callable[[AccountState, Grant, EntryContext], Change],
        now: datetime | None = None,
        reference: str | None = None,
    ) -> Outcome | None:
        record = self.repository.grant(grant_id)
        ctx = EntryContext(entry_key=key, now=now or self._clock(), reference=reference)
        try:
            return self.execute(
                record.account_id, key, "", lambda state: transition(state, record, ctx), records=[record]
            )
        except GrantNotLive:
            return None

    def execute(
        self,
        account_id: str,
        key: str,
        fingerprint: str,
        build: Callable[[AccountState], Change],
        extra_actions: Sequence[dict[str, Any]] = (),
        records: Sequence[Grant] = (),
    ) -> Outcome:
        """Decide ``build(state)`` on the account and commit it once under idempotency key ``key``.

        Returns the first outcome again when ``key`` was committed before. ``extra_actions`` are written in the
        same transaction; when one of their conditions fails, RelatedItemChanged propagates to the caller.
        """

        def attempt(
            state: AccountState, existing: Mapping[str, LedgerEntry], consistent: bool
        ) -> _Step[Outcome]:
            if key in existing:
                return _Step(replay(existing[key], fingerprint))
            try:
                change = build(state)
            except InsufficientCredits:
                if consistent:
                    raise
                return _Step(None, reread=True)
            return _Step(Outcome(entry=change.entries[0]), change, extra_actions)

        return self._commit_once(account_id, [key], attempt, records=records)

    def _debit_chunk(
        self,
        account_id: str,
        requests: Sequence[DebitRequest],
        extra_actions_for: Callable[[list[DebitResult]], list[dict[str, Any]]] | None = None,
        conflicts_allowed: int | None = None,
    ) -> list[DebitResult]:
        """Judge and write debits of one account in one transaction; returns results for the leading requests
        that fit in it (at least one), the caller passes the rest again. ``extra_actions_for(results)`` adds
        actions to that transaction (the debit queue's removals); ``conflicts_allowed``: see _commit_once (and
        a debit to write while the account item says its queue is busy joins the queue, _Contended)."""
        overage: dict[str, OverageSettings] = {}  # read at most once per chunk, only when needed

        def attempt(
            state: AccountState, existing: Mapping[str, LedgerEntry], consistent: bool
        ) -> _Step[list[DebitResult]]:
            now = self._clock()
            results: list[DebitResult] = []
            changes: list[Change] = []
            planned: dict[str, int] = {}
            current = state
            # the queue's committer also removes each written debit's queued item in the same transaction
            per_debit = 1 if extra_actions_for is not None else 0
            for request in requests:
                previous = existing.get(request.key)
                if previous is None and request.key in planned:
                    previous = changes[planned[request.key]].entries[0]
                if previous is not None:
                    try:
                        results.append(DebitResult(request, outcome=replay(previous, request.fingerprint)))
                    except IdempotencyMismatch as exc:
                        results.append(DebitResult(request, error=exc))
                    continue
                ctx = EntryContext(
                    entry_key=request.key,
                    now=now,
                    reference=request.reference,
                    fingerprint=request.fingerprint,
                    metadata=request.metadata,
                )
                decided = self._decide(account_id, current, request, ctx, consistent, overage)
                if decided is None:
                    return _Step(None, reread=True)
                if isinstance(decided, CreditsError):
                    results.append(DebitResult(request, error=decided))
                    continue
                change = decided
                if conflicts_allowed is not None and _queue_busy(current):
                    # a debit to write while the account's queue is being committed: racing its committer
                    # would only slow it down (a refusal, decided above on this read, needs no queue)
                    raise _Contended(account_id)
                if (
                    changes
                    and self._actions(state, [*changes, change], per_debit) > MAX_ACTIONS_PER_TRANSACTION
                ):
                    break  # this one and the rest go into the next transaction
                planned[request.key] = len(changes)
                changes.append(change)
                current = change.state
                results.append(DebitResult(request, outcome=Outcome(entry=change.entries[0])))
            if not changes:
                return _Step(results, None)
            combined = transitions.combine(state, changes)
            if extra_actions_for is None:
                return _Step(results, combined)
            if len(changes) > 1:
                # the queue's committer, combining: the account's next debits join the queue instead of racing
                # it (a round of one debit does not renew the hint, so it lapses once the account calms down)
                combined = replace(
                    combined, state=replace(combined.state, queue_busy_until=utc_now() + QUEUE_BUSY)
                )
            return _Step(results, combined, extra_actions_for(results))

        keys = list(dict.fromkeys(r.key for r in requests))
        if extra_actions_for is None:
            return self._commit_once(account_id, keys, attempt, conflicts_allowed=conflicts_allowed)

        return self._commit_once(
            account_id,
            keys,
            attempt,
            conflicts_allowed=conflicts_allowed,
            on_lost_race=lambda: self._mark_queue_busy(account_id),
        )

    def _mark_queue_busy(self, account_id: str) -> None:
        """The queue's committer lost a race for the account: against debits written alone (their reads may
        predate every busy hint) its larger transaction can lose every race. The mark sends them to the
        queue, and one that read the item before cannot be written past it (_commit_once)."""
        refused = self.repository.mark_queue_busy(account_id, utc_now() + QUEUE_BUSY)
        if refused is not None:
            # a hint: without it the committer races as before, and marks again at its next lost race
            logger.warning("debit queue not marked busy", account_id=account_id, error=refused)

    def _commit_once(
        self,
        account_id: str,
        keys: list[str],
        attempt: Callable[[AccountState, Mapping[str, LedgerEntry], bool], _Step[Result]],
        conflicts_allowed: int | None = None,
        records: Sequence[Grant] = (),
        on_lost_race: Callable[[], None] = lambda: None,
    ) -> Result:
        """The one commit loop: read the account and the entries under ``keys`` (eventually consistent), let
        ``attempt`` decide, write its change conditioned on the version it read; on a lost race (another
        writer moved the version, or one of the keys got written) decide again on what won, up to
        ``max_attempts`` times. ``attempt(state, existing, consistent)`` may ask for a strongly consistent
        read first (an eventual read may miss a grant that was just added). With ``conflicts_allowed``, the
        race lost that many times raises _Contended instead (the debit then joins the account's queue), and the
        write is also conditioned on the account item saying its queue is not busy now (a committer's mark
        made after the read). ``on_lost_race`` runs after each race lost.

        ``records`` are the grants the decision acts on: read with the account even when its item does not
        hold them. A decision that needs more of the grants kept apart from the account item
        (MoreGrantsNeeded) is taken again on a read that holds them (dal/live_grants.py)."""
        ensure_time_for_an_attempt(account_id)
        tail = GrantsToRead(self.repository.head_size)
        records = list(records)
        state, existing = self.repository.load(account_id, keys, now=self._clock(), records=records)
        consistent = False

        def read_again() -> tuple[AccountState, dict[str, LedgerEntry]]:
            return self.repository.load(
                account_id, keys, consistent=True, now=self._clock(), tail=tail, records=records
            )

        for attempt_number in range(self._max_attempts):
            try:
                step = attempt(state, existing, consistent)
            except MoreGrantsNeeded as short:
                tail.more(account_id, short)
                state, existing = read_again()
                consistent = True
                continue
            except GrantStoredApart as apart:
                # a transition on a grant its caller did not name: read it where its record says, once
                if any(r.grant_id == apart.grant_id for r in records):
                    raise AssertionError(f"grant {apart.grant_id} was read and is still missing") from apart
                records.append(self.repository.grant(apart.grant_id))
                state, existing = read_again()
                consistent = True
                continue
            except CreditsError:
                # an answer without a write (402, a grant no longer live): it stands only on one version's view
                if self.repository.still_read_as(state):
                    raise
                state, existing = read_again()
                consistent = True
                continue
            if step.reread:
                state, existing = read_again()
                consistent = True
                continue
            if step.change is None:
                if self.repository.still_read_as(state):
                    return cast(Result, step.result)
                # an answer without a write, on grants kept apart that were read mixing two versions
                state, existing = read_again()
                consistent = True
                continue
            try:
                self.repository.commit(
                    step.change,
                    expected_version=state.version,
                    extra_actions=step.extra_actions,
                    # a debit that may join the queue is written only while no committer marked it busy
                    unless_queue_busy_at=utc_now() if conflicts_allowed is not None else None,
                )
                return cast(Result, step.result)
            except EntryExists as exc:
                # Another path wrote one of the change's entries meanwhile: decide again on a fresh state. Under
                # a key the caller named that answers as a replay; under another one (a change of several grants,
                # e.g. a dispute's void of a rollover grant voided meanwhile) the state must show its effect.
                state, fresh = read_again()
                existing, consistent = {**existing, **exc.entries, **fresh}, True
            except VersionConflict as exc:
                if conflicts_allowed is not None and attempt_number + 1 >= conflicts_allowed:
                    raise _Contended(account_id) from exc
                on_lost_race()
                wait_after_conflict(account_id, attempt_number, self._sleep)
                if exc.current is not None and not tail.reads and not records:
                    state, consistent = exc.current, True  # the account item alone decides: no re-read
                else:
                    state, fresh = read_again()
                    existing, consistent = {**existing, **fresh}, True
        raise ConcurrencyConflict(
            f"account {account_id}: gave up after {self._max_attempts} conflicting writes"
        )

    def _decide(
        self,
        account_id: str,
        current: AccountState,
        request: DebitRequest,
        ctx: EntryContext,
        consistent: bool,
        overage: dict[str, OverageSettings],
    ) -> Change | CreditsError | None:
        """One debit on ``current``: its change, the error refusing it, or None (decide again on a strongly
        consistent read: an eventually consistent one may miss a grant just added)."""
        try:
            return with_available_after(transitions.debit(current, request.amount, ctx), ctx.now)
        except MoreGrantsNeeded:
            raise  # not an answer: the loop reads more of the account's grants (_commit_once)
        except InsufficientCredits as exc:
            if not consistent:
                return None
            if not request.allow_overage:
                return exc
        except CreditsError as exc:
            return exc
        if account_id not in overage:
            overage[account_id] = self.overage_settings(account_id)
        try:
            return with_available_after(
                transitions.debit(current, request.amount, ctx, overage=overage[account_id]), ctx.now
            )
        except MoreGrantsNeeded:
            raise
        except CreditsError as refused:
            return refused

    def _actions(self, state: AccountState, changes: list[Change], per_change: int) -> int:
        """The actions of writing ``changes`` together: the account item, entries, grants, the tail items
        they move, and ``per_change`` more for each (the debit queue's removals)."""
        combined = transitions.combine(state, changes)
        return self.repository.action_count(combined) + per_change * len(changes)
