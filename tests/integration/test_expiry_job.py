"""ExpiryFunction end to end on moto: the handler invoked in-process with events/expiry/scheduled.json.

Covers docs/api.md section 5 (expire what is due as of the event's time, safe twice, safe with concurrent
changes), resuming after a simulated deadline, expiry reminders (once per grant per threshold) and rollover
atomicity.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.bus import EventBus
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.pages import Page
from credits_ledger.dal.reminders import ReminderRepository
from credits_ledger.domain.models import EntryType, GrantStatus
from credits_ledger.environment import ConfigurationError
from credits_ledger.jobs import scheduled
from credits_ledger.jobs.expiry import ExpiryJob
from credits_ledger.jobs.scheduled import Deadline
from credits_ledger.ledger import DebitRequest
from credits_ledger.pricing import load_pricing
from credits_ledger.reservations import Reservations
from tests.support.expiry import (
    FUNCTION_ARN,
    HandlerEnv,
    load_event,
    load_handler,
    pricing_and_bus,
    time_runs_out_after,
)
from tests.support.leading_keys import record_keys
from tests.support.ledger import FakeClock, all_entries, assert_books_balance, make_ledger, spec

D = Decimal
T0 = datetime(2030, 1, 1, tzinfo=UTC)
RUN_AT = datetime(2030, 2, 1, 0, 15, tzinfo=UTC)  # the time of events/expiry/scheduled.json
TABLE = "CreditsTable"

PRICING = """
[meters.api_call]
credits_per_unit = "1"

[packs.pro]
credits = "1000"
valid_days = 30
stripe_prices = ["price_pro"]
rollover_percent = "50"
rollover_max = "300"
rollover_valid_days = 90

[packs.plain]
credits = "1000"
valid_days = 30
stripe_prices = ["price_plain"]

