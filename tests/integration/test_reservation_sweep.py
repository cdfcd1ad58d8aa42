"""The reservation sweep: ExpiryFunction invoked in-process with events/expiry/reservation_sweep.json (and the
nightly event) on moto. Lapsed reservations end once as ``expired``, with what they gave back to an expired
grant expired at once; open ones and extended ones are left alone; a second run changes nothing; a run cut
short by the deadline resumes where it stopped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from credits_dev.lambda_context import FakeLambdaContext as FakeContext
from credits_ledger.dal.reservations import ReservationRepository
from credits_ledger.domain.models import EntryType
from credits_ledger.domain.reservations import ReservationStatus
from credits_ledger.jobs import scheduled
from credits_ledger.ledger import Ledger
from credits_ledger.pricing import load_pricing
from credits_ledger.reservations import Reservations, ReserveRequest
from tests.support.expiry import CapturedBus, load_event, load_handler
from tests.support.leading_keys import record_keys
from tests.support.ledger import FakeClock, all_entries, assert_books_balance, make_ledger, spec

D = Decimal
RUN_AT = datetime(2030, 2, 1, 0, 15, tzinfo=UTC)  # the time of events/expiry/reservation_sweep.json
T0 = RUN_AT - timedelta(hours=3)
TABLE = "CreditsTable"


class Env:
    def __init__(self, handler: ModuleType, client: Any, clock: FakeClock) -> None:
        self.handler = handler
        self.clock = clock
        self.ledger: Ledger = make_ledger(client, TABLE, clock)
        self.service = Reservations(self.ledger.repository, ReservationRepository(client, TABLE), clock=clock)
        self.invocations: list[dict[str, Any]] = []

    def sweep(self, context: FakeContext | None = None, **overrides: Any) -> dict[str, Any]:
        event = overrides.pop("event", None) or load_event("expiry/reservation_sweep.json", **overrides)
        result: dict[str, Any] = self.handler.lambda_handler(event, context or FakeContext())
        return result

    def reserve(self, rid: str, account: str, credits: str, seconds: int) -> None:
        self.service.reserve(ReserveRequest(rid, account, D(credits), seconds))


@pytest.fixture
def env(moto_tables: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text('[meters.api_call]\ncredits_per_unit = "1"\n')
    monkeypatch.setenv("CREDITS_PRICING_FILE", str(pricing))
    monkeypatch.setenv("EVENT_BUS_NAME", CapturedBus.create().name)
    environment = Env(load_handler("expiry"), moto_tables.client, FakeClock(T0))
    monkeypatch.setattr(scheduled, "reinvoke_self", lambda _ctx, event: environment.invocations.append(event))
    yield environment
    load_pricing.cache_clear()


def test_the_sweep_ends_lapsed_reservations_once_and_leaves_the_others(env: Env) -> None:
    env.ledger.grant("cus_a", spec("ga", "100"), "grant:ga")
    env.ledger.grant("cus_b", spec("gb", "100", expires_at=T0 + timedelta(hours=1)), "grant:gb")
    env.reserve("lapsed", "cus_a", "30", 3600)
    env.reserve("open", "cus_a", "20", 4 * 3600)
    env.reserve("extended", "cus_a", "10", 3600)
    env.reserve("on-expired-grant", "cus_b", "60", 2 * 3600)
    env.clock.advance(minutes=30)
    env.service.extend(env.service.record("extended"), 4 * 3600)
    env.clock.set(RUN_AT)

    result = env.sweep()

    assert result["reservations_ended"] == 2
    status = {
        rid: env.service.record(rid).status for rid in ("lapsed", "open", "extended", "on-expired-grant")
    }
    assert status == {
        "lapsed": ReservationStatus.EXPIRED,
        "open": ReservationStatus.ACTIVE,
        "extended": ReservationStatus.ACTIVE,
        "on-expired-grant": ReservationStatus.EXPIRED,
    }
    # what the reservation gave back to the grant that expired meanwhile expired at once; the grant's free
    # part is the nightly run's (the sweep alone does not expire grants)
    swept = env.service.record("on-expired-grant")
    assert (swept.released, swept.expired) == (D(60), D(60))
    assert [e.type for e in all_entries(env.ledger, "cus_b")][:2] == [EntryType.EXPIRE, EntryType.UNRESERVE]
    assert env.ledger.repository.state("cus_b").grants["gb"].remaining == D(40)
    assert set(env.ledger.repository.state("cus_a").reservations) == {"open", "extended"}
    assert env.ledger.balance("cus_a").reserved == D(30)

    again = env.sweep()
    assert again["reservations_ended"] == 0
    for account in ("cus_a", "cus_b"):
        assert_books_balance(env.ledger, account)


def test_the_nightly_run_ends_reservations_before_expiring_grants(env: Env) -> None:
    env.ledger.grant("cus_b", spec("gb", "100", expires_at=T0 + timedelta(hours=1)), "grant:gb")
    env.reserve("r1", "cus_b", "60", 2 * 3600)
    env.clock.set(RUN_AT)
    result = env.sweep(event=load_event("expiry/scheduled.json"))
    assert (result["reservations_ended"], result["expired"]) == (1, 1)
    assert env.ledger.grant_view("gb").status.value == "expired"
    assert env.ledger.balance("cus_b").ledger_balance == D(0)
    assert_books_balance(env.ledger, "cus_b")


def test_the_sweep_touches_only_the_keys_its_role_allows(env: Env) -> None:
    env.ledger.grant("cus_b", spec("gb", "100", expires_at=T0 + timedelta(hours=1)), "grant:gb")
    env.reserve("r1", "cus_b", "60", 2 * 3600)
    env.clock.set(RUN_AT)
    with record_keys(env.ledger.repository.client) as recorder:
        assert env.sweep(event=load_event("expiry/scheduled.json"))["reservations_ended"] == 1
    recorder.check("ExpiryRole")


def test_a_sweep_cut_short_by_the_deadline_continues_where_it_stopped(env: Env) -> None:
    env.ledger.grant("cus_a", spec("ga", "100"), "grant:ga")
    for index in range(5):
        env.reserve(f"r{index}", "cus_a", "1", 3600)
    env.clock.set(RUN_AT)
    # two reservations fit before the deadline comes near (the margin is 30 s)
    first = env.sweep(context=FakeContext(remaining_ms=[600_000, 600_000, 1_000]))
    assert first["reservations_ended"] == 2 and first["continued"] is True
    follow = env.sweep(event=env.invocations[0])
    assert follow["reservations_ended"] == 3
    assert env.ledger.repository.state("cus_a").reservations == {}
