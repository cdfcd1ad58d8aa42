"""tools/replay_stripe_event.py on moto tables of template.yaml: list failed Stripe events, replay them once the
cause is fixed, find the table from the stack's output (docs/deploy.md, "Replaying failed Stripe events")."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from credits_ledger.dal.accounts import AccountRepository
from credits_ledger.dal.payments import PaymentRepository
from credits_ledger.ledger import Ledger
from credits_ledger.pricing import load_pricing
from credits_ledger.webhooks import StripeWebhookProcessor
from tools import replay_stripe_event as tool

ROOT = Path(__file__).resolve().parents[2]
MEGA = """
[packs.mega]
credits = "50000"
valid_days = 30
stripe_prices = ["price_EUR_mega"]
"""


def _checkout_event(event_id: str, customer: str, pack: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "created": now,
        "livemode": False,
        "data": {
            "object": {
                "id": f"cs_test_{event_id}",
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "status": "complete",
                "customer": customer,
                "payment_intent": f"pi_{event_id}",
                "amount_subtotal": 40000,
                "amount_total": 40000,
                "currency": "eur",
                "created": now - 60,
                "metadata": {"credits_pack": pack},
            }
        },
    }


@pytest.fixture
def pricing_files(tmp_path: Path) -> tuple[Path, Path]:
    broken = tmp_path / "pricing-before.toml"
    broken.write_text((ROOT / "config" / "pricing.toml").read_text(encoding="utf-8"), encoding="utf-8")
    fixed = tmp_path / "pricing-after.toml"
    fixed.write_text(broken.read_text(encoding="utf-8") + MEGA, encoding="utf-8")
    return broken, fixed


@pytest.fixture
def failed_event(moto_tables: Any, pricing_files: tuple[Path, Path]) -> dict[str, Any]:
    """A checkout for a pack the deployed pricing does not know yet: acknowledged and stored as failed."""
    client, table = moto_tables.client, moto_tables["CreditsTable"]
    processor = StripeWebhookProcessor(
        Ledger(AccountRepository(client, table)),
        PaymentRepository(client, table),
        load_pricing(pricing_files[0]),
    )
    event = _checkout_event("evt_replay_1", "cus_replay", "mega")
    result = processor.process(event, json.dumps(event))
    assert result.status == "failed" and "mega" in (result.reason or "")
    return event


def _session() -> Any:
    return boto3.Session(region_name="us-east-1")


@dataclass
class ReplayTool:
    """The tool on the moto table that holds ``failed_event``, with the pricing before and after the fix."""

    tables: Any
    event_id: str
    pricing_before: str
    pricing_after: str
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> int:
        return tool.main(["--table", self.tables["CreditsTable"], *args], session=_session())

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines printed since the last call."""
        return [json.loads(line) for line in self.capsys.readouterr().out.splitlines() if line.strip()]

    def balance(self, account: str) -> Decimal:
        state, _ = AccountRepository(self.tables.client, self.tables["CreditsTable"]).load(
            account, consistent=True
        )
        return state.ledger_balance


@pytest.fixture
def replay(
    moto_tables: Any,
    failed_event: dict[str, Any],
    pricing_files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> ReplayTool:
    before, after = pricing_files
    return ReplayTool(moto_tables, failed_event["id"], str(before), str(after), capsys)


def test_lists_failed_events(replay: ReplayTool) -> None:
    assert replay.run("--list") == 0
    [listed] = replay.lines()
    assert listed["event_id"] == replay.event_id
    assert listed["event_type"] == "checkout.session.completed"
    assert "mega" in listed["reason"]


def test_replay_before_the_fix_stays_failed(replay: ReplayTool) -> None:
    assert replay.run("--pricing", replay.pricing_before, replay.event_id) == 1
    [result] = replay.lines()
    assert result["status"] == "failed" and "mega" in result["reason"]
    assert replay.balance("cus_replay") == 0


def test_replay_after_the_fix_grants_once(replay: ReplayTool) -> None:
    args = ["--pricing", replay.pricing_after, replay.event_id, "evt_never_seen"]
    assert replay.run(*args) == 0
    replayed, unknown = replay.lines()
    assert replayed == {"event_id": replay.event_id, "status": "processed", "reason": None, "actions": 1}
    assert unknown["status"] == "ignored"
    assert replay.balance("cus_replay") == Decimal(50000)

    # a second replay, or the list, finds nothing failed any more; the credits stay granted once
    assert replay.run(*args[:-1]) == 0
    assert replay.lines()[0]["status"] == "ignored"
    assert replay.run("--list") == 0
    assert replay.lines() == []
    assert replay.balance("cus_replay") == Decimal(50000)


def test_table_from_the_stack_output() -> None:
    class Stub:
        def describe_stacks(self, StackName: str) -> dict[str, Any]:  # boto3's argument name
            assert StackName == "credits-prod"
            outputs = [
                {"OutputKey": "ApiUrl", "OutputValue": "https://x"},
                {"OutputKey": "CreditsTableName", "OutputValue": "credits-prod-CreditsTable-1ABC"},
            ]
            return {"Stacks": [{"StackName": StackName, "Outputs": outputs}]}

    assert tool.table_from_stack(Stub(), "credits-prod") == "credits-prod-CreditsTable-1ABC"


def test_usage_errors() -> None:
    with pytest.raises(SystemExit) as no_ids:
        tool.main(["--table", "t"], session=object())
    assert no_ids.value.code == 2
    with pytest.raises(SystemExit) as no_table:
        tool.main(["evt_1"], session=object())
    assert no_table.value.code == 2