[expiry]
reminder_days = [30, 7, 1]
"""


class FakeLambdaClient:
    """Records the asynchronous self re-invocations instead of sending them."""

    def __init__(self) -> None:
        self.invocations: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.invocations.append({**kwargs, "Payload": json.loads(kwargs["Payload"])})
        return {"StatusCode": 202}


@dataclass
class Env(HandlerEnv):
    lambda_client: FakeLambdaClient
    client: Any

    def run(self, context: FakeLambdaContext | None = None, **overrides: Any) -> dict[str, Any]:
        event = overrides.pop("event", None) or load_event("expiry/scheduled.json", **overrides)
        result: dict[str, Any] = self.handler.lambda_handler(event, context or FakeLambdaContext())
        return result

    def grant(
        self, account: str, grant_id: str, amount: str, expires_at: datetime | None, **meta: str
    ) -> None:
        grant_spec = spec(grant_id, amount, expires_at=expires_at)
        if meta:
            grant_spec = type(grant_spec)(**{**grant_spec.__dict__, "metadata": dict(meta)})
        self.ledger.grant(account, grant_spec, key=f"grant:{grant_id}")

    def entry_types(self, account: str) -> list[tuple[str, str, Decimal]]:
        return [(e.type.value, e.entry_key, e.amount) for e in reversed(all_entries(self.ledger, account))]


@pytest.fixture
def env(moto_tables: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    bus = pricing_and_bus(monkeypatch, tmp_path, PRICING)
    fake_lambda = FakeLambdaClient()
    monkeypatch.setattr(scheduled, "lambda_client", lambda: fake_lambda)
    handler = load_handler("expiry")
    clock = FakeClock(T0)
    yield Env(
        handler, make_ledger(moto_tables.client, TABLE, clock), clock, bus, fake_lambda, moto_tables.client
    )
    load_pricing.cache_clear()


def job_on(env: Env, repository: AccountRepository | None = None, max_attempts: int = 60) -> ExpiryJob:
    ledger = make_ledger(env.client, TABLE, env.clock, max_attempts=max_attempts)
    if repository is not None:
        ledger.repository = repository
    return ExpiryJob(
        ledger,
        ReminderRepository(env.client, TABLE),
        EventBus(),
        load_pricing(),
        reservations=Reservations.over(ledger.repository),
    )


# ---- expiry as of the event's time ---------------------------------------------------------------------------
def test_expires_exactly_what_remains_of_due_grants_and_a_second_run_changes_nothing(env: Env) -> None:
    # Given due grants (one partly spent), a grant due one second after the run, a never-expiring grant and
    # a due grant that was spent completely before its expiry
    env.grant("cus_a", "g_due", "100", RUN_AT - timedelta(days=5))
    env.grant("cus_a", "g_forever", "10", None)
    env.grant("cus_a", "g_later", "20", RUN_AT + timedelta(seconds=1))
    env.grant("cus_b", "g_exact", "50", RUN_AT)  # expires_at == time: due
    env.grant(
        "cus_b",
        "g_spent",
        "5",
        RUN_AT - timedelta(days=1),
    )
    env.clock.set(T0 + timedelta(days=2))
    env.ledger.debit("cus_a", DebitRequest(key="use-1", amount=D(30)))  # from g_due (earliest expiry first)
    env.ledger.debit("cus_b", DebitRequest(key="use-2", amount=D(5)))  # g_spent first (earlier expiry)
    # When the nightly run fires with events/expiry/scheduled.json
    summary = env.run()
    # Then the two due grants with credits left are expired for exactly what remained
    assert (summary["expired"], summary["expired_amount"], summary["remaining"]) == (2, "120", False)
    assert ("expire", "expire:g_due", D(-70)) in env.entry_types("cus_a")
    assert ("expire", "expire:g_exact", D(-50)) in env.entry_types("cus_b")
    assert env.ledger.balance("cus_a").ledger_balance == D(30)  # g_forever 10 + g_later 20
    assert env.ledger.grant_view("g_due").status is GrantStatus.EXPIRED
    assert env.ledger.grant_view("g_later").status is GrantStatus.ACTIVE
    for account in ("cus_a", "cus_b"):
        assert_books_balance(env.ledger, account)
    before = {a: env.entry_types(a) for a in ("cus_a", "cus_b")}
    # When the same run fires again (a retry or a duplicate delivery)
    again = env.run()
    # Then nothing more is expired: the grants left the index, the ledger is unchanged
    assert (again["expired"], again["replays"], again["failed"]) == (0, 0, 0)
    assert {a: env.entry_types(a) for a in ("cus_a", "cus_b")} == before


def test_the_events_time_is_now_not_the_wall_clock(env: Env) -> None:
    # Given a grant expiring at 2030-01-20
    env.grant("cus_a", "g1", "100", datetime(2030, 1, 20, tzinfo=UTC))
    # When a run scheduled for the day before fires (late: the wall clock is long past 2030)
    early = env.run(time=datetime(2030, 1, 19, 0, 15, tzinfo=UTC))
    # Then nothing expires; the run scheduled after the expiry expires it
    assert early["expired"] == 0 and early["as_of"] == "2030-01-19T00:15:00.000000Z"
    assert env.run()["expired"] == 1


def test_a_duplicate_run_on_a_stale_index_replays_instead_of_expiring_twice(env: Env) -> None:
    # Given two due grants and a run that already expired them
    env.grant("cus_a", "g1", "100", RUN_AT - timedelta(days=1))
    env.grant("cus_b", "g2", "40", RUN_AT - timedelta(days=1))
    stale = env.ledger.repository.expiring(RUN_AT)  # what a concurrent duplicate read before the first wrote
    env.run()

    class StaleIndex(AccountRepository):
        def expiring(self, before: datetime, limit: int = 100, cursor: str | None = None) -> Page:
            return stale

    # When a duplicate run works from the index as it was before the first run's writes
    summary = job_on(env, StaleIndex(env.client, TABLE)).run(RUN_AT, "dup", Deadline(None))
    # Then both grants are replays of the first expiry: no second expire entry, books still balance
    assert (summary.expired, summary.replays) == (0, 2)
    assert [t for t, _, _ in env.entry_types("cus_a")] == ["grant", "expire"]
    assert_books_balance(env.ledger, "cus_a")
    assert_books_balance(env.ledger, "cus_b")


def test_a_grant_changed_between_index_read_and_write_expires_only_what_is_left(env: Env) -> None:
    # Given a due grant of 100, and a refund that revokes 30 of it right after the job read the index
    env.grant("cus_a", "g1", "100", RUN_AT - timedelta(days=1))
    ledger = env.ledger

    class RefundAfterRead(AccountRepository):
        def expiring(self, before: datetime, limit: int = 100, cursor: str | None = None) -> Page:
            page = super().expiring(before, limit, cursor)
            if page.items:
                ledger.revoke("g1", D(30), key="refund:re_1")
            return page

    # When the job runs on that index read
    summary = job_on(env, RefundAfterRead(env.client, TABLE)).run(RUN_AT, "run", Deadline(None))
    # Then it expires the 70 left, not the 100 it saw
    assert (summary.expired, summary.expired_amount) == (1, D(70))
    assert env.entry_types("cus_a")[-2:] == [
        ("revoke", "refund:re_1", D(-30)),
        ("expire", "expire:g1", D(-70)),
    ]
    assert assert_books_balance(env.ledger, "cus_a") == D(0)


# ---- resumability --------------------------------------------------------------------------------------------
def test_stops_before_the_deadline_and_continues_in_a_reinvocation_with_the_same_time(env: Env) -> None:
    # Given five due grants on five accounts
    for i in range(5):
        env.grant(f"cus_{i}", f"g{i}", "10", RUN_AT - timedelta(hours=i + 1))
    # When the run's time runs out after two grants
    first = env.run(time_runs_out_after(2))
    # Then it stopped cleanly, reports what is left and re-invoked itself once, asynchronously,
    # with the same id and time and where to resume
    assert (first["expired"], first["remaining"], first["continued"]) == (2, True, True)
    (call,) = env.lambda_client.invocations
    assert call["InvocationType"] == "Event" and call["FunctionName"] == FUNCTION_ARN
    follow = call["Payload"]
    original = load_event("expiry/scheduled.json")
    assert (follow["id"], follow["time"]) == (original["id"], original["time"])
    assert follow["detail"]["continuation"]["phase"] == "expire"
    assert follow["detail"]["continuation"]["hop"] == 2
    # When the re-invocation runs (with plenty of time)
    second = env.run(event=follow)
    # Then it expires the other three, and every grant was expired exactly once
    assert (second["expired"], second["remaining"]) == (3, False)
    assert len(env.lambda_client.invocations) == 1
    for i in range(5):
        assert env.entry_types(f"cus_{i}") == [
            ("grant", f"grant:g{i}", D(10)),
            ("expire", f"expire:g{i}", D(-10)),
        ]


def test_resuming_mid_page_rereads_the_page_without_double_expiry(env: Env) -> None:
    # Given seven due grants read three per page
    for i in range(7):
        env.grant("cus_a", f"g{i}", "1", RUN_AT - timedelta(minutes=10 - i))
    job = job_on(env)
    job.page_size = 3
    # When the run stops after four grants (in the middle of the second page), then resumes from its report
    first = job.run(RUN_AT, "run", Deadline(time_runs_out_after(4), margin_ms=30_000))
    assert first.expired == 4 and first.continuation is not None
    second = job.run(RUN_AT, "run", Deadline(None), first.continuation)
    # Then all seven are expired once, the re-read done ones are not expired again
    assert first.expired + second.expired == 7 and second.continuation is None
    assert [t for t, _, _ in env.entry_types("cus_a")].count("expire") == 7
    assert assert_books_balance(env.ledger, "cus_a") == D(0)


def test_the_chain_of_reinvocations_is_capped(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run already at the last allowed hop
    monkeypatch.setenv("JOB_MAX_HOPS", "2")
    env.grant("cus_a", "g1", "1", RUN_AT - timedelta(minutes=1))
    event = load_event("expiry/scheduled.json")
    event["detail"] = {"continuation": {"phase": "expire", "cursor": None, "hop": 2}}
    # When it runs out of time at once
    result = env.run(FakeLambdaContext(remaining_ms=1_000), event=event)
    # Then it does not re-invoke itself again: the next scheduled run picks the rest up
    assert (result["remaining"], result["continued"]) == (True, False)
    assert env.lambda_client.invocations == []


# ---- reminders -------------------------------------------------------------------------------------------------
def test_reminders_go_out_once_per_grant_and_threshold(env: Env) -> None:
    # Given grants expiring 45 days, 29 days, 6 days and 12 hours after the run, and one due already
    env.grant("cus_a", "g45", "10", RUN_AT + timedelta(days=45))
    env.grant("cus_a", "g29", "20", RUN_AT + timedelta(days=29))
    env.grant("cus_b", "g6", "30", RUN_AT + timedelta(days=6))
    env.grant("cus_b", "g12h", "40", RUN_AT + timedelta(hours=12))
    env.grant("cus_b", "gdue", "50", RUN_AT - timedelta(hours=1))
    # When the nightly run fires
    summary = env.run()
    # Then one reminder per grant inside a threshold, the tightest one, with what remains and when
    reminders = {e["detail"]["grant"]: e for e in env.bus.events("credits.grant.expiring")}
    assert {g: e["detail"]["threshold_days"] for g, e in reminders.items()} == {"g29": 30, "g6": 7, "g12h": 1}
    assert summary["reminders_sent"] == 3 and summary["expired"] == 1
    sample = reminders["g6"]
    assert sample["source"] == "credits"
    assert sample["detail"] == {
        "reminder_id": "g6#7",
        "account": "cus_b",
        "grant": "g6",
        "remaining": "30",
        "category": "paid",
        "expires_at": "2030-02-07T00:15:00.000000Z",
        "threshold_days": 7,
        "as_of": "2030-02-01T00:15:00.000000Z",
    }
    # When the run fires again for the same night / Then nothing is sent twice
    assert env.run()["reminders_sent"] == 0
    assert len(env.bus.events("credits.grant.expiring")) == 3
    # When the run of 23 nights later fires / Then g29 crossed into its 7-day threshold and g45 into its
    # 30-day one: one reminder each, nothing for the thresholds already sent
    later = env.run(time=RUN_AT + timedelta(days=23))
    sent = [
        (e["detail"]["grant"], e["detail"]["threshold_days"])
        for e in env.bus.events("credits.grant.expiring")
    ]
    assert later["reminders_sent"] == 2 and sorted(sent[3:]) == [("g29", 7), ("g45", 30)]


def test_a_reminder_that_could_not_be_published_is_sent_by_the_next_run(env: Env) -> None:
    # Given a grant 5 days from expiry and a bus that rejects the entry
    env.grant("cus_a", "g5", "10", RUN_AT + timedelta(days=5))

    class RejectingEvents:
        def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "FailedEntryCount": len(Entries),
                "Entries": [{"ErrorCode": "InternalFailure"}] * len(Entries),
            }

    ledger = make_ledger(env.client, TABLE, env.clock)
    reminders = ReminderRepository(env.client, TABLE)
    failing = ExpiryJob(
        ledger,
        reminders,
        EventBus(RejectingEvents(), env.bus.name),
        load_pricing(),
        reservations=Reservations.over(ledger.repository),
    )
    # When the run's publish fails
    summary = failing.run(RUN_AT, "run-1", Deadline(None))
    # Then the claim is released (not counted as sent) ...
    assert (summary.reminders_sent, summary.reminders_failed) == (0, 1)
    assert reminders.sent([("g5", 7)]) == set()
    # ... and the next run sends it
    assert env.run()["reminders_sent"] == 1
    assert [e["detail"]["grant"] for e in env.bus.events("credits.grant.expiring")] == ["g5"]


# ---- rollover ---------------------------------------------------------------------------------------------------
def test_rollover_writes_the_expire_and_the_new_grant_together(env: Env) -> None:
    # Given a "pro" grant (50% rollover, max 300, 90 days) with 600 left, and a "plain" pack grant of 100
    env.grant("cus_a", "g_pro", "1000", RUN_AT - timedelta(days=1), pack="pro")
    env.clock.set(T0 + timedelta(days=1))
    env.ledger.debit("cus_a", DebitRequest(key="use", amount=D(400)))
    env.grant("cus_a", "g_plain", "100", RUN_AT - timedelta(days=1), pack="plain")
    # When the run expires them
    summary = env.run()
    # Then the pro grant's expiry and its rollover grant are consecutive entries (300: 50% of 600, capped),
    # the plain one only expires
    carried = D(300)
    assert (summary["expired"], summary["rolled_over"], summary["rollover_amount"]) == (2, 1, "300")
    assert summary["expired_amount"] == "700"
    types = env.entry_types("cus_a")
    pro_expire = types.index(("expire", "expire:g_pro", D(-600)))
    assert types[pro_expire + 1] == ("rollover", "rollover:g_pro", carried)
    assert ("expire", "expire:g_plain", D(-100)) in types
    env.clock.set(RUN_AT)
    rolled = env.ledger.grant_view("g_pro-ro1")
    assert (rolled.status, rolled.remaining, rolled.source.type, rolled.source.id) == (
        GrantStatus.ACTIVE,
        carried,
        "rollover",
        "g_pro",
    )
    assert rolled.expires_at == RUN_AT - timedelta(days=1) + timedelta(days=90)
    assert assert_books_balance(env.ledger, "cus_a") == carried


def test_rollover_is_all_or_nothing(env: Env) -> None:
    # Given a pro grant due, and its rollover grant id already taken (the transaction's grant put will fail)
    env.grant("cus_a", "g_pro", "1000", RUN_AT - timedelta(days=1), pack="pro")
    env.client.put_item(TableName=TABLE, Item={"pk": {"S": "GRANT#g_pro-ro1"}, "sk": {"S": "GRANT"}})
    # When the job tries to expire it
    summary = job_on(env, max_attempts=3).run(RUN_AT, "run", Deadline(None))
    # Then nothing at all was written: no expire entry, the grant is still live with all its credits
    assert (summary.expired, summary.failed) == (0, 1)
    assert [t for t, _, _ in env.entry_types("cus_a")] == ["grant"]
    assert env.ledger.repository.state("cus_a").grants["g_pro"].remaining == D(1000)
    assert env.ledger.repository.entry("expire:g_pro") is None
    assert env.ledger.repository.entry("rollover:g_pro") is None


def test_a_rollover_grant_expires_without_rolling_again(env: Env) -> None:
    # Given a pro grant that rolled over once
    env.grant("cus_a", "g_pro", "200", RUN_AT - timedelta(days=1), pack="pro")
    env.run()
    rolled = env.ledger.grant_view("g_pro-ro1")
    assert rolled.amount == D(100)
    # When the run after the rollover grant's own expiry fires
    later = env.run(time=rolled.expires_at + timedelta(minutes=15))  # type: ignore[operator]
    # Then it expires and nothing new is granted (rollover_repeat is false)
    assert (later["expired"], later["rolled_over"]) == (1, 0)
    assert env.entry_types("cus_a")[-1] == ("expire", "expire:g_pro-ro1", D(-100))
    assert [e.type for e in all_entries(env.ledger, "cus_a")].count(EntryType.ROLLOVER) == 1
    assert assert_books_balance(env.ledger, "cus_a") == D(0)


def test_without_a_configured_bus_the_run_fails_loudly_before_changing_anything(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no EVENT_BUS_NAME and no explicit request for a log-only bus, and a due grant
    monkeypatch.delenv("EVENT_BUS_NAME")
    monkeypatch.delenv("CREDITS_EVENT_BUS", raising=False)
    handler = load_handler("expiry")
    env.grant("cus_a", "g_due", "10", RUN_AT - timedelta(hours=1))
    # When the run fires, then it stops on the missing setting, naming it, and expires nothing
    with pytest.raises(ConfigurationError, match="EVENT_BUS_NAME"):
        handler.lambda_handler(load_event("expiry/scheduled.json"), FakeLambdaContext())
    assert env.entry_types("cus_a") == [("grant", "grant:g_due", D(10))]


def test_asked_for_a_log_only_bus_the_run_still_expires_and_only_logs_events(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run that asks for no bus (CREDITS_EVENT_BUS=log-only), a due grant and one 5 days from expiry
    monkeypatch.delenv("EVENT_BUS_NAME")
    monkeypatch.setenv("CREDITS_EVENT_BUS", "log-only")
    handler = load_handler("expiry")
    env.grant("cus_a", "g_due", "10", RUN_AT - timedelta(hours=1))
    env.grant("cus_a", "g_soon", "10", RUN_AT + timedelta(days=5))
    # When the run fires
    summary = handler.lambda_handler(load_event("expiry/scheduled.json"), FakeLambdaContext())
    # Then it expires as usual, and the reminder is recorded as sent but goes to the log, not to a bus
    assert (summary["expired"], summary["reminders_sent"]) == (1, 1)
    assert env.bus.events() == []


def test_the_run_touches_only_the_keys_its_role_allows(env: Env) -> None:
    # Given due grants with and without rollover, and grants inside reminder thresholds
    env.grant("cus_a", "g_pro", "1000", RUN_AT - timedelta(days=1), pack="pro")
    env.grant("cus_a", "g_plain", "100", RUN_AT - timedelta(days=1), pack="plain")
    env.grant("cus_b", "g6", "30", RUN_AT + timedelta(days=6))
    # When the nightly run fires, recording every partition key it reads or writes
    with record_keys(env.client) as recorder:
        summary = env.run()
    # Then it did its work, and every key is one ExpiryRole's dynamodb:LeadingKeys allow (AWS enforces them)
    assert (summary["expired"], summary["rolled_over"], summary["reminders_sent"]) == (2, 1, 1)
    recorder.check("ExpiryRole")
