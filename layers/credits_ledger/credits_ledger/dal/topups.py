"""TopupRepository: automatic top-up attempts and the per-account top-up state.

  top-up state     pk=ACCOUNT#<account>  sk=TOPUP          in_flight (attempt id), month (UTC YYYY-MM), count
  top-up attempt   pk=TOPUP#<attempt id> sk=TOPUP          account, crossing entry, pack, quantity, status,
                                                           charge, payment_intent, reason, created_at,
                                                           settled_at

An attempt id is ``<account>|<entry key of the crossing debit>``: one attempt per crossing, whichever
delivery of the stream record claims it. The claim is one transaction whose conditions state the invariants:
the attempt does not exist yet; the account has no attempt in flight; fewer than ``monthly_limit`` attempts
were started this UTC month. ``count`` only moves together with a new attempt item, so a repeated claim
cannot count twice. Settling (``succeeded`` / ``failed``) is one transaction: the attempt leaves an open status
and ``in_flight`` (which names it while it is open) is cleared; only one settlement wins (the worker's
decline and the ``payment_intent.payment_failed`` webhook race). The winner notes the event to publish
(``announce``) on the attempt, publishes it and removes the note, so a crash in between is repaired by
the next delivery and the race publishes once. An attempt's ``charge`` (who pays, how much, with which card)
is fixed once, before the first PaymentIntent request, and every retry sends it again: the request under the
attempt's idempotency key is then the same, so Stripe answers a retry with the first PaymentIntent instead
of an idempotency error when the price or the card changed in between. No ``account_id`` attribute: in no index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from credits_ledger.dal import items as it
from credits_ledger.dal.client import TRANSACTION_CANCELLED, TableRepository, error_code, failed_condition
from credits_ledger.domain.errors import CreditsError

CLAIMED = "claimed"  # the attempt exists; the PaymentIntent may or may not have been created
REQUESTED = "requested"  # Stripe answered the PaymentIntent creation
SUCCEEDED = "succeeded"
FAILED = "failed"
OPEN = (CLAIMED, REQUESTED)


@dataclass(frozen=True)
class TopupCharge:
    """What an attempt's PaymentIntent charges: fixed once per attempt (see the module docstring)."""

    customer: str
    amount: int  # minor units
    currency: str
    payment_method: str


@dataclass(frozen=True)
class TopupAttempt:
    attempt_id: str
    account: str
    entry_key: str
    pack: str
    quantity: int
    status: str
    created_at: datetime
    payment_intent: str | None = None
    reason: str | None = None
    announce: str | None = None  # the event of the settlement, until it is published
    settled_at: datetime | None = None
    charge: TopupCharge | None = None


@dataclass(frozen=True)
class TopupState:
    account: str
    in_flight: str | None = None
    month: str | None = None
    count: int = 0
    # the last attempt failed (a decline, a missing payment method): only a debit that crosses the threshold
    # from at or above it starts the next one, not every debit that stays below
    waits_for_crossing: bool = False


class TopupNotStarted(CreditsError):
    """The claim's conditions failed: a top-up is in flight, or the month's limit is reached."""

    def __init__(self, state: TopupState, reason: str) -> None:
        super().__init__(f"no top-up for {state.account}: {reason}")
        self.state = state
        self.reason = reason


def attempt_id_of(account: str, entry_key: str) -> str:
    return f"{account}|{entry_key}"


def _state_key(account: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"ACCOUNT#{account}", "sk": "TOPUP"})


def _attempt_key(attempt_id: str) -> dict[str, Any]:
    return it.to_dynamo({"pk": f"TOPUP#{attempt_id}", "sk": "TOPUP"})


def _charge(item: it.Item | None) -> TopupCharge | None:
    if not item:
        return None
    return TopupCharge(item["customer"], int(item["amount"]), item["currency"], item["payment_method"])


