"""ReconcileFunction on moto with events/reconcile/: clean accounts advance their checkpoints and later runs
read only new entries; deliberately corrupted items are reported (metric, event, checkpoint note) on every
run until fixed, and lose the note once fixed; an account that cannot be read is skipped without stopping the
run; reservations are judged as of the account's read; the run resumes after a simulated deadline; the
backfill event registers old accounts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import ClientError

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.bus import EventBus
from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.reconcile import ReconcileRepository, bucket_of, registry_key
from credits_ledger.dal.reservations import ReservationRepository
from credits_ledger.jobs import scheduled
from credits_ledger.jobs.reconcile import ReconcileJob
from credits_ledger.jobs.scheduled import Deadline
from credits_ledger.ledger import DebitRequest, Ledger
from credits_ledger.observability import metrics
from credits_ledger.reservations import Reservations, ReserveRequest
from tests.support.expiry import CapturedBus, load_event, load_handler, time_runs_out_after
from tests.support.leading_keys import record_keys
from tests.support.ledger import FakeClock, make_ledger, spec

D = Decimal
T0 = datetime(2030, 1, 1, tzinfo=UTC)
TABLE = "CreditsTable"
MISMATCH = "credits.reconcile.mismatch"


class FakeLambdaClient:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.payloads.append(json.loads(kwargs["Payload"]))
        return {"StatusCode": 202}


@dataclass
class Env:
    handler: ModuleType
    ledger: Ledger
    registry: ReconcileRepository
    bus: CapturedBus
    lambda_client: FakeLambdaClient
    client: Any
    clock: FakeClock  # the ledger's

    def run(
        self, context: FakeLambdaContext | None = None, event: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.handler.lambda_handler(
            event or load_event("reconcile/scheduled.json"), context or FakeLambdaContext()
        )
        return result

    def account(self, account: str, *debits: str, register: bool = True) -> None:
        self.ledger.grant(account, spec(f"g_{account}", "100"), key=f"grant:{account}")
        for i, amount in enumerate(debits):
            self.ledger.debit(account, DebitRequest(key=f"{account}:u{i}", amount=D(amount)))
        if register:
            self.registry.register(account, T0)

    def checkpoint(self, account: str) -> dict[str, Any]:
        raw = self.client.get_item(TableName=TABLE, Key=registry_key(account))["Item"]
        return {k: next(iter(v.values())) for k, v in raw.items()}

    def tamper(self, pk: str, sk: str, update: str, value: str) -> None:
        """Corrupt one item behind the ledger's back: ``update`` with the number ``value`` as ``:v``."""
        self.client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": pk}, "sk": {"S": sk}},
            UpdateExpression=update,
            ExpressionAttributeValues={":v": {"N": value}},
        )


