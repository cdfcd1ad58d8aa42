"""DebitQueue: the debits of a busy account waiting to be committed together, and the lease of the one
writer committing them (combining.py, docs/decisions.md "A busy account commits its debits together").

  queued debit   pk=ACCOUNT#<account>  sk=DEBIT#<entry key>   the DebitRequest, owner, queued_at and
                                                              commit_by (epoch ms), answer (once decided
                                                              without a commit), ttl
  commit lease   pk=ACCOUNT#<account>  sk=DEBIT_LEASE          holder, until (epoch ms), ttl

Invariants, each a condition:
  - one queued item per entry key (``attribute_not_exists``): a retried request waits on the first one;
  - a queued debit leaves the queue committed (deleted in the ledger's own transaction, on condition that it
    is still there, unanswered, of the owner the committer read and before its ``commit_by``), answered (then
    removed by its owner), or withdrawn by its owner (unanswered only): at most one of the three. Besides, a
    debit past its ``commit_by`` (its waiter's invocation is over) is removed unwritten by the next committer
    that reads it (and DynamoDB's TTL removes what nobody did);
  - one lease holder at a time (taken only when absent or past ``until``; released only by its holder).
The lease is for throughput only: two committers at once lose races on the account's version, never credits.
Neither item kind matches the ledger stream's filters (sk ``STATE``, pk ``ENTRY#``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import TableRepository, error_code, failed_condition, rejection
from credits_ledger.domain.debits import DebitRequest
from credits_ledger.domain.models import LedgerEntry

QUEUED_PREFIX = "DEBIT#"
# DynamoDB limits a sort key to 1,024 bytes, and an entry key may take as many (idempotency.MAX_KEY_BYTES): a
# key that does not fit after the prefix is queued under its digest (the item keeps the key itself). Only usage
# keys are queued ("usage:..." or "usage#sha256:..."), so no spelled-out key starts like a digest.
MAX_SORT_KEY_BYTES = 1024
QUEUED_DIGEST = "sha256:"
LEASE_SK = "DEBIT_LEASE"
# A queued debit is committed only before its ``commit_by``: the end of its waiter's invocation (less the
# answer margin), or, for a waiter without one (tools, tests), the end of its longest wait; never more than
# this after it was queued. Past it the waiter has answered or is gone, so a debit never surfaces after its
# client was told anything else.
MAX_QUEUED_MS = 60_000
# Debits past their commit_by one read of the queue removes at most (the rest go with the next reads or TTL).
MAX_STALE_REMOVALS = 25
# DynamoDB's TTL removes what nobody removed (an owner that died before reading its answer).
KEEP_SECONDS = 3_600
# Query pages one read of the queue reads at most (items past their commit_by are removed, answered ones
# skipped: their owners remove them).
MAX_QUEUE_PAGES = 3


class Answer(StrEnum):
    """What the committer decided for a queued debit it did not commit."""

    REPLAYED = "replayed"  # its entry key was committed before: answer from that entry
    DECIDE_ALONE = "decide_alone"  # refused (e.g. too few credits): the waiter decides it again itself


@dataclass(frozen=True)
class QueuedDebit:
    request: DebitRequest
    owner: str
    queued_at_ms: int
    commit_by_ms: int
    answer: Answer | None = None


@dataclass(frozen=True)
class Lease:
    holder: str
    until_ms: int

    def free_at(self, now_ms: int) -> bool:
        return self.until_ms < now_ms


@dataclass(frozen=True)
class Look:
    queued: QueuedDebit | None = None
    lease: Lease | None = None
    entry: LedgerEntry | None = None


def queued_sort_key(entry_key: str) -> str:
    spelled = f"{QUEUED_PREFIX}{entry_key}"
    if len(spelled.encode("utf-8")) <= MAX_SORT_KEY_BYTES:
        return spelled
    return f"{QUEUED_PREFIX}{QUEUED_DIGEST}{hashlib.sha256(entry_key.encode('utf-8')).hexdigest()}"


def queued_key(account_id: str, entry_key: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"ACCOUNT#{account_id}", "sk": queued_sort_key(entry_key)})


def lease_key(account_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"ACCOUNT#{account_id}", "sk": LEASE_SK})


def queued_to_item(account_id: str, queued: QueuedDebit) -> it.Item:
    request = queued.request
    return {
        "pk": f"ACCOUNT#{account_id}",
        "sk": queued_sort_key(request.key),
        "entry_key": request.key,
        "amount": request.amount,
        "fingerprint": request.fingerprint or None,
        "reference": request.reference,
        "metadata": request.metadata or None,
        "allow_overage": request.allow_overage,
        "owner": queued.owner,
        "queued_at": queued.queued_at_ms,
        "commit_by": queued.commit_by_ms,
        "ttl": queued.commit_by_ms // 1000 + KEEP_SECONDS,
    }


def queued_from_item(item: it.Item) -> QueuedDebit:
    request = DebitRequest(
        key=item["entry_key"],
        amount=Decimal(item["amount"]),
        fingerprint=item.get("fingerprint", ""),
        reference=item.get("reference"),
        metadata=dict(item.get("metadata") or {}),
        allow_overage=bool(item.get("allow_overage", False)),
    )
    answer = item.get("answer")
    return QueuedDebit(
        request=request,
        owner=item["owner"],
        queued_at_ms=int(item["queued_at"]),
        commit_by_ms=int(item["commit_by"]),
        answer=Answer(answer) if answer else None,
    )


_OPEN = "attribute_exists(pk) AND attribute_not_exists(answer)"


class DebitQueue(TableRepository):
    # ---- the queue -----------------------------------------------------------------------------------------
    def enqueue(
        self, account_id: str, request: DebitRequest, owner: str, now_ms: int, commit_by_ms: int
    ) -> bool:
        """Queue ``request``, to be committed before ``commit_by_ms`` or not at all; False when a debit with
        its entry key is queued already (this request then waits on that one, whose owner answers the client
        that sent it)."""
        item = queued_to_item(account_id, QueuedDebit(request, owner, now_ms, commit_by_ms))
        return self._conditional(
            "put_item",
            own=("owner", owner),
            Item=it.to_dynamo(item),
            ConditionExpression="attribute_not_exists(pk)",
        )

    def waiting(self, account_id: str, now_ms: int, limit: int) -> list[QueuedDebit]:
        """Up to ``limit`` queued debits nobody decided yet, the longest waiting first (strongly consistent:
        the committer must see every debit queued before it looked). Stale ones it meets are removed."""
        found: list[QueuedDebit] = []
        removals = 0
        for item in self._partition(
            f"ACCOUNT#{account_id}", QUEUED_PREFIX, consistent=True, max_pages=MAX_QUEUE_PAGES
        ):
            queued = queued_from_item(item)
            if queued.commit_by_ms <= now_ms:
                if queued.answer is None and removals < MAX_STALE_REMOVALS:
                    removals += 1
                    self._remove_stale(account_id, queued)
            elif queued.answer is None:
                found.append(queued)
        # oldest first: a debit queued under a key that sorts late is not passed over round after round
        return sorted(found, key=lambda queued: queued.queued_at_ms)[:limit]

    def look(self, account_id: str, entry_key: str) -> Look:
        """The queued debit under ``entry_key`` (None once it left the queue), the account's lease and the
        ledger entry under ``entry_key``, in one read (strongly consistent item by item, not as a whole: an
        entry missing next to a queue item gone may have been committed between the two reads)."""
        look = Look()
        keys = [queued_key(account_id, entry_key), lease_key(account_id), it.entry_key(entry_key)]
        for raw in self._batch_get(keys):
            item = it.from_dynamo(raw)
            if item["sk"] == LEASE_SK:
                look = replace(look, lease=Lease(holder=item["holder"], until_ms=int(item["until"])))
            elif item["sk"] == it.ENTRY_SK:
                look = replace(look, entry=it.entry_from_item(item))
            else:
                look = replace(look, queued=queued_from_item(item))
        return look

    def taken_action(self, account_id: str, queued: QueuedDebit, now_ms: int) -> dict[str, Any]:
        """The transaction action removing ``queued`` (as the committer read it) as its entry is committed,
        built at ``now_ms``. Its condition fails, and the whole commit with it, when that debit was withdrawn
        or answered meanwhile, when another request with its id queued since (another owner, maybe another
        body), or when its ``commit_by`` has come."""
        return {
            "Delete": {
                "TableName": self._table,
                "Key": queued_key(account_id, queued.request.key),
                "ConditionExpression": f"{_OPEN} AND #owner = :owner AND commit_by > :now",
                "ExpressionAttributeNames": {"#owner": "owner"},
                "ExpressionAttributeValues": {":owner": {"S": queued.owner}, ":now": {"N": str(now_ms)}},
            }
        }

    def answer(self, account_id: str, entry_key: str, answer: Answer) -> None:
        """Record the committer's answer for a debit it did not commit (nothing, if it already left)."""
        self._conditional(
            "update_item",
            Key=queued_key(account_id, entry_key),
            UpdateExpression="SET answer = :answer",
            ConditionExpression=_OPEN,
            ExpressionAttributeValues={":answer": {"S": answer.value}},
        )

    def withdraw(self, account_id: str, entry_key: str, owner: str) -> bool:
        """The owner takes its debit out of the queue before anyone decided it; False when it had already
        left (committed or answered: look again for the answer) or a transaction holding it is under way
        (DynamoDB's TransactionConflict: look again, it will have ended)."""
        try:
            return self._conditional(
                "delete_item",
                Key=queued_key(account_id, entry_key),
                ConditionExpression=f"{_OPEN} AND #owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except ClientError as exc:
            if error_code(exc) != "TransactionConflictException":
                raise
            return False

    def discard_answered(self, account_id: str, entry_key: str, owner: str) -> None:
        """The owner removes its answered debit once it has read the answer."""
        self._conditional(
            "delete_item",
            Key=queued_key(account_id, entry_key),
            ConditionExpression="attribute_exists(answer) AND #owner = :owner",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": {"S": owner}},
        )

    def _remove_stale(self, account_id: str, queued: QueuedDebit) -> None:
        self._conditional(
            "delete_item",
            Key=queued_key(account_id, queued.request.key),
            ConditionExpression=f"{_OPEN} AND #owner = :owner",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": {"S": queued.owner}},
        )

    # ---- the lease -----------------------------------------------------------------------------------------
    def take_lease(self, account_id: str, holder: str, now_ms: int, until_ms: int) -> bool:
        """Hold the account's commit lease until ``until_ms``; False when another holder has it now (a
        re-send of this very put, its first answer lost, finds its own holder)."""
        return self._conditional(
            "put_item",
            own=("holder", holder),
            Item=it.to_dynamo(
                {
                    "pk": f"ACCOUNT#{account_id}",
                    "sk": LEASE_SK,
                    "holder": holder,
                    "until": until_ms,
                    "ttl": until_ms // 1000 + KEEP_SECONDS,
                }
            ),
            ConditionExpression="attribute_not_exists(pk) OR #until < :now",
            ExpressionAttributeNames={"#until": "until"},
            ExpressionAttributeValues={":now": {"N": str(now_ms)}},
        )

    def release_lease(self, account_id: str, holder: str) -> None:
        self._conditional(
            "delete_item",
            Key=lease_key(account_id),
            ConditionExpression="holder = :holder",
            ExpressionAttributeValues={":holder": {"S": holder}},
        )

    def _conditional(self, operation: str, own: tuple[str, str] | None = None, **request: Any) -> bool:
        """One conditional single-item write: True when written, False when its condition failed. With
        ``own`` (attribute, value), a failed condition on an item already carrying that value is this very
        write, re-sent by botocore after its first answer was lost: True. WriteRejected when DynamoDB refuses
        the write as such (it never landed, and would be refused again)."""
        if own is not None:
            request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            getattr(self._client, operation)(TableName=self._table, **request)
        except ClientError as exc:
            if not failed_condition(exc):
                rejected = rejection(exc)
                if rejected is not None:
                    raise rejected from exc
                raise
            old = exc.response.get("Item") or {}
            return own is not None and old.get(own[0], {}).get("S") == own[1]
        return True
