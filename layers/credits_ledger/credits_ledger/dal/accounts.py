"""AccountRepository: the account aggregate (state, grants, ledger entries) in DynamoDB.

Every write of a change is one TransactWriteItems whose conditions state the invariants:
  - the account item still has the version the change was computed from (optimistic lock; no lost update,
    no overdraft: the balance check happened on exactly that version);
  - each ledger entry key does not exist yet (the key is the operation's idempotency key: nothing twice);
  - each new grant id is unused, and each grant being closed is not closed already.
A failed condition becomes a named error carrying the item DynamoDB returned
(ReturnValuesOnConditionCheckFailure), so callers retry or replay without re-reading. A cancellation no
retry can cure (an item over 400 KB, a validation error) is WriteRejected, never a VersionConflict.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from credits_ledger.dal import items as it
from credits_ledger.dal import live_grants as lg
from credits_ledger.dal.client import TableRepository, error_code, failed_condition, raise_unless_cancelled
from credits_ledger.dal.pages import Page, decode_cursor, encode_cursor, pages
from credits_ledger.domain.errors import (
    ConcurrencyConflict,
    CreditsError,
    GrantNotFound,
    GrantRecordMismatch,
    InvalidCursor,
    InvalidGrant,
)
from credits_ledger.domain.models import (
    TERMINAL_STATUSES,
    AccountState,
    Change,
    ExpiryAt,
    Grant,
    LedgerEntry,
    LiveGrant,
)
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.spend import order_key
from credits_ledger.domain.times import epoch_us

LEDGER_INDEX = "LedgerByAccount"
# Tail grants read per Query page where a reader stops early (the first grant not due, enough credits).
TAIL_PAGE = 25
# The first page of one priority's expiring tail grants (_expiring_runs): a reader wants one or two of them.
FIRST_RUN_PAGE = 2
# Reads of an account and its tail before giving up when every one meets a newer version (a busy account).
TAIL_READ_ATTEMPTS = 10
GRANTS_INDEX = "GrantsByAccount"
EXPIRY_INDEX = "ExpiringGrants"


class _TailMoved(Exception):
    """The account changed while its tail was read: the read is not one version's view."""


class EntryExists(CreditsError):
    """A ledger entry with this key was committed before: the operation is a replay."""

    def __init__(self, entries: dict[str, LedgerEntry]) -> None:
        super().__init__(f"ledger entries already exist: {sorted(entries)}")
        self.entries = entries


class RelatedItemChanged(CreditsError):
    """A condition on an item written alongside the change (e.g. a Stripe payment record) failed."""

    def __init__(self, index: int) -> None:
        super().__init__(f"related item {index} changed concurrently")
        self.index = index


class VersionConflict(CreditsError):
    """The account changed since it was read; ``current`` is its state now (None: read it again)."""

    def __init__(self, current: AccountState | None) -> None:
        super().__init__("account changed concurrently")
        self.current = current


