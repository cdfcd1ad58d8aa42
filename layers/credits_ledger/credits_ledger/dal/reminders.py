"""ReminderRepository: the record that an expiry reminder was sent, one item per grant and threshold.

  reminder   pk=REMINDER#<grant id>#<days>  sk=REMINDER   (TTL: 35 days after the grant's expires_at)

The record is written with ``attribute_not_exists(pk)`` *before* the event is published: whoever wins the
write is the only one allowed to publish, so a reminder is never sent twice (at-most-once; see
docs/expiry.md). If publishing then fails, ``forget`` deletes the record, on the condition that it is still
the one this run wrote, so the next run tries again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import TableRepository, failed_condition
from credits_ledger.domain.errors import CreditsError

REMINDER_SK = "REMINDER"
KEEP_AFTER_EXPIRY = timedelta(days=35)


@dataclass(frozen=True)
class Reminder:
    account_id: str
    grant_id: str
    threshold_days: int
    expires_at: datetime
    run_id: str


class ReminderAlreadySent(CreditsError):
    def __init__(self, grant_id: str, days: int) -> None:
        super().__init__(f"the {days}-day reminder of grant {grant_id} was sent already")
        self.grant_id = grant_id
        self.days = days


def reminder_key(grant_id: str, days: int) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"REMINDER#{grant_id}#{days}", "sk": REMINDER_SK})


class ReminderRepository(TableRepository):
    def sent(self, candidates: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which (grant, days) reminders are recorded: one eventually consistent BatchGetItem per 100, a cheap
        pre-filter (0.5 read unit each) so the nightly run does not spend a failed conditional write (1 write
        unit) on every grant whose reminder went out on an earlier night. The conditional write stays the guard.
        """
        wanted = list(dict.fromkeys(candidates))
        found: set[tuple[str, int]] = set()
        raws = self._batch_get(
            [reminder_key(g, d) for g, d in wanted],
            consistent=False,
            ProjectionExpression="#g, #d",
            ExpressionAttributeNames={"#g": "grant", "#d": "threshold_days"},
        )
        for raw in raws:
            item = it.from_dynamo(raw)
            found.add((item["grant"], int(item["threshold_days"])))
        return found

    def record(self, reminder: Reminder, now: datetime) -> None:
        """Claim the reminder; raises ReminderAlreadySent when it was claimed before (by any run)."""
        item = {
            "pk": f"REMINDER#{reminder.grant_id}#{reminder.threshold_days}",
            "sk": REMINDER_SK,
            # not account_id/grant_id: those would put the item into GrantsByAccount / other indexes
            "account": reminder.account_id,
            "grant": reminder.grant_id,
            "threshold_days": reminder.threshold_days,
            "expires_at": it.iso(reminder.expires_at),
            "run_id": reminder.run_id,
            "sent_at": it.iso(now),
            "ttl": int((reminder.expires_at + KEEP_AFTER_EXPIRY).timestamp()),
        }
        try:
            self._client.put_item(
                TableName=self._table,
                Item=it.to_dynamo(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
            raise ReminderAlreadySent(reminder.grant_id, reminder.threshold_days) from exc

    def forget(self, reminder: Reminder) -> None:
        """Undo ``record`` after a failed publish, only if the record is still this run's."""
        try:
            self._client.delete_item(
                TableName=self._table,
                Key=reminder_key(reminder.grant_id, reminder.threshold_days),
                ConditionExpression="run_id = :r",
                ExpressionAttributeValues={":r": {"S": reminder.run_id}},
            )
        except ClientError as exc:
            if not failed_condition(exc):
                raise