@pytest.fixture
def env(moto_tables: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    bus = CapturedBus.create()
    monkeypatch.setenv("EVENT_BUS_NAME", bus.name)
    fake_lambda = FakeLambdaClient()
    monkeypatch.setattr(scheduled, "lambda_client", lambda: fake_lambda)
    metrics.clear_metrics()  # jobs run outside a handler elsewhere leave unflushed values behind
    clock = FakeClock(T0)
    yield Env(
        load_handler("reconcile"),
        make_ledger(moto_tables.client, TABLE, clock),
        ReconcileRepository(moto_tables.client, TABLE),
        bus,
        fake_lambda,
        moto_tables.client,
        clock,
    )


def emitted_metrics(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The EMF metrics the handler flushed to stdout."""
    found: dict[str, Any] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = blob[metric["Name"]]
                found[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return found


def test_clean_accounts_pass_and_later_runs_read_only_new_entries(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three consistent accounts with 1, 2 and 3 ledger entries
    env.account("cus_a")
    env.account("cus_b", "10")
    env.account("cus_c", "10", "5")
    # When the scheduled run fires
    first = env.run()
    # Then all are checked, none mismatched, every checkpoint set to (version, sum); metrics say so
    assert (first["checked"], first["mismatched"], first["entries_read"], first["checkpoints_advanced"]) == (
        3,
        0,
        6,
        3,
    )
    assert emitted_metrics(capsys)["MismatchedAccounts"] == 0.0
    assert (env.checkpoint("cus_c")["checked_seq"], env.checkpoint("cus_c")["checked_total"]) == ("3", "85")
    # When it runs again with nothing new / Then no ledger entry is read and no checkpoint written
    second = env.run()
    assert (second["checked"], second["entries_read"], second["checkpoints_advanced"]) == (3, 0, 0)
    # When one account gets one more debit / Then the next run reads exactly that entry
    env.ledger.debit("cus_b", DebitRequest(key="cus_b:late", amount=D(1)))
    third = env.run()
    assert (third["entries_read"], third["checkpoints_advanced"], third["mismatched"]) == (1, 1, 0)
    assert emitted_metrics(capsys)["CheckedAccounts"] == 3.0
    assert env.bus.events(MISMATCH) == []


def test_a_corrupted_balance_is_reported_on_every_run_until_fixed(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two accounts, one whose state item balance was tampered with (+5)
    env.account("cus_ok", "10")
    env.account("cus_bad", "10")
    env.run()
    env.tamper("ACCOUNT#cus_bad", "STATE", "SET balance = balance + :v", "5")
    # When the run fires
    summary = env.run()
    # Then exactly that account is mismatched: metric, event with the details, a note on its checkpoint
    assert (summary["checked"], summary["mismatched"], summary["mismatched_accounts"]) == (2, 1, ["cus_bad"])
    assert emitted_metrics(capsys)["MismatchedAccounts"] == 1.0
    (event,) = env.bus.events(MISMATCH)
    detail = event["detail"]
    assert (detail["account"], detail["balance"], detail["ledger_sum"], detail["grants_remaining_sum"]) == (
        "cus_bad",
        "95",
        "90",
        "90",
    )
    assert [p["code"] for p in detail["problems"]] == ["ledger_sum", "grants_sum"]
    assert detail["mismatch_id"] == f"{load_event('reconcile/scheduled.json')['id']}:cus_bad"
    assert json.loads(env.checkpoint("cus_bad")["mismatch"])["account"] == "cus_bad"
    assert env.checkpoint("cus_bad")["checked_seq"] == "2"  # the checkpoint did not move
    # When the next run fires with the item still wrong / Then it is reported again
    assert env.run()["mismatched_accounts"] == ["cus_bad"]
    assert len(env.bus.events(MISMATCH)) == 2


def test_a_fixed_account_loses_its_mismatch_note_even_without_new_entries(env: Env) -> None:
    # Given an account checked clean, then corrupted with no new entry since, and reported with a note
    env.account("cus_fixed", "10")
    env.run()
    env.tamper("ACCOUNT#cus_fixed", "STATE", "SET balance = balance + :v", "5")
    assert env.run()["mismatched_accounts"] == ["cus_fixed"]
    assert "mismatch" in env.checkpoint("cus_fixed")
    # When an operator fixes it (still no new entry) and the run fires
    env.tamper("ACCOUNT#cus_fixed", "STATE", "SET balance = balance + :v", "-5")
    summary = env.run()
    # Then it is clean and its checkpoint item no longer says it is broken; the checkpoint stays at seq 2
    assert (summary["mismatched"], summary["checkpoints_advanced"]) == (0, 1)
    assert "mismatch" not in env.checkpoint("cus_fixed")
    assert env.checkpoint("cus_fixed")["checked_seq"] == "2"
    # And once the note is gone a run with nothing new writes nothing
    assert env.run()["checkpoints_advanced"] == 0


def test_an_account_that_cannot_be_read_is_left_for_the_next_run_and_the_run_goes_on(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    busy, broken = "cus_busy", "cus_broken"
    assert bucket_of(busy) < bucket_of(broken)  # the busy account is checked first
    # Given a busy account with more live grants than its item holds (the rest are LIVE# items)
    busy_ledger = make_ledger(env.client, TABLE, env.clock, head_size=2)
    for i in range(6):
        busy_ledger.grant(busy, spec(f"g_busy_{i}", "100"), f"grant:busy:{i}")
    env.registry.register(busy, T0)
    # And after it an account with a real mismatch
    env.account(broken)
    env.tamper(f"ACCOUNT#{broken}", "STATE", "SET balance = balance + :v", "5")
    # And another writer debits the busy account every time its LIVE# items are read
    accounts = AccountRepository(env.client, TABLE, head_size=2)
    read_between = accounts._between
    debited: list[str] = []

    def read_while_debited(pk: str, *args: Any, **kwargs: Any) -> Any:
        if pk == f"ACCOUNT#{busy}":
            debited.append(f"busy:{len(debited)}")
            busy_ledger.debit(busy, DebitRequest(key=debited[-1], amount=D("0.01")))
        return read_between(pk, *args, **kwargs)

    accounts._between = read_while_debited  # type: ignore[method-assign]
    job = ReconcileJob(accounts, env.registry, EventBus(), sleep=lambda _: None)
    # When the run fires
    summary = job.run(T0, "run", Deadline(None))
    metrics.flush_metrics()
    # Then the busy account is counted as unchecked (metric) and keeps its checkpoint; the next is still checked
    assert (summary.unchecked, summary.unchecked_accounts) == (1, [busy])
    assert (summary.checked, summary.mismatched_accounts) == (1, [broken])
    assert emitted_metrics(capsys)["UncheckedAccounts"] == 1.0
    assert "checked_seq" not in env.checkpoint(busy)
    # When the account is quiet at the next run / Then it is checked from where it was
    accounts._between = read_between  # type: ignore[method-assign]
    again = job.run(T0, "run-2", Deadline(None))
    assert (again.unchecked, again.checked, again.mismatched_accounts) == (0, 2, [broken])
    assert env.checkpoint(busy)["checked_seq"] == str(6 + len(debited))  # its grants and the debits


def test_an_error_other_than_the_accounts_own_still_fails_the_run(env: Env) -> None:
    # Given a registered account, and a role that may not read the table
    env.account("cus_denied")
    accounts = AccountRepository(env.client, TABLE)

    def access_denied(*args: Any, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "denied"}}, "GetItem")

    accounts.state = access_denied  # type: ignore[method-assign]
    job = ReconcileJob(accounts, env.registry, EventBus(), sleep=lambda _: None)
    # When the run fires / Then it fails loudly instead of counting the account as unchecked
    with pytest.raises(ClientError, match="AccessDenied"):
        job.run(T0, "run", Deadline(None))


def test_a_reservation_that_lapsed_before_the_account_was_read_holds_nothing(env: Env) -> None:
    # Given an account with 100 credits and a reservation of 80 for 60 s
    env.account("cus_res")
    reservations = Reservations(
        env.ledger.repository, ReservationRepository(env.client, TABLE), clock=env.clock
    )
    reservations.reserve(ReserveRequest("job-1", "cus_res", D(80), 60))
    # And a run scheduled while the reservation held (its "now" stays fixed for the whole run)
    scheduled_for = T0 + timedelta(seconds=30)
    # And the reservation lapsed before the run reached the account; a debit then spent what it had pinned
    env.clock.advance(seconds=120)
    env.ledger.debit("cus_res", DebitRequest(key="cus_res:late", amount=D(50)))
    job = ReconcileJob(AccountRepository(env.client, TABLE), env.registry, EventBus(), clock=env.clock)
    # When the run checks it
    summary = job.run(scheduled_for, "run", Deadline(None))
    # Then it is clean: the reservation is judged as of the account's read, not of the run's schedule
    assert (summary.checked, summary.mismatched) == (1, 0)
    assert env.bus.events(MISMATCH) == []
    # And the checkpoint records the run's time, as before
    assert env.checkpoint("cus_res")["checked_at"].startswith("2030-01-01T00:00:30")


def test_a_missing_or_altered_ledger_entry_is_caught(env: Env) -> None:
    # Given an account whose second (of three) entries was deleted, and one whose entry amount was altered
    env.account("cus_gap", "10", "20")
    env.account("cus_alt", "10")
    env.client.delete_item(TableName=TABLE, Key={"pk": {"S": "ENTRY#cus_gap:u0"}, "sk": {"S": "ENTRY"}})
    env.tamper("ENTRY#cus_alt:u0", "ENTRY", "SET amount = :v", "-11")
    # When the run fires
    summary = env.run()
    # Then both are mismatched with what is wrong named
    assert sorted(summary["mismatched_accounts"]) == ["cus_alt", "cus_gap"]
    problems = {
        e["detail"]["account"]: [p["code"] for p in e["detail"]["problems"]] for e in env.bus.events(MISMATCH)
    }
    assert {"sequence", "version", "ledger_sum"} <= set(problems["cus_gap"])
    assert {"balance_after", "ledger_sum"} <= set(problems["cus_alt"])


def test_a_missing_newest_entry_is_rechecked_before_being_reported(env: Env) -> None:
    # Given an account whose newest entry is missing (what a lagging index also looks like)
    env.account("cus_tail", "10")
    env.client.delete_item(TableName=TABLE, Key={"pk": {"S": "ENTRY#cus_tail:u0"}, "sk": {"S": "ENTRY"}})
    sleeps: list[float] = []
    job = ReconcileJob(AccountRepository(env.client, TABLE), env.registry, EventBus(), sleep=sleeps.append)
    # When the job checks it
    summary = job.run(T0, "run", Deadline(None))
    # Then it re-read the ledger a few times (waiting for the index) and then reported it
    assert sleeps == pytest.approx([0.2, 0.4, 0.6])
    assert summary.mismatched_accounts == ["cus_tail"]


def test_stops_before_the_deadline_and_continues_where_it_stopped(env: Env) -> None:
    # Given six registered accounts
    accounts = [f"cus_{i}" for i in range(6)]
    for account in accounts:
        env.account(account, "1")
    # When the run's time runs out after three accounts
    first = env.run(time_runs_out_after(3))
    # Then it checked three and re-invoked itself with where to continue
    assert (first["checked"], first["remaining"], first["continued"]) == (3, True, True)
    (follow,) = env.lambda_client.payloads
    assert follow["time"] == load_event("reconcile/scheduled.json")["time"]
    assert follow["detail"]["continuation"]["phase"].startswith("bucket-")
    # When the re-invocation runs / Then it checks the other three, and every account was checked once
    second = env.run(event=follow)
    assert (second["checked"], second["remaining"]) == (3, False)
    assert all(env.checkpoint(a)["checked_seq"] == "2" for a in accounts)
    assert first["checkpoints_advanced"] + second["checkpoints_advanced"] == 6


def test_the_backfill_event_registers_accounts_the_stream_never_saw(env: Env) -> None:
    # Given two accounts that were never registered (created before the stream function existed)
    env.account("cus_old1", register=False)
    env.account("cus_old2", "10", register=False)
    assert env.run()["checked"] == 0
    # When the backfill event (events/reconcile/backfill.json) runs
    summary = env.run(event=load_event("reconcile/backfill.json"))
    # Then both are registered and checked in the same run; a second backfill registers nothing new
    assert (summary["registered"], summary["checked"], summary["mismatched"]) == (2, 2, 0)
    assert env.run(event=load_event("reconcile/backfill.json"))["registered"] == 0
    assert {c.account_id for c in env.registry.registry_page(bucket_of("cus_old1")).checkpoints} >= {
        "cus_old1"
    }


def test_the_run_touches_only_the_keys_its_role_allows(env: Env) -> None:
    from credits_ledger.dal.reservations import ReservationRepository
    from credits_ledger.reservations import Reservations, ReserveRequest

    env.account("cus_a", "10")
    env.account("cus_b")
    reservations = Reservations(
        env.ledger.repository, ReservationRepository(env.client, TABLE), clock=FakeClock(T0)
    )
    reservations.reserve(ReserveRequest("r_a", "cus_a", D(5), 3600))  # reconcile checks it against the ledger
    with record_keys(env.client) as recorder:
        assert env.run()["checked"] == 2
    recorder.check("ReconcileRole")
