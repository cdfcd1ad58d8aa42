"""Reconciliation of one account from a checkpoint: every invariant break is named, a clean check advances
the checkpoint."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from credits_ledger.domain import transitions as tr
from credits_ledger.domain.models import AccountState, Category, LedgerEntry, LiveGrant, Source
from credits_ledger.domain.reconcile import Checkpoint, missing_tail, reconcile
from credits_ledger.domain.transitions import EntryContext, GrantSpec

D = Decimal
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def history() -> tuple[AccountState, list[LedgerEntry]]:
    """grant 100, grant 50, debit 30, debit 20: balance 100, version 4."""
    state, entries = AccountState("acct"), []
    for i, (op, amount) in enumerate([("g", "100"), ("g", "50"), ("d", "30"), ("d", "20")]):
        ctx = EntryContext(f"k{i}", T0 + timedelta(minutes=i))
        if op == "g":
            change = tr.grant(state, GrantSpec(f"g{i}", D(amount), Source("admin")), ctx)
        else:
            change = tr.debit(state, D(amount), ctx)
        state = change.state
        entries.extend(change.entries)
    return state, entries


def codes(result: object) -> list[str]:
    return [p.code for p in result.problems]  # type: ignore[attr-defined]


def test_a_consistent_account_passes_and_moves_the_checkpoint() -> None:
    # Given an account and its full ledger
    state, entries = history()
    # When reconciled from an empty checkpoint
    result = reconcile(state, Checkpoint("acct"), entries, T0)
    # Then it is clean and the next checkpoint is (version, sum)
    assert result.ok and result.entries_read == 4
    assert result.checkpoint == Checkpoint("acct", seq=4, total=D(100), verified_at=T0)


def test_incremental_from_a_checkpoint_reads_only_newer_entries() -> None:
    # Given a checkpoint after the first two entries
    state, entries = history()
    checkpoint = Checkpoint("acct", seq=2, total=D(150), verified_at=T0)
    # When reconciled with only the two newer entries / Then clean
    result = reconcile(state, checkpoint, entries[2:], T0)
    assert result.ok and result.entries_read == 2
    # And a checkpoint with a wrong total is caught on the next entries' balance_after and the sum
    bad = reconcile(state, replace(checkpoint, total=D(140)), entries[2:], T0)
    assert "ledger_sum" in codes(bad) and "balance_after" in codes(bad)
    assert bad.checkpoint is None


def test_a_corrupted_balance_is_caught_by_both_sums() -> None:
    # Given the account item's balance tampered with (+5)
    state, entries = history()
    tampered = replace(state, ledger_balance=state.ledger_balance + 5)
    # When reconciled / Then ledger and grants sums both disagree, and no checkpoint is produced
    result = reconcile(tampered, Checkpoint("acct"), entries, T0)
    assert codes(result) == ["ledger_sum", "grants_sum"]
    assert result.checkpoint is None
    assert result.detail()["balance"] == "105"


def test_a_missing_or_duplicated_entry_breaks_the_sequence() -> None:
    # Given the ledger without its second entry / When reconciled / Then sequence, version and sums are named
    state, entries = history()
    result = reconcile(state, Checkpoint("acct"), [entries[0], *entries[2:]], T0)
    assert {"sequence", "version", "ledger_sum"} <= set(codes(result))
    # And a live grant's remaining changed behind the ledger's back is a grants_sum problem only
    grants = dict(state.grants)
    gid = next(iter(grants))
    grants[gid] = replace(grants[gid], remaining=grants[gid].remaining + 1)
    assert codes(reconcile(replace(state, grants=grants), Checkpoint("acct"), entries, T0)) == ["grants_sum"]


def test_missing_tail_recognises_a_lagging_index() -> None:
    # Given the index returned only the first 3 of 4 entries / Then it is a missing tail (worth a re-read)
    state, entries = history()
    assert missing_tail(Checkpoint("acct"), state, entries[:3])
    assert not missing_tail(Checkpoint("acct"), state, entries)
    assert not missing_tail(Checkpoint("acct"), state, [entries[0], entries[2]])


def test_a_live_grant_at_zero_is_allowed_but_below_zero_is_not() -> None:
    # Given a consistent account with one extra live grant left at 0 (the core closes it on a later change)
    state, entries = history()
    at_zero = LiveGrant("g_spent", D(0), Category.PAID, 50, T0, None)
    with_zero = replace(state, grants={**state.grants, "g_spent": at_zero})
    # When reconciled / Then clean
    assert reconcile(with_zero, Checkpoint("acct"), entries, T0).ok
    # And a grant below zero is a problem (the sums are kept equal so only that one is named)
    below = replace(at_zero, remaining=D(-1))
    gid = next(iter(state.grants))
    compensated = {**state.grants, gid: replace(state.grants[gid], remaining=state.grants[gid].remaining + 1)}
    broken = replace(state, grants={**compensated, "g_spent": below})
    assert codes(reconcile(broken, Checkpoint("acct"), entries, T0)) == ["grant_remaining"]