class AccountRepository(TableRepository):
    def __init__(
        self, client: Any | None = None, table: str | None = None, *, head_size: int = lg.HEAD_SIZE
    ) -> None:
        super().__init__(client, table)
        self.head_size = head_size  # settled grants the account item holds (dal/live_grants.py)

    # ---- reads -------------------------------------------------------------------------------------------
    def load(
        self,
        account_id: str,
        entry_keys: Sequence[str] = (),
        *,
        consistent: bool = False,
        now: datetime | None = None,
        tail: lg.GrantsToRead | None = None,
        records: Sequence[Grant] = (),
    ) -> tuple[AccountState, dict[str, LedgerEntry]]:
        """The account state and any of ``entry_keys`` already committed, in one BatchGetItem; then, for an
        account whose grants do not all fit its item, the tail grants a decision at ``now`` needs: those past
        their expiry, those of ``records`` (the grants it acts on) and what ``tail`` asks for: the tail's
        first grants until they hold ``tail.wanted`` spendable credits and number ``tail.at_least`` (never
        fewer than a head's worth: the item is refilled, so the next debits find their grants on it)
        (dal/live_grants.py).

        Eventually consistent by default (half the read units): a stale version only makes the conditional
        write fail and retry, and a missed entry is still caught by the write's attribute_not_exists. The
        tail is read strongly consistent: it is then the tail of the version read or of a newer one, and a
        newer one fails the write's version condition; an answer given without a write is checked by
        ``still_read_as``.
        """
        keys = [it.account_key(account_id), *(it.entry_key(k) for k in entry_keys)]
        state_item = None
        entries: dict[str, LedgerEntry] = {}
        for raw in self._batch_get(keys, consistent=consistent):
            item = it.from_dynamo(raw)
            if item["sk"] == it.STATE_SK:
                state_item = item
            else:
                entry = it.entry_from_item(item)
                entries[entry.entry_key] = entry
        state = it.state_from_item(account_id, state_item, self.head_size)
        # no version check here: a decision that writes is checked by its write's condition, and the commit
        # loops check one that answers without writing (still_read_as)
        wanted = tail or lg.GrantsToRead(self.head_size)
        tailed = self._with_tail(
            state,
            now or datetime.now(UTC),
            wanted=wanted.wanted,
            at_least=wanted.at_least,
            records=records,
            verify=False,
            # a decision on named grants (expire, void, refund...) needs no others, past their expiry or not,
            # unless it asked for more: expiring N grants then reads N, not N^2
            due=not records or wanted.reads > 0,
        )
        return tailed, entries

    def state(
        self,
        account_id: str,
        *,
        consistent: bool = False,
        now: datetime | None = None,
        records: Sequence[Grant] = (),
        all_grants: bool = False,
        next_expiry: bool = True,
    ) -> AccountState:
        """The account as a reader sees it at ``now``: with the next expiry of its tail (a balance needs it)
        and the tail grants of ``records``; or, ``all_grants``, with every live grant (reconcile)."""
        for _ in range(TAIL_READ_ATTEMPTS):
            response = self._client.get_item(
                TableName=self._table, Key=it.account_key(account_id), ConsistentRead=consistent
            )
            raw = response.get("Item")
            state = it.state_from_item(account_id, it.from_dynamo(raw) if raw else None, self.head_size)
            try:
                return self._with_tail(
                    state,
                    now or datetime.now(UTC),
                    records=records,
                    all_grants=all_grants,
                    next_expiry=next_expiry,
                )
            except _TailMoved:
                consistent = True
        raise ConcurrencyConflict(f"account {account_id}: its grants kept changing while read")

    def _with_tail(
        self,
        state: AccountState,
        now: datetime,
        *,
        wanted: Decimal = ZERO,
        at_least: int = 0,
        records: Sequence[Grant] = (),
        all_grants: bool = False,
        next_expiry: bool = False,
        verify: bool = True,
        due: bool = True,
    ) -> AccountState:
        stored = state.storage
        assert isinstance(stored, lg.StoredGrants)
        tail = stored.tail
        if tail is None:
            return state
        pk = f"ACCOUNT#{state.account_id}"
        start = lg.live_sk(tail.boundary)
        read: dict[str, LiveGrant] = {}
        spendable_until = tail.expires_from
        frontier: str | None = tail.boundary
        expiry: ExpiryAt | None = None
        due_checked = due and tail.expires_from is not None and now >= tail.expires_from
        wanted_records = [r for r in records if r.grant_id not in state.grants]
        if all_grants:
            for item in self._between(pk, start, lg.live_sk("~")):
                grant = lg.live_from_item(item)
                read[grant.grant_id] = grant
            frontier = None
        else:
            if due_checked:
                past_expiry, spendable_until = self._due(pk, tail, now)
                read.update(past_expiry)
            unread = [r for r in wanted_records if r.grant_id not in read]
            for grant in self._tail_grants(pk, tail.boundary, unread):
                read[grant.grant_id] = grant
            if wanted > 0:
                count = max(stored.head_size, at_least)
                frontier = self._first_grants(pk, start, read, wanted, now, at_least=count)
            if next_expiry:
                expiry = self._next_expiry(pk, tail, read, now)
        # named grants all on the item need no tail read: the item alone is one version's view
        queried = all_grants or due_checked or bool(wanted_records) or wanted > 0 or next_expiry
        if verify and queried and self._version(state.account_id) != state.version:
            # the tail items read may belong to a later version than the account item: read both again
            raise _TailMoved()
        unloaded = lg.unloaded_part(
            tail,
            read,
            frontier,
            spendable_until,
            expiry,
            expiry_known=next_expiry or all_grants,
            looked_up=frozenset(r.grant_id for r in records),
        )
        return replace(
            state,
            grants={**state.grants, **read},
            unloaded=unloaded,
            storage=replace(stored, read_from_tail=read, tail_read=queried),
        )

    def _between(
        self, pk: str, low: str, high: str, page: int | None = None, *, first_page: int | None = None
    ) -> Iterator[it.Item]:
        """Partition ``pk``'s items with ``low <= sk <= high`` in sort key order, strongly consistent (none
        when the range is empty: DynamoDB refuses a BETWEEN whose bounds are the wrong way round); in pages of
        ``page`` items when given, the first of them of ``first_page`` when that is given too."""
        if low > high:
            return iter(())
        query: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":low": {"S": low}, ":high": {"S": high}},
            "ConsistentRead": True,
        }
        if page is None:
            return self._query_all(query)
        query["Limit"] = page if first_page is None else first_page
        return self._query_all(query, then_limit=page)

    def still_read_as(self, state: AccountState) -> bool:
        """Whether an answer decided on ``state`` without a write may stand: True unless its grants kept
        apart from the account item were read (``load`` does not check those reads) and the account's
        version has moved since, so the view may mix two versions (the caller reads again)."""
        stored = state.storage
        if not isinstance(stored, lg.StoredGrants) or not stored.tail_read:
            return True
        return self._version(state.account_id) == state.version

    def _version(self, account_id: str) -> int:
        response = self._client.get_item(
            TableName=self._table,
            Key=it.account_key(account_id),
            ConsistentRead=True,
            ProjectionExpression="version",
        )
        return int(response["Item"]["version"]["N"]) if "Item" in response else 0

    def _expiring_runs(self, pk: str, tail: lg.TailSummary) -> Iterator[tuple[bool, Iterator[LiveGrant]]]:
        """The tail's expiring grants as runs: one per priority it holds, earliest expiry first (``True``:
        a reader may stop at the first grant it does not want); or, when the tail holds too many priorities
        to count them on the item, one run of the whole tail in spend order (``False``: read to its end)."""
        boundary = lg.live_sk(tail.boundary)
        if tail.groups is None:
            everything = self._between(pk, boundary, lg.live_sk("~"), TAIL_PAGE)
            yield False, (g for g in map(lg.live_from_item, everything) if g.expires_at is not None)
            return
        for priority in tail.groups:
            low, high = lg.expiring_range(priority)
            # a reader of a run usually stops at its first or second grant not yet due (the first grant not
            # due, the next expiry): a first page of 25 would read (and bill) the rest for nothing
            run = self._between(pk, max(low, boundary), high, TAIL_PAGE, first_page=FIRST_RUN_PAGE)
            yield True, map(lg.live_from_item, run)

    def _due(
        self, pk: str, tail: lg.TailSummary, now: datetime
    ) -> tuple[dict[str, LiveGrant], datetime | None]:
        """The tail grants past their expiry at ``now``, and the earliest expiry of the others."""
        due: dict[str, LiveGrant] = {}
        first_after: datetime | None = None
        for ordered, run in self._expiring_runs(pk, tail):
            for grant in run:
                assert grant.expires_at is not None
                if grant.expires_at > now:
                    if first_after is None or grant.expires_at < first_after:
                        first_after = grant.expires_at
                    if ordered:
                        break
                    continue
                due[grant.grant_id] = grant
        return due, first_after

    def _tail_grants(self, pk: str, boundary: str, records: Sequence[Grant]) -> list[LiveGrant]:
        """The tail grants among ``records`` (found by their order key, which their record gives)."""
        keys = [order_key(record.live()) for record in records]
        wanted = [it.to_dynamo({"pk": pk, "sk": lg.live_sk(key)}) for key in keys if key >= boundary]
        return [lg.live_from_item(it.from_dynamo(raw)) for raw in self._batch_get(wanted)] if wanted else []

    def _first_grants(
        self, pk: str, start: str, read: dict[str, LiveGrant], wanted: Decimal, now: datetime, at_least: int
    ) -> str | None:
        """Read the tail from its boundary until the grants read there hold ``wanted`` spendable credits and
        number ``at_least``; the frontier after them (None: the whole tail is read)."""
        gathered = ZERO
        items = self._between(pk, start, lg.live_sk("~"), max(TAIL_PAGE, at_least))
        for count, item in enumerate(items, start=1):
            grant = read.get(str(item["g"])) or lg.live_from_item(item)
            read[grant.grant_id] = grant
            if grant.is_spendable(now):
                gathered += grant.remaining
            if gathered >= wanted and count >= at_least:
                return lg.successor(str(item["sk"]).removeprefix(lg.LIVE_PREFIX))
        return None

    def _next_expiry(
        self, pk: str, tail: lg.TailSummary, read: Mapping[str, LiveGrant], now: datetime
    ) -> ExpiryAt | None:
        """The earliest expiry after ``now`` among the tail grants not read, and what expires then."""
        at: datetime | None = None
        amount = ZERO
        for ordered, run in self._expiring_runs(pk, tail):
            for grant in run:
                if grant.grant_id in read or grant.expires_at is None or grant.expires_at <= now:
                    continue
                if at is None or grant.expires_at < at:
                    at, amount = grant.expires_at, grant.remaining
                elif grant.expires_at == at:
                    amount += grant.remaining
                elif ordered:
                    break  # this priority's next grants all expire later
        return None if at is None else ExpiryAt(at, amount)

    def grant(self, grant_id: str) -> Grant:
        response = self._client.get_item(
            TableName=self._table, Key=it.grant_key(grant_id), ConsistentRead=True
        )
        raw = response.get("Item")
        if not raw:
            raise GrantNotFound(grant_id)
        return it.grant_from_item(it.from_dynamo(raw))

    def grant_records(self, grant_ids: Sequence[str]) -> list[Grant]:
        """The records of those of ``grant_ids`` that exist (strongly consistent)."""
        found = self._batch_get([it.grant_key(grant_id) for grant_id in dict.fromkeys(grant_ids)])
        return [it.grant_from_item(it.from_dynamo(raw)) for raw in found]

    def entry(self, key: str) -> LedgerEntry | None:
        response = self._client.get_item(TableName=self._table, Key=it.entry_key(key), ConsistentRead=True)
        raw = response.get("Item")
        return it.entry_from_item(it.from_dynamo(raw)) if raw else None

    def ledger_page(self, account_id: str, limit: int, cursor: str | None = None) -> Page:
        """Ledger entries newest first (by sequence number), ``limit`` per page."""
        return self._query_page(
            IndexName=LEDGER_INDEX,
            KeyConditionExpression="account_id = :a",
            ExpressionAttributeValues={":a": {"S": account_id}},
            ScanIndexForward=False,
            Limit=limit,
            cursor=cursor,
            mapper=it.entry_from_item,
        )

    def grants_page(self, account_id: str, limit: int, cursor: str | None = None) -> Page:
        """Grant records of an account, oldest first (grant ids sort by creation time)."""
        return self._query_page(
            IndexName=GRANTS_INDEX,
            KeyConditionExpression="account_id = :a",
            ExpressionAttributeValues={":a": {"S": account_id}},
            Limit=limit,
            cursor=cursor,
            mapper=it.grant_from_item,
        )

    @staticmethod
    def grant_cursor(grant: Grant) -> str:
        """A cursor that continues a grants listing right after ``grant``."""
        key = it.to_dynamo(
            {
                "pk": f"GRANT#{grant.grant_id}",
                "sk": it.GRANT_SK,
                "account_id": grant.account_id,
                "grant_id": grant.grant_id,
            }
        )
        cursor = encode_cursor(key)
        assert cursor is not None
        return cursor

    def expiring(self, before: datetime, limit: int = 100, cursor: str | None = None) -> Page:
        """(account id, grant id) of live grants with ``expires_at <= before``; cost follows what is due."""
        upper = it.expiry_sort_key(before, "~")  # "~" sorts after every grant id at the same instant
        return self._query_page(
            IndexName=EXPIRY_INDEX,
            KeyConditionExpression="expiry_shard = :s AND expiry_key <= :t",
            ExpressionAttributeValues={":s": {"S": it.EXPIRY_SHARD}, ":t": {"S": upper}},
            Limit=limit,
            cursor=cursor,
            mapper=lambda item: (item["account_id"], item["grant_id"]),
        )

    def _query_page(self, *, cursor: str | None, mapper: Any, **query: Any) -> Page:
        start = decode_cursor(cursor)
        if start is not None:
            # A cursor is only valid for the partition it came from: never let one page into another account.
            expected = query["ExpressionAttributeValues"]
            partition = next(iter(expected.values()))
            if partition not in start.values():
                raise InvalidCursor()
            query["ExclusiveStartKey"] = start
        try:
            response = self._client.query(TableName=self._table, **query)
        except ClientError as exc:
            if start is not None and error_code(exc) == "ValidationException":
                raise InvalidCursor() from exc
            raise
        except ParamValidationError as exc:  # a cursor whose values are not DynamoDB attribute values
            raise InvalidCursor() from exc
        items = [mapper(it.from_dynamo(raw)) for raw in response.get("Items", [])]
        return Page(items=items, next_cursor=encode_cursor(response.get("LastEvaluatedKey")))

    # ---- writes ------------------------------------------------------------------------------------------
    def commit(
        self,
        change: Change,
        expected_version: int,
        extra_actions: Sequence[dict[str, Any]] = (),
        *,
        unless_queue_busy_at: datetime | None = None,
    ) -> None:
        """Write ``change`` atomically, or raise EntryExists / VersionConflict / RelatedItemChanged and write
        nothing. ``extra_actions`` (TransactWriteItems actions of other aggregates, each with its own condition)
        commit in the same transaction, e.g. the Stripe payment record that says this effect was applied.
        ``unless_queue_busy_at``: only while the account item does not say its debit queue is busy at that
        time (mark_queue_busy), else VersionConflict: a debit written alone never lands past a mark it did
        not read."""
        actions = self.write_actions(change, expected_version, unless_queue_busy_at)
        first_extra = len(actions)
        actions += list(extra_actions)
        try:
            self._client.transact_write_items(
                TransactItems=actions,
                # Same token on botocore's own retries: a retry of a committed transaction is a no-op.
                ClientRequestToken=str(uuid.uuid4()),
                ReturnConsumedCapacity="NONE",
            )
        except ClientError as exc:
            raise_unless_cancelled(exc)
            raise self._cancellation_error(exc, change, first_extra) from exc

    def write_actions(
        self, change: Change, expected_version: int, unless_queue_busy_at: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The TransactWriteItems actions of ``change``, in the order ``_cancellation_error`` reads: the
        account item, the entries, new grants, closed grants, then the tail items the change moves
        (dal/live_grants.py; they need no condition of their own: the account item's version guards them)."""
        layout = self._layout(change)
        pk = f"ACCOUNT#{change.state.account_id}"
        actions = [self._state_put(change.state, expected_version, layout, unless_queue_busy_at)]
        actions += [self._entry_put(entry) for entry in change.entries]
        actions += [self._grant_put(grant) for grant in change.new_grants]
        actions += [
            self._grant_close(closed.grant_id, closed.status.value, closed.closed_at)
            for closed in change.closed_grants
        ]
        actions += [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": it.to_dynamo(lg.live_item(change.state.account_id, g)),
                }
            }
            for g in layout.puts
        ]
        actions += [
            {"Delete": {"TableName": self._table, "Key": it.to_dynamo({"pk": pk, "sk": lg.live_sk(key)})}}
            for key in layout.deletes
        ]
        return actions

    def action_count(self, change: Change) -> int:
        """``len(write_actions(change, ...))`` without serializing any item: a chunk of debits weighs itself
        again at every debit it adds, on the committer's path."""
        layout = self._layout(change)
        written = (change.entries, change.new_grants, change.closed_grants, layout.puts, layout.deletes)
        return 1 + sum(len(part) for part in written)

    @staticmethod
    def _layout(change: Change) -> lg.Layout:
        decided_at = max((e.created_at for e in change.entries), default=None) or datetime.now(UTC)
        return lg.lay_out(change.state, decided_at)

    def _cancellation_error(self, exc: ClientError, change: Change, first_extra: int) -> CreditsError:
        """Name why DynamoDB cancelled the transaction, from the reasons in action order:
        account, entries, new grants, closed grants, extra actions."""
        reasons = exc.response.get("CancellationReasons") or []

        def failed(start: int, stop: int) -> list[tuple[int, dict[str, Any]]]:
            return [
                (i, reasons[i])
                for i in range(start, min(stop, len(reasons)))
                if reasons[i].get("Code") == "ConditionalCheckFailed"
            ]

        entries_end = 1 + len(change.entries)
        existing: dict[str, LedgerEntry] = {}
        for index, reason in failed(1, entries_end):
            key = change.entries[index - 1].entry_key
            found = (
                it.entry_from_item(it.from_dynamo(reason["Item"])) if reason.get("Item") else self.entry(key)
            )
            if found is not None:
                existing[key] = found
        if existing:
            return EntryExists(existing)
        if failed(entries_end, entries_end + len(change.new_grants)):
            return InvalidGrant("grant_id", "is already used by another grant")
        closed_start = entries_end + len(change.new_grants)
        closed = failed(closed_start, closed_start + len(change.closed_grants))
        if closed and reasons and reasons[0].get("Code") == "None":
            # The account's version held, so nobody changed it since the read; its grants are closed only
            # together with a version bump, so a closed or missing record here will stay so: no retry.
            return GrantRecordMismatch(
                tuple(change.closed_grants[i - closed_start].grant_id for i, _ in closed)
            )
        extras = failed(first_extra, len(reasons))
        if extras:
            return RelatedItemChanged(extras[0][0] - first_extra)
        state_reason = reasons[0] if reasons else {}
        current = None
        if (
            state_reason.get("Code") == "ConditionalCheckFailed"
            and state_reason.get("Item")
            and "tail" not in state_reason["Item"]  # a tail is read with what a decision needs of it
        ):
            current = it.state_from_item(
                change.state.account_id, it.from_dynamo(state_reason["Item"]), self.head_size
            )
        return VersionConflict(current)

    def _state_put(
        self,
        state: AccountState,
        expected_version: int,
        layout: lg.Layout,
        unless_queue_busy_at: datetime | None = None,
    ) -> dict[str, Any]:
        put: dict[str, Any] = {
            "TableName": self._table,
            "Item": it.to_dynamo(it.state_to_item(state, layout)),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if expected_version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
            return {"Put": put}
        condition, values = "version = :v", {":v": {"N": str(expected_version)}}
        if unless_queue_busy_at is not None:
            condition += " AND (attribute_not_exists(queue_busy_until) OR queue_busy_until <= :quiet_at)"
            values[":quiet_at"] = {"N": str(epoch_us(unless_queue_busy_at))}
        put["ConditionExpression"] = condition
        put["ExpressionAttributeValues"] = values
        return {"Put": put}

    def mark_queue_busy(self, account_id: str, until: datetime) -> str | None:
        """Say on the account item, without a new version, that its debit queue is being committed until
        ``until``: debits that read it join the queue, and one that read the item before cannot be written
        alone past it (commit's ``unless_queue_busy_at``). A mark already as late, or no account item, is left
        as it is. A hint its caller can go without: None once the item says so (or there is no account),
        else DynamoDB's error code (e.g. ``TransactionConflictException`` while a transaction writes the item,
        a throttle after botocore's retries), or the name of the error of a call that got no answer (a
        timeout, a lost connection: the mark may or may not be there, either is fine)."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key=it.account_key(account_id),
                UpdateExpression="SET queue_busy_until = :until",
                ConditionExpression=(
                    "attribute_exists(pk) AND (attribute_not_exists(queue_busy_until) OR queue_busy_until < :until)"
                ),
                ExpressionAttributeValues={":until": {"N": str(epoch_us(until))}},
            )
        except ClientError as exc:
            return None if failed_condition(exc) else error_code(exc)
        except BotoCoreError as exc:
            return type(exc).__name__
        return None

    def _entry_put(self, entry: LedgerEntry) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": it.to_dynamo(it.entry_to_item(entry)),
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _grant_put(self, grant: Grant) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": it.to_dynamo(it.grant_to_item(grant)),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def _grant_close(self, grant_id: str, status: str, closed_at: datetime) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._table,
                "Key": it.grant_key(grant_id),
                "UpdateExpression": "SET #status = :status, remaining = :zero, closed_at = :at "
                "REMOVE expiry_shard, expiry_key",
                "ConditionExpression": "attribute_exists(pk) AND NOT #status IN (:t0, :t1, :t2)",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":status": {"S": status},
                    ":zero": {"N": "0"},
                    ":at": {"S": it.iso(closed_at)},
                    **{f":t{i}": {"S": s.value} for i, s in enumerate(sorted(TERMINAL_STATUSES))},
                },
            }
        }

    def cost_basis_update(self, grant_id: str, amount: Decimal, currency: str | None) -> dict[str, Any]:
        """A transaction action correcting a grant's cost basis (not a ledger change: credits stay as they are)."""
        return {
            "Update": {
                "TableName": self._table,
                "Key": it.grant_key(grant_id),
                "UpdateExpression": "SET cost_amount = :amount, cost_currency = :currency"
                if currency
                else "SET cost_amount = :amount REMOVE cost_currency",
                "ConditionExpression": "attribute_exists(pk)",
                "ExpressionAttributeValues": it.to_dynamo({":amount": amount, ":currency": currency}),
            }
        }

    def iter_expiring(self, before: datetime) -> Iterator[tuple[str, str]]:
        for _, page in pages(lambda cursor: self.expiring(before, cursor=cursor)):
            yield from page.items
