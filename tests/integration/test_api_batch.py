"""POST /v1/usage/batch: each event judged alone, debits of one account combined into one write."""

from __future__ import annotations

from typing import Any

import pytest

from credits_ledger.dal.accounts import VersionConflict
from credits_ledger.domain.errors import ConcurrencyConflict
from tests.integration.test_api_support import Api

pytest_plugins = ["tests.integration.test_api_support"]


def _event(i: int | str, customer: str = "cus_A", **fields: Any) -> dict[str, Any]:
    return {"id": f"b{i}", "customer": customer, "meter": "api_call", "quantity": 1, **fields}


def test_sample_batch_debits_every_event_in_order(api: Api) -> None:
    # Given credits on both accounts of the sample batch
    api.grant("cus_NffrFeUfNV2Hib", "10")
    api.grant("cus_Q7tYbW2m3LkZ0a", "20")
    # When the sample batch is reported
    reply = api.call("usage_batch")
    # Then every event is debited and the results follow the input order
    assert reply.status == 200
    assert reply.body == {
        "results": [
            {"id": "evt_0101", "status": "debited"},
            {"id": "evt_0102", "status": "debited"},
            {"id": "evt_0103", "status": "debited"},
        ]
    }
    assert api.available("cus_NffrFeUfNV2Hib") == "8.875"  # 10 - 1 - 2.5 x 0.05
    assert api.available("cus_Q7tYbW2m3LkZ0a") == "10"


def test_each_event_is_judged_alone(api: Api) -> None:
    # Given cus_A with 5 credits, cus_B with 1, and one event debited before
    api.grant("cus_A", "5")
    api.grant("cus_B", "1")
    assert api.usage(id="b_prev", quantity=1).status == 201
    events = [
        _event(1, quantity=2),  # debited
        _event(2, quantity=-1),  # invalid quantity
        _event(3, meter="gpu_second"),  # unknown meter
        _event(4, customer="cus_B", quantity=5),  # not enough credits on cus_B
        {"id": "b_prev", "customer": "cus_A", "meter": "api_call", "quantity": 1},  # replay
        {"id": "b_prev", "customer": "cus_A", "meter": "api_call", "quantity": 2},  # same id, other body
        "not an object",
        _event(1, quantity=2),  # the same event twice in one batch: a replay of the first
        _event(8, quantity=1),  # debited
    ]
    # When they come in one batch
    reply = api.call("usage_batch", body={"events": events})
    # Then each gets its own verdict, in input order
    assert reply.status == 200
    results = reply.body["results"]
    assert [r["status"] for r in results] == [
        "debited",
        "rejected",
        "rejected",
        "rejected",
        "replayed",
        "rejected",
        "rejected",
        "replayed",
        "debited",
    ]
    assert [r["id"] for r in results][:2] == ["b1", "b2"]
    assert results[6]["id"] is None
    codes = [r.get("error", {}).get("code") for r in results]
    assert codes == [
        None,
        "invalid_request",
        "invalid_request",
        "insufficient_credits",
        None,
        "idempotency_mismatch",
        "invalid_request",
        None,
        None,
    ]
    assert [d["field"] for d in results[1]["error"]["details"]] == ["quantity"]
    assert [d["field"] for d in results[2]["error"]["details"]] == ["meter"]
    # And only the accepted ones moved credits: 5 - 1 (before) - 2 - 1
    assert api.available("cus_A") == "1"
    assert api.available("cus_B") == "1"


def test_one_id_for_two_customers_in_a_batch_is_two_events(api: Api) -> None:
    # Given cus_B already reported b1 (its own event)
    api.grant("cus_A", "5")
    api.grant("cus_B", "5")
    assert api.usage(id="b1", customer="cus_B", quantity=1).status == 201
    # When a batch carries b1 for cus_A and b1 for cus_B again, with their own bodies
    events = [
        _event(1, quantity=2),
        _event(1, customer="cus_B", quantity=1),
        _event(1, customer="cus_B", quantity=3),
    ]
    reply = api.call("usage_batch", body={"events": events})
    # Then cus_A's b1 is a new debit, cus_B's is a replay of its first event, and its other body a mismatch
    assert [r["status"] for r in reply.body["results"]] == ["debited", "replayed", "rejected"]
    assert reply.body["results"][2]["error"]["code"] == "idempotency_mismatch"
    assert api.available("cus_A") == "3"
    assert api.available("cus_B") == "4"


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_extreme_timestamp_rejects_its_event_only(api: Api, timestamp: str) -> None:
    api.grant("cus_A", "5")
    events = [_event(1), _event(2, timestamp=timestamp), _event(3)]
    reply = api.call("usage_batch", body={"events": events})
    assert reply.status == 200
    assert [r["status"] for r in reply.body["results"]] == ["debited", "rejected", "debited"]
    error = reply.body["results"][1]["error"]
    assert error["code"] == "invalid_request"
    assert [d["field"] for d in error["details"]] == ["timestamp"]
    assert api.available("cus_A") == "3"