def _attempt(item: it.Item) -> TopupAttempt:
    return TopupAttempt(
        attempt_id=item["attempt_id"],
        account=item["account"],
        entry_key=item["entry_key"],
        pack=item["pack"],
        quantity=int(item["quantity"]),
        status=item["status"],
        created_at=it.parse_iso(item["created_at"]),
        payment_intent=item.get("payment_intent"),
        reason=item.get("reason"),
        announce=item.get("announce"),
        settled_at=it.parse_iso(item["settled_at"]) if item.get("settled_at") else None,
        charge=_charge(item.get("charge")),
    )


def _state(account: str, item: it.Item | None) -> TopupState:
    if not item:
        return TopupState(account)
    return TopupState(
        account,
        item.get("in_flight"),
        item.get("month"),
        int(item.get("count", 0)),
        bool(item.get("waits_for_crossing", False)),
    )


def _refused(exc: ClientError) -> bool:
    """A top-up write (one item or a transaction) whose conditions did not hold: the attempt moved on."""
    return failed_condition(exc) or error_code(exc) == TRANSACTION_CANCELLED


class TopupRepository(TableRepository):
    # ---- reads -------------------------------------------------------------------------------------------
    def state(self, account: str) -> TopupState:
        raw = self._client.get_item(TableName=self._table, Key=_state_key(account), ConsistentRead=True)
        item = raw.get("Item")
        return _state(account, it.from_dynamo(item) if item else None)

    def attempt(self, attempt_id: str) -> TopupAttempt | None:
        raw = self._client.get_item(TableName=self._table, Key=_attempt_key(attempt_id), ConsistentRead=True)
        item = raw.get("Item")
        return _attempt(it.from_dynamo(item)) if item else None

    # ---- writes ------------------------------------------------------------------------------------------
    def claim(
        self, attempt: TopupAttempt, month: str, monthly_limit: int | None, *, crossing: bool = True
    ) -> tuple[TopupAttempt, bool]:
        """Start ``attempt`` (True), or return the attempt already stored under its id (False).

        Raises TopupNotStarted when another attempt is in flight, ``monthly_limit`` is reached this month, the
        debit is of a month before the last top-up's (a debit delivered late, or a failed batch replayed: its
        month's count is gone, and starting it would begin that month's count again), or the last attempt
        failed and this debit is no ``crossing`` of the threshold (a crossing re-arms).
        """
        for _ in range(3):  # the state read may be stale by the time the transaction runs: decide again
            existing = self.attempt(attempt.attempt_id)
            if existing is not None:
                return existing, False
            state = self.state(attempt.account)
            if state.in_flight is not None:
                raise TopupNotStarted(state, "a top-up is in flight")
            if state.month is not None and month < state.month:  # "YYYY-MM": months only move forward
                raise TopupNotStarted(
                    state, f"a debit of {month}, before the last top-up's month {state.month}"
                )
            same_month = state.month == month
            if same_month and monthly_limit is not None and state.count >= monthly_limit:
                raise TopupNotStarted(state, f"monthly limit of {monthly_limit} reached")
            if state.waits_for_crossing and not crossing:
                raise TopupNotStarted(state, "the last top-up failed: waiting for the next crossing")
            values: dict[str, Any] = {":id": attempt.attempt_id, ":m": month, ":one": 1}
            if same_month:
                update = "SET in_flight = :id, #c = #c + :one"
                condition = "attribute_not_exists(in_flight) AND #m = :m"
                if monthly_limit is not None:
                    condition += " AND #c < :limit"
                    values[":limit"] = monthly_limit
            else:
                update = "SET in_flight = :id, #m = :m, #c = :one"
                condition = "attribute_not_exists(in_flight) AND (attribute_not_exists(#m) OR #m < :m)"
            if crossing:
                update += " REMOVE waits_for_crossing"
            else:
                condition += " AND attribute_not_exists(waits_for_crossing)"
            item = {
                "pk": f"TOPUP#{attempt.attempt_id}",
                "sk": "TOPUP",
                "attempt_id": attempt.attempt_id,
                "account": attempt.account,
                "entry_key": attempt.entry_key,
                "pack": attempt.pack,
                "quantity": attempt.quantity,
                "status": CLAIMED,
                "created_at": it.iso(attempt.created_at),
            }
            try:
                self._client.transact_write_items(
                    TransactItems=[
                        {
                            "Update": {
                                "TableName": self._table,
                                "Key": _state_key(attempt.account),
                                "UpdateExpression": update,
                                "ConditionExpression": condition,
                                "ExpressionAttributeNames": {"#m": "month", "#c": "count"},
                                "ExpressionAttributeValues": it.to_dynamo(values),
                            }
                        },
                        {
                            "Put": {
                                "TableName": self._table,
                                "Item": it.to_dynamo(item),
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        },
                    ]
                )
            except ClientError as exc:
                if not _refused(exc):
                    raise
                continue  # read again: either the attempt exists now, or the state says why not
            return _attempt(item), True
        state = self.state(attempt.account)
        raise TopupNotStarted(state, "the top-up state kept changing")

    def fix_charge(self, attempt_id: str, charge: TopupCharge) -> TopupCharge | None:
        """Fix ``charge`` on a ``claimed`` attempt that has none. The attempt's charge afterwards: this one, or
        the one fixed first (a concurrent delivery's, or this delivery's own before a lost answer); None when
        the attempt has none and left ``claimed`` (settled meanwhile): there is nothing to charge."""
        fixed = self._update_if(
            refused=_refused,
            Key=_attempt_key(attempt_id),
            UpdateExpression="SET charge = :charge",
            ConditionExpression="#s = :claimed AND attribute_not_exists(charge)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=it.to_dynamo({":claimed": CLAIMED, ":charge": asdict(charge)}),
        )
        if fixed:
            return charge
        stored = self.attempt(attempt_id)
        return stored.charge if stored is not None else None

    def mark_requested(self, attempt_id: str, payment_intent: str) -> bool:
        """``claimed`` -> ``requested`` with the PaymentIntent id; False when already past ``claimed``."""
        return self._update_if(
            refused=_refused,
            Key=_attempt_key(attempt_id),
            UpdateExpression="SET #s = :requested, payment_intent = :pi",
            ConditionExpression="#s = :claimed",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=it.to_dynamo(
                {":requested": REQUESTED, ":claimed": CLAIMED, ":pi": payment_intent}
            ),
        )

    def settle(
        self,
        attempt: TopupAttempt,
        status: str,
        at: datetime,
        announce: str,
        payment_intent: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """An open attempt -> ``succeeded`` / ``failed`` and the account's ``in_flight`` cleared, in one
        transaction, with ``announce`` (the event to publish) noted on the attempt until ``announced``. False
        when the attempt was settled already (nothing written): only one settlement wins."""
        values: dict[str, Any] = {
            ":status": status,
            ":at": it.iso(at),
            ":claimed": CLAIMED,
            ":requested": REQUESTED,
            ":announce": announce,
        }
        update = "SET #s = :status, settled_at = :at, announce = :announce"
        state_update = "REMOVE in_flight"
        state_values: dict[str, Any] = {":id": attempt.attempt_id}
        if status == FAILED:  # a failure leaves the next top-up to the next crossing (contract section 7)
            state_update += " SET waits_for_crossing = :true"
            state_values[":true"] = True
        if payment_intent:
            update += ", payment_intent = :pi"
            values[":pi"] = payment_intent
        if reason:
            update += ", reason = :reason"
            values[":reason"] = reason[:500]
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": _attempt_key(attempt.attempt_id),
                            "UpdateExpression": update,
                            "ConditionExpression": "#s IN (:claimed, :requested)",
                            "ExpressionAttributeNames": {"#s": "status"},
                            "ExpressionAttributeValues": it.to_dynamo(values),
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": _state_key(attempt.account),
                            "UpdateExpression": state_update,
                            "ConditionExpression": "in_flight = :id",
                            "ExpressionAttributeValues": it.to_dynamo(state_values),
                        }
                    },
                ]
            )
        except ClientError as exc:
            if not _refused(exc):
                raise
            return False
        return True

    def announced(self, attempt_id: str) -> None:
        """The settlement's event was published: forget it (a repeat finds nothing to announce)."""
        self._update_if(
            refused=_refused,
            Key=_attempt_key(attempt_id),
            UpdateExpression="REMOVE announce",
            ConditionExpression="attribute_exists(announce)",
        )
