"""Where an account's live grants are stored: the first ones in spend order on the account item (its
"head"), the rest as items of their own in the account's partition (its "tail"), so that neither the item
nor the cost of a debit grows with the number of live grants (docs/data-model.md, docs/decisions.md "Grants
out of the account item").

  tail grant   pk=ACCOUNT#<account>  sk=LIVE#<spend order key>   (spend.order_key: a Query reads them in
               the order a debit spends them)

What the account item says of its tail (``TailSummary``) and what holds between the two, at every version:
  - every tail grant's order key is at or after ``boundary``, so every live grant sorting before it is in the
    head. The tail holds only grants *settled* when written (effective, not held, named by no open
    reservation, not spent): the others stay in the head wherever they sort (a pending grant there may
    become effective and sort after the boundary: the next write moves it), so every tail grant is
    spendable until its expiry;
  - ``count``, ``paid``, ``promotional`` and ``groups`` (tail grants per priority, so expiries are read one
    priority at a time in expiry order; None once the tail held more than MAX_GROUPS priorities: then they
    are read by scanning the tail) are the tail's, exactly;
    ``expires_from`` is at or before every tail grant's expiry (a lower bound: it is exact only after a
    write that looked);
  - a LIVE# item sorting before ``boundary`` is the stale copy of a head grant flagged ``t`` on the item (a
    grant moved to the head keeps its copy until it leaves the account or the boundary passes it); no other
    LIVE# item exists. A grant leaving the account deletes its copy in the same transaction. A tail that
    empties while copies remain keeps a summary of 0 grants whose boundary sits above them.
Every tail item is written in the transaction that writes the account item, under its version condition, and
one write stays within a transaction: at most MAX_MOVES_OUT grants moved out and MAX_COPY_DELETES copies
deleted beyond those of the grants it closes.

This module is pure: the layout decisions, the item codec and the keys. The reads and writes are in
``dal/accounts.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from credits_ledger.domain.errors import ConcurrencyConflict
from credits_ledger.domain.models import (
    AccountState,
    Category,
    ExpiryAt,
    GrantsNotLoaded,
    LiveGrant,
)
from credits_ledger.domain.money import ZERO
from credits_ledger.domain.spend import MoreGrantsNeeded, order_key
from credits_ledger.domain.times import epoch_us, from_epoch_us

LIVE_PREFIX = "LIVE#"
# Settled grants the account item holds at most (besides grants that are not settled). At ~70 B each, ten keep
# the item under 1 KB: a debit writes 2 units for it, the same at 10 and at 100,000 live grants.
HEAD_SIZE = 10
# Grants one write moves from the item to the tail at most (each is a Put in the change's transaction).
MAX_MOVES_OUT = 20
# Copies below a boundary one write may delete when the boundary moves down past them (each a Delete).
MAX_COPY_DELETES = 20
# Priorities the item counts the tail's grants of (a few bytes each); past them, expiries are found by scanning.
MAX_GROUPS = 16


@dataclass(frozen=True)
class TailSummary:
    """What the account item says of its tail (see the module's invariants)."""

    boundary: str
    count: int
    paid: Decimal
    promotional: Decimal
    groups: Mapping[int, int] | None
    expires_from: datetime | None

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "b": self.boundary,
            "n": self.count,
            "pd": self.paid,
            "pr": self.promotional,
        }
        if self.groups is not None:
            item["g"] = {str(priority): n for priority, n in self.groups.items() if n}
        if self.expires_from is not None:
            item["xf"] = epoch_us(self.expires_from)
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> TailSummary:
        return cls(
            boundary=str(item["b"]),
            count=int(item["n"]),
            paid=Decimal(item["pd"]),
            promotional=Decimal(item["pr"]),
            groups={int(p): int(n) for p, n in item["g"].items()} if "g" in item else None,
            expires_from=from_epoch_us(item["xf"]) if "xf" in item else None,
        )


