"""Every write is safe to apply twice: failures injected around a committed TransactWriteItems.

Faults are injected with botocore event hooks on the Ledger's own client (created with the production
``CLIENT_CONFIG``: standard retry mode, 5 attempts):

- ``needs-retry.dynamodb.TransactWriteItems`` (handler kwargs: response, endpoint, operation, attempts,
  caught_exception, request_dict; a non-None return is the retry delay): ask botocore to re-send a
  transaction that already committed;
- ``before-send.dynamodb.<Operation>`` (kwargs: request; returning an AWSResponse short-circuits the HTTP
  send), registered with ``register_first`` so it runs before moto's stubber: throttle, cancel, or commit
  through moto and then lose the response (ReadTimeoutError -> botocore retries);
- ``after-call.dynamodb.TransactWriteItems`` (kwargs: http_response, parsed, model, context): raise after the
  commit so the caller sees a failure of a write that happened, then calls the same operation again.

Whatever happens: exactly one ledger entry per idempotency key, the balance moved once, books balanced.
A write DynamoDB rejects for good (a cancellation for ValidationError, an item collection over its limit, a
ValidationException) is WriteRejected at once: no botocore retry, no conflict retry, nothing written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ReadTimeoutError

from credits_ledger.aws import CLIENT_CONFIG
from credits_ledger.dal.client import RETRYABLE_CANCELLATIONS, rejection
from credits_ledger.domain.errors import GrantRecordMismatch, WriteRejected
from credits_ledger.domain.models import Category, EntryType, LedgerEntry
from credits_ledger.ledger import DebitRequest, Ledger
from tests.support.faults import fail_after_commit, read_timeout, resend_after_commit
from tests.support.ledger import T0, FakeClock, all_entries, assert_books_balance, make_ledger, spec

D = Decimal
ACCT = "cus_fi"
TWI = "TransactWriteItems"


# ---- operations under test ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """A write: ``run`` performs it (same idempotency keys every time) and returns its entries."""

    name: str
    run: Callable[[Ledger], list[LedgerEntry]]
    keys: tuple[str, ...]
    expected: tuple[tuple[EntryType, Decimal], ...]
    setup: Callable[[Ledger], None] = field(default=lambda ledger: None)


def _hold_first(ledger: Ledger) -> None:
    ledger.hold("gr_2", key="hold:1")


def _debit_many(ledger: Ledger) -> list[LedgerEntry]:
    results = ledger.debit_many(
        ACCT,
        [DebitRequest("use:m1", D(10), fingerprint="m1"), DebitRequest("use:m2", D("5.5"), fingerprint="m2")],
    )
    assert all(r.error is None and r.outcome is not None for r in results), results
    return [r.outcome.entry for r in results if r.outcome]


def _one(outcome: Any) -> list[LedgerEntry]:
    assert outcome is not None
    return [outcome.entry]


OPS = [
    Op(
        "grant",
        lambda lg: _one(lg.grant(ACCT, spec("gr_3", "20"), key="g:3", fingerprint="f3")),
        ("g:3",),
        ((EntryType.GRANT, D(20)),),
    ),
    Op(
        "debit",
        lambda lg: _one(lg.debit(ACCT, DebitRequest("use:1", D(30), fingerprint="u1"))),
        ("use:1",),
        ((EntryType.DEBIT, D(-30)),),
    ),
    Op(
        "debit_many",
        _debit_many,
        ("use:m1", "use:m2"),
        ((EntryType.DEBIT, D(-10)), (EntryType.DEBIT, D("-5.5"))),
    ),
    Op(
        "expire",
        lambda lg: _one(lg.expire("gr_1", T0 + timedelta(days=2))),
        ("expire:gr_1",),
        ((EntryType.EXPIRE, D(-100)),),
    ),
    Op("void", lambda lg: _one(lg.void("gr_2")), ("void:gr_2",), ((EntryType.VOID, D(-50)),)),
    Op("hold", lambda lg: _one(lg.hold("gr_2", key="hold:1")), ("hold:1",), ((EntryType.HOLD, D(0)),)),
    Op(
        "release",
        lambda lg: _one(lg.release("gr_2", key="release:1")),
        ("release:1",),
        ((EntryType.RELEASE, D(0)),),
        setup=_hold_first,
    ),
    Op(
        "revoke",
        lambda lg: _one(lg.revoke("gr_1", D(40), key="refund:1")),
        ("refund:1",),
        ((EntryType.REVOKE, D(-40)),),
    ),
    Op(
        "adjust+",
        lambda lg: _one(lg.adjust(ACCT, D(7), key="adj:1")),
        ("adj:1",),
        ((EntryType.ADJUSTMENT, D(7)),),
    ),
    Op(
        "adjust-",
        lambda lg: _one(lg.adjust(ACCT, D(-7), key="adj:2")),
        ("adj:2",),
        ((EntryType.ADJUSTMENT, D(-7)),),
    ),
]
OP_IDS = [op.name for op in OPS]


def ops(*names: str) -> Any:
    """A subset of OPS as pytest params (every fault runs on every op only where it is cheap enough)."""
    return [pytest.param(op, id=op.name) for op in OPS if op.name in names]


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture
def client(moto_tables: Any) -> Any:
    """A client configured like production (standard retries, 5 attempts), inside moto."""
    return boto3.client("dynamodb", region_name="us-east-1", config=CLIENT_CONFIG)


@pytest.fixture
def sends(client: Any) -> dict[str, int]:
    """HTTP sends per operation (each botocore attempt counts), counted before anything else runs."""
    counts: dict[str, int] = {}

    def count(request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        counts[operation] = counts.get(operation, 0) + 1

    for operation in (TWI, "BatchGetItem", "GetItem", "Query"):
        client.meta.events.register_first(f"before-send.dynamodb.{operation}", count)
    return counts


@pytest.fixture(params=["on the item", "kept apart"])
def ledger(
    request: Any, moto_tables: Any, client: Any, botocore_sleeps: list[float], sends: dict[str, int]
) -> Ledger:
    """Given 100 paid credits expiring tomorrow (gr_1) and 50 promotional never-expiring ones (gr_2): on the
    account item, or kept apart from it (dal/live_grants.py: an item of 1 grant, 5 credits spent first), so
    that every write also moves grants between the item and their own items."""
    apart = request.param == "kept apart"
    ledger = make_ledger(client, moto_tables["CreditsTable"], FakeClock(), head_size=1 if apart else None)
    if apart:
        ledger.grant(ACCT, spec("gr_0", "5", priority=10), key="g:0")
    ledger.grant(ACCT, spec("gr_1", "100", expires_at=T0 + timedelta(days=1)), key="g:1")
    ledger.grant(ACCT, spec("gr_2", "50", category=Category.PROMOTIONAL), key="g:2")
    return ledger


def _error_response(request: Any, status: int, body: dict[str, Any]) -> AWSResponse:
    raw = SimpleNamespace(stream=lambda **_: iter([json.dumps(body).encode()]))
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "injected"}
    return AWSResponse(request.url, status, headers, raw)


def _answer_instead_of_moto(
    client: Any, operation: str, responder: Callable[[Any], AWSResponse | None]
) -> Callable[[], None]:
    """Register ``responder(request)`` before moto on ``operation``'s sends; when it answers, moto must not see
    the request at all (botocore calls every before-send handler and keeps the first answer, so moto would
    otherwise still apply the write): its stubber is switched off for that one send and back on after it."""
    from moto.core.models import botocore_stubber

    switched_off: list[bool] = []

    def answer(request: Any, **_: Any) -> AWSResponse | None:
        response = responder(request)
        if response is not None and botocore_stubber.enabled:
            botocore_stubber.enabled = False
            switched_off.append(True)
        return response

    def switch_back_on(**_: Any) -> None:
        if switched_off:
            switched_off.clear()
            botocore_stubber.enabled = True

    client.meta.events.register_first(f"before-send.dynamodb.{operation}", answer)
    client.meta.events.register_last("before-send", switch_back_on)

    def stop() -> None:
        client.meta.events.unregister(f"before-send.dynamodb.{operation}", answer)

    return stop


def _prepare(ledger: Ledger, op: Op) -> tuple[Decimal, int]:
    op.setup(ledger)
    state = ledger.repository.state(ACCT, consistent=True)
    return state.ledger_balance, len(all_entries(ledger, ACCT))


def _assert_applied_once(
    ledger: Ledger, op: Op, balance_before: Decimal, count_before: int, returned: list[LedgerEntry]
) -> None:
    # exactly one entry per key, equal to what the caller was given, and the balance moved once
    stored = [ledger.repository.entry(key) for key in op.keys]
    assert all(entry is not None for entry in stored)
    assert returned == stored
    assert [(e.type, e.amount) for e in returned] == list(op.expected)
    entries = all_entries(ledger, ACCT)
    assert len(entries) == count_before + len(op.keys)
    assert [e.entry_key for e in entries].count(op.keys[0]) == 1
    expected_balance = balance_before + sum((amount for _, amount in op.expected), D(0))
    assert assert_books_balance(ledger, ACCT) == expected_balance


# ---- (a) botocore re-sends a transaction that already committed -------------------------------------------
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_resend_of_a_committed_transaction_applies_once(
    ledger: Ledger, client: Any, sends: dict[str, int], op: Op
) -> None:
    balance_before, count_before = _prepare(ledger, op)
    forced = resend_after_commit(client, TWI)
    sends.clear()
    # When the write commits and botocore sends it again
    returned = op.run(ledger)
    # Then the re-send really happened, and the write is applied once
    assert forced == [1]
    assert sends[TWI] >= 2
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


# ---- (b) the caller sees a failure of a write that committed, and calls again ------------------------------
AFTER_COMMIT_FAILURES = {
    "read-timeout": read_timeout,
    "server-error-500": lambda: ClientError(
        {
            "Error": {"Code": "InternalServerError", "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        },
        TWI,
    ),
}


@pytest.mark.parametrize(
    ("op", "failure"),
    [pytest.param(op, "read-timeout", id=f"{op.name}-read-timeout") for op in OPS]
    + [pytest.param(op.values[0], "server-error-500", id=f"{op.id}-server-error-500") for op in ops("debit")],
)
def test_failure_after_commit_then_caller_retry_applies_once(
    ledger: Ledger, client: Any, op: Op, failure: str
) -> None:
    balance_before, count_before = _prepare(ledger, op)
    make_error = AFTER_COMMIT_FAILURES[failure]
    fail_after_commit(client, TWI, make_error)
    # When the write commits but the caller gets an error
    with pytest.raises(type(make_error())):
        op.run(ledger)
    # Then the write did happen...
    assert all(ledger.repository.entry(key) is not None for key in op.keys)
    # When the caller retries the same operation with the same key
    returned = op.run(ledger)
    # Then it gets the committed entries back and nothing is applied twice
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


# ---- (d) the response of a committed transaction is lost on the wire; botocore retries ---------------------
@pytest.mark.parametrize("op", ops("debit", "grant"))
def test_lost_response_of_committed_transaction_applies_once(
    ledger: Ledger, client: Any, sends: dict[str, int], botocore_sleeps: list[float], op: Op
) -> None:
    from moto.core.models import botocore_stubber

    balance_before, count_before = _prepare(ledger, op)
    lost: list[int] = []

    def commit_then_time_out(request: Any, event_name: str, **_: Any) -> None:
        if not lost:
            response = botocore_stubber(event_name=event_name, request=request)  # moto applies the write
            lost.append(response.status_code)
            raise ReadTimeoutError(endpoint_url=request.url)
        return None

    client.meta.events.register_first(f"before-send.dynamodb.{TWI}", commit_then_time_out)
    sends.clear()
    returned = op.run(ledger)
    # Then the first attempt committed (200), botocore backed off and retried, and it is applied once
    assert lost == [200]
    assert sends[TWI] >= 2 and len(botocore_sleeps) >= 1
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


# ---- (c) throttled before send: botocore retries, the write happens once ----------------------------------
def _throttle(times: int, code: str) -> tuple[Callable[[Any], AWSResponse | None], list[int]]:
    fired: list[int] = []

    def handler(request: Any) -> AWSResponse | None:
        if len(fired) < times:
            fired.append(1)
            return _error_response(
                request, 400, {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"}
            )
        return None

    return handler, fired


@pytest.mark.parametrize(
    ("op", "code"),
    [pytest.param(p.values[0], "ThrottlingException", id=f"{p.id}-throttling") for p in ops("grant", "debit")]
    + [
        pytest.param(
            p.values[0], "ProvisionedThroughputExceededException", id=f"{p.id}-provisioned-throughput"
        )
        for p in ops("debit_many", "expire")
    ],
)
def test_throttled_transaction_is_retried_and_applied_once(
    ledger: Ledger, client: Any, sends: dict[str, int], botocore_sleeps: list[float], op: Op, code: str
) -> None:
    balance_before, count_before = _prepare(ledger, op)
    handler, fired = _throttle(2, code)
    _answer_instead_of_moto(client, TWI, handler)
    sends.clear()
    # When the first two sends are throttled
    returned = op.run(ledger)
    # Then botocore backed off twice and the third send committed, once
    assert len(fired) == 2
    assert sends[TWI] == 3
    assert len(botocore_sleeps) == 2 and all(delay > 0 for delay in botocore_sleeps)
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


@pytest.mark.parametrize("op", ops("debit"))
def test_throttled_reads_are_retried(
    ledger: Ledger, client: Any, botocore_sleeps: list[float], op: Op
) -> None:
    balance_before, count_before = _prepare(ledger, op)
    read_handler, read_fired = _throttle(2, "ProvisionedThroughputExceededException")
    get_handler, get_fired = _throttle(1, "ThrottlingException")
    _answer_instead_of_moto(client, "BatchGetItem", read_handler)
    _answer_instead_of_moto(client, "GetItem", get_handler)
    returned = op.run(ledger)
    assert len(read_fired) == 2
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


@pytest.mark.parametrize("op", ops("debit"))
def test_throttled_beyond_max_attempts_fails_cleanly_then_retry_applies_once(
    ledger: Ledger, client: Any, sends: dict[str, int], op: Op
) -> None:
    balance_before, count_before = _prepare(ledger, op)
    # botocore's "max_attempts" counts retries: the first send plus that many
    retries = CLIENT_CONFIG.retries or {}
    total_sends = retries.get("total_max_attempts") or retries["max_attempts"] + 1
    handler, fired = _throttle(total_sends, "ThrottlingException")
    _answer_instead_of_moto(client, TWI, handler)
    sends.clear()
    # When every attempt is throttled
    with pytest.raises(ClientError) as caught:
        op.run(ledger)
    # Then the throttle reaches the caller after every attempt was used, and nothing was written
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert sends[TWI] == total_sends == len(fired)
    assert all(ledger.repository.entry(key) is None for key in op.keys)
    assert len(all_entries(ledger, ACCT)) == count_before
    # When the caller tries again later / Then it is applied once
    returned = op.run(ledger)
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


# ---- (e) DynamoDB cancels the transaction for a conflict (no condition failed): the ledger retries ----------
def _cancellation(*reasons: dict[str, str]) -> dict[str, Any]:
    codes = ", ".join(r["Code"] for r in reasons)
    return {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
        "CancellationReasons": list(reasons),
    }


def _conflict_with_a_reason_per_action(actions: int) -> dict[str, Any]:
    """The cancellation as DynamoDB words it: a reason per action, the conflict on the first, "None" on the
    others, and only the conflict named in the message."""
    reasons = [{"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]
    reasons += [{"Code": "None"}] * (actions - 1)
    return {
        **_cancellation(*reasons),
        "message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
        "[TransactionConflict]",
    }


CONFLICTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "reason-per-action": _conflict_with_a_reason_per_action,
    "conflict-alone": lambda actions: _cancellation({"Code": "TransactionConflict"}),
}


@pytest.mark.parametrize(
    ("op", "conflict"),
    [
        pytest.param(p.values[0], "reason-per-action", id=f"{p.id}-reason-per-action")
        for p in ops("debit", "debit_many")
    ]
    + [
        pytest.param(p.values[0], "conflict-alone", id=f"{p.id}-conflict-alone")
        for p in ops("grant", "debit", "debit_many", "expire", "revoke")
    ],
)
def test_transaction_conflict_is_retried_and_applied_once(
    ledger: Ledger, client: Any, sends: dict[str, int], op: Op, conflict: str
) -> None:
    balance_before, count_before = _prepare(ledger, op)
    cancelled: list[int] = []

    def cancel_once(request: Any) -> AWSResponse | None:
        if cancelled:
            return None
        actions = len(json.loads(request.body)["TransactItems"])
        cancelled.append(actions)
        return _error_response(request, 400, CONFLICTS[conflict](actions))

    _answer_instead_of_moto(client, TWI, cancel_once)
    sends.clear()
    # When another transaction held the account item: a conflict, retried by the ledger after a backoff
    returned = op.run(ledger)
    assert len(cancelled) == 1 and sends[TWI] == 2
    # a single debit that lost its race goes to the account's queue and is committed from there at once;
    # every other write pauses and tries again alone
    assert len(ledger._sleep.calls) == (0 if op.name == "debit" else 1)  # type: ignore[attr-defined]
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


# ---- (e) DynamoDB rejects the write for good: classified, never retried ------------------------------------
TOO_LARGE = {"Code": "ValidationError", "Message": "Item size has exceeded the maximum allowed size"}
REJECTIONS = {
    "item-too-large": _cancellation(TOO_LARGE, {"Code": "None"}),
    "item-collection-too-large": _cancellation(
        {"Code": "None"}, {"Code": "ItemCollectionSizeLimitExceeded", "Message": "collection size limit"}
    ),
    "validation-exception": {
        "__type": "com.amazonaws.dynamodb.v20120810#ValidationException",
        "message": "One or more parameter values were invalid",
    },
}


def _run_expecting_rejection(ledger: Ledger, op: Op) -> WriteRejected:
    if op.name == "debit_many":  # a batch answers each request: every one of the chunk is rejected
        results = ledger.debit_many(
            ACCT,
            [
                DebitRequest("use:m1", D(10), fingerprint="m1"),
                DebitRequest("use:m2", D("5.5"), fingerprint="m2"),
            ],
        )
        assert all(isinstance(r.error, WriteRejected) and r.outcome is None for r in results), results
        assert isinstance(results[0].error, WriteRejected)
        return results[0].error
    with pytest.raises(WriteRejected) as caught:
        op.run(ledger)
    return caught.value


@pytest.mark.parametrize("rejected", sorted(REJECTIONS))
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_rejected_write_is_not_retried_and_writes_nothing(
    ledger: Ledger, client: Any, sends: dict[str, int], botocore_sleeps: list[float], op: Op, rejected: str
) -> None:
    balance_before, count_before = _prepare(ledger, op)
    body = REJECTIONS[rejected]
    stop = _answer_instead_of_moto(client, TWI, lambda request: _error_response(request, 400, body))
    sends.clear()
    # When DynamoDB rejects the transaction for a reason no retry cures
    error = _run_expecting_rejection(ledger, op)
    # Then it was sent once: botocore did not retry it, and neither did the ledger's conflict loop
    assert sends[TWI] == 1
    assert botocore_sleeps == []
    assert ledger._sleep.calls == []  # type: ignore[attr-defined]
    expected_code = body.get("CancellationReasons") and [
        r["Code"] for r in body["CancellationReasons"] if r["Code"] not in RETRYABLE_CANCELLATIONS
    ]
    assert list(error.reasons) == (expected_code or ["ValidationException"])
    # and nothing was written
    assert all(ledger.repository.entry(key) is None for key in op.keys)
    assert len(all_entries(ledger, ACCT)) == count_before
    assert assert_books_balance(ledger, ACCT) == balance_before
    # When the cause is gone, the same operation applies once
    stop()
    returned = op.run(ledger)
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


@pytest.mark.parametrize(
    ("reasons", "retryable"),
    [
        (["ConditionalCheckFailed", "None"], True),
        (["None", "TransactionConflict"], True),
        (["ThrottlingError"], True),
        (["ProvisionedThroughputExceeded", "None"], True),
        (["None", "ValidationError"], False),
        (["ConditionalCheckFailed", "ValidationError"], False),
        (["ItemCollectionSizeLimitExceeded"], False),
        (["SomethingNew"], False),
    ],
)
def test_cancellation_reasons_are_classified(reasons: list[str], retryable: bool) -> None:
    exc = ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
            "CancellationReasons": [{"Code": code} for code in reasons],
        },
        TWI,
    )
    assert (rejection(exc) is None) is retryable


def test_a_closed_grant_record_under_a_live_grant_is_not_retried(
    ledger: Ledger, client: Any, sends: dict[str, int]
) -> None:
    op = next(op for op in OPS if op.name == "expire")  # closes gr_1: account, entry, grant close
    balance_before, count_before = _prepare(ledger, op)
    reasons = [{"Code": "None"}, {"Code": "None"}, {"Code": "ConditionalCheckFailed"}]
    stop = _answer_instead_of_moto(
        client, TWI, lambda request: _error_response(request, 400, _cancellation(*reasons))
    )
    sends.clear()
    # When the account's version held but the grant record could not be closed (it is closed or missing)
    with pytest.raises(GrantRecordMismatch) as caught:
        op.run(ledger)
    # Then it is named after one send: a retry would meet the same record
    assert caught.value.grant_ids == ("gr_1",)
    assert sends[TWI] == 1 and ledger._sleep.calls == []  # type: ignore[attr-defined]
    assert len(all_entries(ledger, ACCT)) == count_before
    stop()
    returned = op.run(ledger)
    _assert_applied_once(ledger, op, balance_before, count_before, returned)


def test_a_version_conflict_with_a_grant_close_failure_is_still_retried(
    ledger: Ledger, client: Any, sends: dict[str, int]
) -> None:
    op = next(op for op in OPS if op.name == "expire")
    balance_before, count_before = _prepare(ledger, op)
    fired: list[int] = []

    def conflict_once(request: Any) -> AWSResponse | None:
        if fired:
            return None
        fired.append(1)
        reasons = [{"Code": "ConditionalCheckFailed"}, {"Code": "None"}, {"Code": "ConditionalCheckFailed"}]
        return _error_response(request, 400, _cancellation(*reasons))

    _answer_instead_of_moto(client, TWI, conflict_once)
    sends.clear()
    returned = op.run(ledger)  # the account changed too: re-read, re-decide, commit
    assert fired == [1] and sends[TWI] == 2
    _assert_applied_once(ledger, op, balance_before, count_before, returned)