def test_a_scoped_key_gets_other_accounts_events_rejected(api: Api) -> None:
    api.grant("cus_A", "5")
    api.grant("cus_B", "5")
    key = api.issue_key(["usage:write"], customers=["cus_A"])
    reply = api.call("usage_batch", key=key, body={"events": [_event(1), _event(2, customer="cus_B")]})
    assert reply.status == 200
    assert [r["status"] for r in reply.body["results"]] == ["debited", "rejected"]
    assert reply.body["results"][1]["error"]["code"] == "forbidden"
    assert api.available("cus_B") == "5"


def test_a_key_without_usage_write_cannot_send_batches(api: Api) -> None:
    key = api.issue_key(["balance:read"])
    reply = api.call("usage_batch", key=key, body={"events": [_event(1)]})
    assert reply.status == 403
    assert reply.error["code"] == "forbidden"


def test_more_than_100_events_is_422_naming_events(api: Api) -> None:
    api.grant("cus_A", "500")
    before = api.ledger_snapshot("cus_A")
    reply = api.call("usage_batch", body={"events": [_event(i) for i in range(101)]})
    assert reply.status == 422
    assert reply.fields() == ["events"]
    assert api.ledger_snapshot("cus_A") == before


def test_an_empty_batch_is_an_empty_answer(api: Api) -> None:
    reply = api.call("usage_batch", body={"events": []})
    assert reply.status == 200
    assert reply.body == {"results": []}


def test_a_batch_writes_each_account_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 10 accounts with credits
    customers = [f"cus_{n}" for n in range(10)]
    for customer in customers:
        api.grant(customer, "100")
    repository = api.ledger().repository
    commits: list[int] = []
    original = repository.commit

    def counting_commit(change: Any, expected_version: int, **options: Any) -> None:
        commits.append(len(change.entries))
        original(change, expected_version, **options)

    monkeypatch.setattr(repository, "commit", counting_commit)
    # When 100 events spread over them arrive in one batch
    events = [_event(i, customer=customers[i % 10]) for i in range(100)]
    reply = api.call("usage_batch", body={"events": events})
    # Then all are debited with one transactional write per account, holding its 10 entries
    assert reply.status == 200
    assert {r["status"] for r in reply.body["results"]} == {"debited"}
    assert commits == [10] * 10
    assert {api.available(c) for c in customers} == {"90"}


def test_an_account_with_too_many_concurrent_writers_gets_its_events_rate_limited(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two accounts, and one whose writes keep conflicting
    api.grant("cus_A", "5")
    api.grant("cus_B", "5")
    ledger = api.ledger()
    original = ledger.debit_many

    def contended(customer: str, requests: Any) -> Any:
        if customer == "cus_B":
            raise ConcurrencyConflict("account cus_B: gave up")
        return original(customer, requests)

    monkeypatch.setattr(ledger, "debit_many", contended)
    # When a batch covers both
    reply = api.call("usage_batch", body={"events": [_event(1), _event(2, customer="cus_B")]})
    # Then the other account's events still go through, and the contended ones say retry
    assert reply.status == 200
    results = reply.body["results"]
    assert [r["status"] for r in results] == ["debited", "rejected"]
    assert results[1]["error"]["code"] == "rate_limited"
    assert (api.available("cus_A"), api.available("cus_B")) == ("4", "5")


@pytest.mark.parametrize("cause", ["lost races", "no time left"])
def test_a_later_transaction_giving_up_keeps_the_answers_of_the_written_ones(
    api: Api, monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    # Given an account with 100 credits, and its second transaction of a batch giving up (every attempt loses
    # the race for the account's version, or no time is left for an attempt)
    api.grant("cus_A", "100")
    ledger = api.ledger()
    if cause == "lost races":
        ledger._max_attempts = 2
        ledger._sleep = lambda _: None
        commit = ledger.repository.commit
        commits: list[int] = []

        def first_commit_then_contended(change: Any, *args: Any, **kwargs: Any) -> None:
            commits.append(len(change.entries))
            if len(commits) > 1:
                raise VersionConflict(None)  # another writer keeps moving the account's version
            commit(change, *args, **kwargs)

        monkeypatch.setattr(ledger.repository, "commit", first_commit_then_contended)
    else:
        attempts: list[str] = []

        def second_transaction_has_no_time(account_id: str) -> None:
            attempts.append(account_id)
            if len(attempts) > 1:
                raise ConcurrencyConflict(f"account {account_id}: no time left for an attempt")

        monkeypatch.setattr(
            "credits_ledger.ledger.ensure_time_for_an_attempt", second_transaction_has_no_time
        )
    # When a batch of 45 of its events arrives (written in transactions of 40)
    reply = api.call("usage_batch", body={"events": [_event(i) for i in range(45)]})
    # Then the 40 written are answered debited, only the 5 after them rate_limited (nothing of them applied)
    assert reply.status == 200
    results = reply.body["results"]
    assert [r["status"] for r in results] == ["debited"] * 40 + ["rejected"] * 5
    assert {r["error"]["code"] for r in results[40:]} == {"rate_limited"}
    monkeypatch.undo()
    assert api.available("cus_A") == "60"
    # And sending the batch again answers the 40 as replays and writes the 5
    again = api.call("usage_batch", body={"events": [_event(i) for i in range(45)]}).body["results"]
    assert [r["status"] for r in again] == ["replayed"] * 40 + ["debited"] * 5
    assert api.available("cus_A") == "55"