@dataclass(frozen=True)
class StoredGrants:
    """How the grants of a loaded state were stored, carried by ``AccountState.storage`` from the read to the
    write: the tail as the item said, the tail grants read (order key and value as read), the head grants
    with a stale LIVE# copy, and ``head_size``."""

    tail: TailSummary | None = None
    read_from_tail: Mapping[str, LiveGrant] = field(default_factory=dict)
    stale_copies: Mapping[str, str] = field(default_factory=dict)  # grant id -> order key of its copy
    head_size: int = HEAD_SIZE
    tail_read: bool = False  # some of the tail was read after the account item (its version not re-checked)


# ---- keys and items -------------------------------------------------------------------------------------
def live_sk(key: str) -> str:
    return f"{LIVE_PREFIX}{key}"


def live_fields(grant: LiveGrant) -> dict[str, Any]:
    """What a decision needs of a grant, in short names: on the account item and on a tail item alike."""
    fields: dict[str, Any] = {
        "r": grant.remaining,
        "c": grant.category.value,
        "p": grant.priority,
        "e": epoch_us(grant.effective_at),
    }
    if grant.expires_at is not None:
        fields["x"] = epoch_us(grant.expires_at)
    return fields


def live_item(account_id: str, grant: LiveGrant) -> dict[str, Any]:
    return {
        "pk": f"ACCOUNT#{account_id}",
        "sk": live_sk(order_key(grant)),
        "g": grant.grant_id,
        **live_fields(grant),
    }


def live_from_item(item: Mapping[str, Any]) -> LiveGrant:
    return LiveGrant(
        grant_id=str(item["g"]),
        remaining=Decimal(item["r"]),
        category=Category(item["c"]),
        priority=int(item["p"]),
        effective_at=from_epoch_us(item["e"]),
        expires_at=from_epoch_us(item["x"]) if "x" in item else None,
    )


def expiring_range(priority: int) -> tuple[str, str]:
    """The sort keys between which a priority's expiring tail grants lie, earliest expiry first (its
    never-expiring ones sort after: ``<priority>#1#...``)."""
    return live_sk(f"{priority:010d}#"), live_sk(f"{priority:010d}#1")


def successor(key: str) -> str:
    """The smallest text after ``key``: a boundary just past a grant."""
    return key + "\x00"


# ---- what a decision asks to read ----------------------------------------------------------------------
# Reads of more of an account's grants one decision may take (MoreGrantsNeeded) before giving up: each read is
# sized to what the decision lacked and doubles what it takes, so more are only needed when grants change.
MAX_GRANT_READS = 8


@dataclass
class GrantsToRead:
    """What a commit loop asks ``AccountRepository.load`` to read of the tail: the first grants holding
    ``wanted`` spendable credits, ``at_least`` of them. Each MoreGrantsNeeded of the decision adds what it
    lacked and doubles the count (a decision of many debits may lack grants again past what was read)."""

    head_size: int
    wanted: Decimal = ZERO
    at_least: int = 0
    reads: int = 0

    def more(self, account_id: str, short: MoreGrantsNeeded) -> None:
        self.reads += 1
        if self.reads > MAX_GRANT_READS:
            raise ConcurrencyConflict(f"account {account_id}: its grants kept changing while read") from short
        self.wanted += short.missing
        self.at_least = self.head_size * 2**self.reads


# ---- what a read promises ------------------------------------------------------------------------------
def settled(grant: LiveGrant, now: datetime, pinned: AbstractSet[str]) -> bool:
    """A grant that may live in the tail: effective, not held, named by no open reservation, not spent (a
    spent grant waits in the head for a change with room to close it: transitions.MAX_CLOSED_PER_CHANGE)."""
    return (
        grant.remaining > 0 and not grant.held and grant.effective_at <= now and grant.grant_id not in pinned
    )


def unloaded_part(
    tail: TailSummary | None,
    read: Mapping[str, LiveGrant],
    spend_from: str | None,
    spendable_until: datetime | None,
    next_expiry: ExpiryAt | None = None,
    expiry_known: bool = False,
    looked_up: frozenset[str] = frozenset(),
) -> GrantsNotLoaded:
    """The tail grants a state does not hold: the tail less what was read of it."""
    if tail is None:
        return GrantsNotLoaded()
    paid = tail.paid - sum((g.remaining for g in read.values() if g.category is Category.PAID), ZERO)
    promotional = tail.promotional - sum(
        (g.remaining for g in read.values() if g.category is Category.PROMOTIONAL), ZERO
    )
    count = tail.count - len(read)
    if count == 0:
        return GrantsNotLoaded()
    return GrantsNotLoaded(
        count=count,
        paid=paid,
        promotional=promotional,
        spend_from=spend_from,
        spendable_until=spendable_until,
        expiry_known=expiry_known,
        next_expiry=next_expiry,
        looked_up=looked_up,
    )


# ---- what a write stores -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where a change leaves each grant it knows of: the head grants (and which keep a stale copy), the
    LIVE# items to put and to delete, and the tail summary to write on the account item."""

    head: dict[str, LiveGrant]
    stale_copies: frozenset[str]  # head grants that keep their LIVE# copy (flag ``t`` on the item)
    puts: tuple[LiveGrant, ...]
    deletes: tuple[str, ...]  # order keys
    tail: TailSummary | None


def lay_out(state: AccountState, now: datetime, *, max_moves_out: int = MAX_MOVES_OUT) -> Layout:
    """Place the grants of ``state`` (a change's result, carrying how its grants were read) between the
    account item and the tail, keeping the module's invariants."""
    stored = state.storage if isinstance(state.storage, StoredGrants) else StoredGrants()
    unloaded = state.unloaded
    pinned = {a.grant_id for r in state.reservations.values() for a in r.allocations}
    keys = {grant_id: order_key(grant) for grant_id, grant in state.grants.items()}
    frontier = unloaded.spend_from if unloaded.count else None

    unsettled = [g for g in state.grants.values() if not settled(g, now, pinned)]
    candidates = sorted(
        (g for g in state.grants.values() if settled(g, now, pinned)), key=lambda g: keys[g.grant_id]
    )
    # spent grants wait in the head only until a change closes them: they take no room from live ones
    room = max(stored.head_size - sum(1 for g in unsettled if g.remaining > 0), 0)
    # a settled grant at or after the frontier may have unread tail grants before it: it goes to the tail
    before_frontier = [g for g in candidates if frontier is None or keys[g.grant_id] < frontier]
    beyond_frontier = [g for g in candidates if frontier is not None and keys[g.grant_id] >= frontier]
    floor = [keys[g.grant_id] for g in beyond_frontier] + ([frontier] if unloaded.count and frontier else [])
    copies = {**{gid: order_key(g) for gid, g in stored.read_from_tail.items()}, **stored.stale_copies}

    def plan(moved: int) -> tuple[list[LiveGrant], str | None, list[str], list[LiveGrant]] | None:
        """The grants the last ``moved`` settled ones leave for the tail, the boundary, the copies of
        grants staying on the item that it must delete, and the moved grants to Put; None past a write's
        budget."""
        out = before_frontier[len(before_frontier) - moved :] if moved else []
        bounds = floor + [keys[g.grant_id] for g in out]
        boundary = min(bounds) if bounds else None
        staying = {g.grant_id for g in unsettled} | {
            g.grant_id for g in before_frontier[: len(before_frontier) - moved]
        }
        deletes = [
            copies[gid] for gid in staying if gid in copies and (boundary is None or copies[gid] >= boundary)
        ]
        if boundary is None and deletes:
            # the tail empties, but copies remain on the item's grants: keep an empty tail above them instead
            boundary, deletes = successor(max(deletes)), []
        puts = [g for g in out if stored.read_from_tail.get(g.grant_id) != g]
        if moved and (len(puts) > max_moves_out or len(deletes) > MAX_COPY_DELETES):
            return None
        return out, boundary, deletes, puts

    # the last ones in spend order move out, as many as one write may: each moved grant that is not already
    # there is a Put, and moving the boundary down past copies deletes them (an item written before grants
    # moved out of it may hold thousands: it sheds them over its next writes, within a transaction)
    chosen = None
    # (more than max_moves_out + the grants read unchanged would need more Puts than allowed: not tried)
    most = min(max(len(before_frontier) - room, 0), max_moves_out + len(stored.read_from_tail))
    for moved in range(most, -1, -1):
        chosen = plan(moved)
        if chosen is not None:
            break
    assert chosen is not None  # moving nothing is always within budget
    moved_out, boundary, copy_deletes, moved_puts = chosen
    to_tail = moved_out + beyond_frontier
    head = {g.grant_id: g for g in [*unsettled, *before_frontier[: len(before_frontier) - len(moved_out)]]}
    puts = moved_puts + [g for g in beyond_frontier if stored.read_from_tail.get(g.grant_id) != g]
    deletes = list(copy_deletes)
    stale: set[str] = set()
    for grant_id in copies:
        if grant_id in head:
            if copies[grant_id] not in copy_deletes:
                stale.add(grant_id)  # below the boundary the copy is inert; deleted when the grant leaves
        elif grant_id not in state.grants:  # left the account: its copy goes with it
            deletes.append(copies[grant_id])

    tail = None
    if boundary is not None:
        paid = unloaded.paid + sum((g.remaining for g in to_tail if g.category is Category.PAID), ZERO)
        promotional = unloaded.promotional + sum(
            (g.remaining for g in to_tail if g.category is Category.PROMOTIONAL), ZERO
        )
        groups = _unloaded_groups(stored)
        for grant in to_tail:
            if groups is not None:
                groups[grant.priority] = groups.get(grant.priority, 0) + 1
        if groups is not None and len(groups) > MAX_GROUPS:
            groups = None  # counted no more: the item would grow with the priorities
        expiries = [g.expires_at for g in to_tail if g.expires_at is not None]
        if unloaded.count and unloaded.spendable_until is not None:
            # what the read knew of the grants it left unread: their first expiry once the due ones were
            # read, else the item's own lower bound
            expiries.append(unloaded.spendable_until)
        tail = TailSummary(
            boundary=boundary,
            count=unloaded.count + len(to_tail),
            paid=paid,
            promotional=promotional,
            groups=groups,
            expires_from=min(expiries) if expiries else None,
        )
    return Layout(head, frozenset(stale), tuple(puts), tuple(deletes), tail)


def _unloaded_groups(stored: StoredGrants) -> dict[int, int] | None:
    if stored.tail is None:
        return {}
    if stored.tail.groups is None:
        return None
    groups = dict(stored.tail.groups)
    for grant in stored.read_from_tail.values():
        groups[grant.priority] = groups.get(grant.priority, 0) - 1
    return {p: n for p, n in groups.items() if n > 0}


def summary_problems(storage: object) -> list[str]:
    """How the tail summary of a state read with every live grant (``all_grants``) differs from the tail
    grants read: a check for reconcile, which proves the grants' sum against the ledger."""
    if not isinstance(storage, StoredGrants) or storage.tail is None:
        return []
    tail, read = storage.tail, storage.read_from_tail
    problems: list[str] = []
    paid = sum((g.remaining for g in read.values() if g.category is Category.PAID), ZERO)
    promotional = sum((g.remaining for g in read.values() if g.category is Category.PROMOTIONAL), ZERO)
    if (tail.count, tail.paid, tail.promotional) != (len(read), paid, promotional):
        problems.append(
            f"the account item counts {tail.count} grants apart ({tail.paid} paid, {tail.promotional} "
            f"promotional); {len(read)} are there ({paid} paid, {promotional} promotional)"
        )
    expiries = [g.expires_at for g in read.values() if g.expires_at is not None]
    if expiries and (tail.expires_from is None or tail.expires_from > min(expiries)):
        problems.append(f"the grants apart expire from {min(expiries)}, the item says {tail.expires_from}")
    return problems
