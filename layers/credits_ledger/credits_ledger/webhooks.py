"""Stripe events -> ledger, exactly once and in any order.

1. ``interpret`` turns a verified event into payment facts (or ignores it, or marks it unprocessable).
2. The facts are merged into their payment records together with the processed-event record, in one
   transaction: a redelivered event changes nothing there.
3. The payment converges: ``next_action`` names the missing ledger change (grant, revoke, hold, release,
   void), which commits in the same transaction as the owner record's note that it was applied. Convergence
   runs on every delivery, duplicates included, so a crash between 2 and 3 is repaired by Stripe's retry.
4. Subscription periods converge the same way (domain/subscriptions.py): a period record collects the grants
   its invoices announced and the negative prorations to revoke from them; the subscription record its end
   (cancellation) and trial. ``next_pool_action`` names the missing revocation or void, committed with the
   period record's note of it. Since the facts are merged before any ledger change, a proration that arrives
   before the month it revokes from waits for it, and a cancellation voids months granted after it.

A write DynamoDB rejects for good (WriteRejected: an account item over 400 KB) stores the event as failed for
replay instead of answering 500 to Stripe's retries forever.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from credits_ledger.dal.account_settings import AccountSettingsRepository
from credits_ledger.dal.accounts import RelatedItemChanged
from credits_ledger.dal.payments import EventAlreadyRecorded, PaymentChanged, PaymentRepository
from credits_ledger.dal.subscriptions import SubscriptionRepository
from credits_ledger.domain import idempotency, transitions
from credits_ledger.domain.errors import (
    ConcurrencyConflict,
    GrantNotFound,
    GrantNotLive,
    InvalidTransition,
    WriteRejected,
)
from credits_ledger.domain.models import (
    DEFAULT_PRIORITY,
    AccountState,
    Category,
    Change,
    CostBasis,
    Grant,
    Source,
)
from credits_ledger.domain.payments import (
    Action,
    CostBasisAction,
    DisputeAction,
    DisputeEffect,
    GrantAction,
    PaymentRecord,
    RevokeAction,
    applied,
    merge,
    next_action,
    owner_of,
)
from credits_ledger.domain.subscriptions import (
    PoolGrantFact,
    PoolLink,
    PoolRecord,
    PoolRevocation,
    RevokeFromPool,
    SubscriptionRecord,
    SubscriptionSnapshot,
    VoidInPool,
    grant_id_for,
    merge_pool,
    merge_subscription,
    next_pool_action,
    pool_applied,
)
from credits_ledger.domain.transitions import EntryContext, GrantSpec
from credits_ledger.ledger import Ledger, new_id
from credits_ledger.pricing import Pricing
from credits_ledger.stripe_facts import Facts, Ignored, StripeReads, Unprocessable, customer_link, interpret

# Races a convergence may lose (a related record changed under it: read again, decide again) before it
# answers a conflict. Rounds that apply an action are not counted: an invoice of five yearly plan items is 60
# month grants, and each applied action is durable progress.
MAX_ROUNDS = 50
# Actions one convergence applies at most: a bound on a step that would never make progress.
MAX_ACTIONS = 1_000
MAX_GROUP_DEPTH = 3


@dataclass
class _Rounds:
    """The rounds of one convergence so far: those that lost a race and those that applied an action."""

    lost: int = 0
    applied: int = 0

    @property
    def count(self) -> int:
        return self.lost + self.applied

    def left(self) -> bool:
        return self.lost < MAX_ROUNDS and self.applied < MAX_ACTIONS


@dataclass(frozen=True)
class WebhookResult:
    status: str  # processed | duplicate | ignored | failed
    reason: str | None = None
    actions: int = 0


class StripeWebhookProcessor:
    def __init__(
        self,
        ledger: Ledger,
        payments: PaymentRepository,
        pricing: Pricing,
        clock: Callable[[], datetime] | None = None,
        subscriptions: SubscriptionRepository | None = None,
        stripe_reads: StripeReads | None = None,
        mode: str = "test",
    ) -> None:
        self._ledger = ledger
        self._payments = payments
        self._pricing = pricing
        # a cancellation voids the current month of a grant whose own plan says so, whichever plan the
        # subscription's snapshot names
        self._on_cancel_by_plan = {name: plan.on_cancel for name, plan in pricing.plans.items()}
        self._clock = clock or (lambda: datetime.now(UTC))
        self._subscriptions = subscriptions or SubscriptionRepository(payments.client, payments.table)
        self._settings = AccountSettingsRepository(payments.client, payments.table)
        self._reads = stripe_reads
        self._mode = mode

    def process(self, event: dict[str, Any], payload: str | None = None) -> WebhookResult:
        event_id, event_type = event["id"], event.get("type", "")
        meaning = interpret(event, self._pricing, self._reads, self._mode)
        if isinstance(meaning, Ignored):
            return WebhookResult("ignored", meaning.reason)
        if isinstance(meaning, Unprocessable):
            with contextlib.suppress(EventAlreadyRecorded):
                self._payments.record_failed(
                    event_id, event_type, meaning.reason, payload or json.dumps(event), self._clock()
                )
            return WebhookResult("failed", meaning.reason)
        try:
            duplicate = not self._merge(event_id, event_type, meaning)
            actions = sum(self._converge(key) for key in dict.fromkeys(k for k, _ in meaning.items))
            actions += self._converge_subscription_facts(meaning)
        except WriteRejected as exc:
            # Stripe would redeliver for three days and fail the same way each time: keep the event (it
            # replaces the "processed" record step 2 may have written) so an operator replays it after a fix.
            reason = f"write_rejected: {exc}"
            self._payments.record_failed(
                event_id,
                event_type,
                reason,
                payload or json.dumps(event),
                self._clock(),
                replace_processed=True,
            )
            return WebhookResult("failed", reason)
        link = customer_link(event)
        if link is not None:  # after the grant: a failed event links nothing
            self._settings.link_stripe_customer(link.account_id, link.customer, link.paid_at)
        return WebhookResult("duplicate" if duplicate else "processed", actions=actions)

    def replay_failed(self, event_id: str) -> WebhookResult:
        """Process a stored failed event again (after the pricing file or the customer was fixed)."""
        failed = self._payments.failed_event(event_id)
        if failed is None:
            return WebhookResult("ignored", "no failed event with this id")
        return self.process(json.loads(failed.payload), failed.payload)

    # ---- step 2: facts ---------------------------------------------------------------------------------
    def _merge(self, event_id: str, event_type: str, facts: Facts) -> bool:
        keys = [key for key, _ in facts.items]
        for _ in range(MAX_ROUNDS):
            records = self._payments.get_many(keys) if keys else {}
            merged = dict(records)
            for key, fact in facts.items:
                merged[key] = merge(merged[key], fact)
            changes = [(records[k], merged[k]) for k in merged if merged[k] != records[k]]
            try:
                self._payments.record_facts(
                    event_id, event_type, changes, self._clock(), self._subscription_puts(facts)
                )
                return True
            except EventAlreadyRecorded:
                return False
            except PaymentChanged:
                continue
        raise ConcurrencyConflict(f"Stripe event {event_id}: payment records kept changing")

    def _subscription_puts(self, facts: Facts) -> list[dict[str, Any]]:
        """The subscription and period records with this event's facts merged in, as conditional puts."""
        pool_keys = [
            f.pool for f in facts.subscription_items if isinstance(f, PoolGrantFact | PoolRevocation)
        ]
        sub_keys = [
            (f.account_id, f.subscription)
            for f in facts.subscription_items
            if isinstance(f, SubscriptionSnapshot | PoolLink)
        ]
        pools = self._subscriptions.pools(pool_keys)
        subs = self._subscriptions.subscriptions(sub_keys)
        merged_pools, merged_subs = dict(pools), dict(subs)
        for fact in facts.subscription_items:
            if isinstance(fact, PoolGrantFact | PoolRevocation):
                merged_pools[fact.pool] = merge_pool(merged_pools[fact.pool], fact)
            else:
                key = (fact.account_id, fact.subscription)
                merged_subs[key] = merge_subscription(merged_subs[key], fact)
        puts = [self._subscriptions.pool_put(pools[k], p) for k, p in merged_pools.items() if p != pools[k]]
        puts += [
            self._subscriptions.subscription_put(subs[k], r) for k, r in merged_subs.items() if r != subs[k]
        ]
        return puts

    # ---- step 4: subscription periods and trials -----------------------------------------------------------
    def _converge_subscription_facts(self, facts: Facts) -> int:
        pools: list[str] = []
        subscriptions: list[tuple[str, str]] = []
        for fact in facts.subscription_items:
            if isinstance(fact, PoolGrantFact | PoolRevocation):
                pools.append(fact.pool)
            else:
                subscriptions.append((fact.account_id, fact.subscription))
        count = 0
        for key in dict.fromkeys(subscriptions):
            count += self._converge_trial(key)
            pools += self._subscriptions.subscriptions([key])[key].pools
        return count + sum(self._converge_pool(pool) for pool in dict.fromkeys(pools))

    def _converge_trial(self, key: tuple[str, str]) -> int:
        for _ in range(MAX_ROUNDS):
            record = self._subscriptions.subscriptions([key])[key]
            if record.trial is None or record.trial_granted:
                return 0
            trial = record.trial
            entry_key = idempotency.trial_key(record.key)
            spec = GrantSpec(
                grant_id=grant_id_for(entry_key, trial.start),
                amount=trial.credits,
                source=Source("stripe_subscription_trial", record.key),
                category=Category.PROMOTIONAL,
                effective_at=trial.start,
                expires_at=trial.end,
                metadata={"subscription": record.key},
            )
            ctx = EntryContext(entry_key=entry_key, now=self._clock(), reference=record.key)
            update = self._subscriptions.subscription_put(record, replace(record, trial_granted=True))
            try:
                outcome = self._ledger.execute(
                    record.account_id,
                    entry_key,
                    "",
                    lambda state, spec=spec, ctx=ctx: transitions.grant(state, spec, ctx),  # type: ignore[misc]
                    extra_actions=[update],
                )
            except RelatedItemChanged:
                continue
            if outcome.replayed:
                self._payments.transact([update])
            return 1
        raise ConcurrencyConflict(f"subscription {key[1]}: trial did not converge")

    def _existing(self, pool: PoolRecord, known: set[str]) -> set[str]:
        """The pool's grants that exist in the ledger; ``known`` (found in earlier rounds: grants are never
        deleted) is not read again."""
        for grant_id in pool.grants:
            if grant_id in known:
                continue
            try:
                self._ledger.grant_record(grant_id)
            except GrantNotFound:
                continue  # announced by an invoice whose payment has not converged yet
            known.add(grant_id)
        return known

    def _converge_pool(self, key: str) -> int:
        known: set[str] = set()
        rounds = _Rounds()
        while rounds.left():
            pool = self._subscriptions.pools([key])[key]
            ended_at, on_cancel = None, "period_end"
            if pool.subscription and pool.account_id:
                sub_key = (pool.account_id, pool.subscription)
                subscription: SubscriptionRecord = self._subscriptions.subscriptions([sub_key])[sub_key]
                ended_at = subscription.ended_at
                if subscription.snapshot is not None:
                    on_cancel = subscription.snapshot.on_cancel
            action = next_pool_action(
                pool, self._existing(pool, known), ended_at, on_cancel, self._on_cancel_by_plan
            )
            if action is None:
                return rounds.count
            update = self._subscriptions.pool_put(pool, pool_applied(pool, action))
            record = self._ledger.grant_record(action.grant_id)
            now = self._clock()
            build: Callable[[AccountState], Change]
            if isinstance(action, RevokeFromPool):
                ctx = EntryContext(
                    idempotency.proration_revoke_key(action.grant_id, action.target),
                    now,
                    key,
                    metadata={"proration_target": str(action.target)},
                )
                build = self._ledger.revoking(record, action.amount, ctx)
            else:
                assert isinstance(action, VoidInPool)
                # what the month rolled over goes first: a month expired (or kept live by a reservation over
                # its end, its free part rolled over all the same) before the cancellation was processed
                self._void_rolled_over(key, record, now)
                ctx = EntryContext(
                    idempotency.void_key(action.grant_id), now, key, metadata={"reason": "subscription ended"}
                )
                build = lambda state, r=record, c=ctx: transitions.void(state, r, c)  # type: ignore[misc]  # noqa: E731
            try:
                outcome = self._ledger.execute(
                    record.account_id, ctx.entry_key, "", build, extra_actions=[update], records=[record]
                )
            except (GrantNotLive, InvalidTransition):
                noted = self._note(update)  # nothing left to act on: note it as done
            except RelatedItemChanged:
                rounds.lost += 1
                continue
            else:
                # a change committed before (the same key through another path): the note did not ride with it
                noted = self._note(update) if outcome.replayed else True
            if noted:
                rounds.applied += 1
            else:
                rounds.lost += 1
        raise ConcurrencyConflict(f"subscription period {key} did not converge")

    def _note(self, update: dict[str, Any]) -> bool:
        """Write a period record's update alone; False when the record changed since it was read (another
        delivery acted on the period meanwhile): the caller reads it again and decides anew."""
        try:
            self._payments.transact([update])
        except PaymentChanged:
            return False
        return True

    def _void_rolled_over(self, pool_key: str, record: Grant, now: datetime) -> None:
        """Void the grants ``record``'s credits rolled over into, each by its own change (``void:<grant>``,
        as for any void: a grant is voided once), before the month itself is voided with the period's note.

        A month has some once it expired, or expired in part (credits a reservation held over its end stay
        live, the free part rolls over). The grants are read again after acting until no new one shows up: a
        rollover committed meanwhile is voided too. Voids are final and a cancellation is never taken back,
        so these need not ride with the note: a crash before it is finished by the next delivery."""
        done: set[str] = set()
        while True:
            todo = [g for g in self._ledger.rolled_over(record) if g.grant_id not in done]
            if not todo:
                return
            for grant in todo:
                ctx = EntryContext(
                    idempotency.void_key(grant.grant_id),
                    now,
                    pool_key,
                    metadata={"reason": "subscription ended"},
                )
                # nothing to void (spent, expired or voided already): done too
                with contextlib.suppress(GrantNotLive, InvalidTransition):
                    self._ledger.execute(
                        grant.account_id,
                        ctx.entry_key,
                        "",
                        lambda state, g=grant, c=ctx: transitions.void(state, g, c),  # type: ignore[misc]
                        records=[grant],
                    )
                done.add(grant.grant_id)

    # ---- step 3: convergence -----------------------------------------------------------------------------
    def _group(self, key: str) -> list[PaymentRecord]:
        """The payment ``key`` belongs to (its invoice, PaymentIntent and charges), root first."""
        record = self._payments.get_many([key])[key]
        for _ in range(MAX_GROUP_DEPTH):
            if record.parent is None:
                break
            record = self._payments.get_many([record.parent])[record.parent]
        group, frontier = [record], list(record.children)
        for _ in range(MAX_GROUP_DEPTH):
            if not frontier:
                break
            found = self._payments.get_many(frontier)
            group += found.values()
            frontier = [c for r in found.values() for c in r.children if c not in {g.key for g in group}]
        return group

    def _converge(self, key: str) -> int:
        rounds = _Rounds()
        while rounds.left():
            group = self._group(key)
            action = next_action(group)
            if action is None:
                return rounds.count
            owner = owner_of(group)
            assert owner is not None and owner.purchase is not None
            try:
                self._apply(owner, action)
            except (RelatedItemChanged, PaymentChanged):
                rounds.lost += 1
                continue
            rounds.applied += 1
        raise ConcurrencyConflict(f"payment {key} did not converge")

    def _apply(self, owner: PaymentRecord, action: Action) -> None:
        assert owner.purchase is not None
        account = owner.purchase.account_id
        now = self._clock()
        if isinstance(action, CostBasisAction):
            updates = [
                self._ledger.cost_basis_correction(grant_id, Decimal(cost), currency)
                for grant_id, cost, currency in action.costs
            ]
            self._payments.save(owner, applied(owner, action), with_actions=updates)
            return
        if isinstance(action, GrantAction):
            line, purchase = action.line, action.purchase
            described = {
                "pack": line.pack,
                "plan": line.plan,
                "subscription": line.subscription,
                "line": line.line_id,
            }
            spec = GrantSpec(
                grant_id=line.grant_id or new_id("gr"),
                amount=line.credits,
                source=Source(purchase.source_type, purchase.source_id),
                category=line.category,
                priority=line.priority if line.priority is not None else DEFAULT_PRIORITY,
                effective_at=purchase.effective_at(line),
                expires_at=purchase.expires_at(line),
                cost_basis=CostBasis(Decimal(line.cost_amount), line.currency),
                funding_key=owner.key,
                metadata={k: v for k, v in described.items() if v},
            )
            ctx = EntryContext(
                entry_key=line.entry_key or idempotency.stripe_grant_key(owner.key, line.line_id),
                now=now,
                reference=owner.key,
            )
            self._commit(
                owner, action, account, ctx, lambda state: transitions.grant(state, spec, ctx), spec.grant_id
            )
            return
        record = self._ledger.grant_record(action.grant_id)
        build: Callable[[AccountState], Change]
        if isinstance(action, RevokeAction):
            ctx = EntryContext(
                idempotency.stripe_revoke_key(action.grant_id, action.target),
                now,
                owner.key,
                metadata={"refunded_target": str(action.target)},
            )
            build = self._ledger.revoking(record, action.amount, ctx)
        else:
            assert isinstance(action, DisputeAction)
            self._apply_dispute(owner, action, record, now)
            return
        self._commit(owner, action, record.account_id, ctx, build, None, record)

    def _apply_dispute(
        self, owner: PaymentRecord, action: DisputeAction, record: Grant, now: datetime
    ) -> None:
        """Hold, release or void the disputed grant and the grants its credits rolled over into (they came
        from the disputed payment): one change of the account, an entry per grant acted on, committed with
        the owner record's note of the effect, so a fact merged meanwhile (the dispute closed, a second one
        opened) cancels both and the effect is decided again.

        The rollover grants are read at each decision, after the account (as for a refund): a rollover
        committed before the account read is acted on, a later one changes the account's version and the
        change is decided again. A grant with nothing to act on (spent, expired or voided; held or released
        already) is left out; with none left the effect is only noted."""
        transition = {
            DisputeEffect.HELD: transitions.hold,
            DisputeEffect.RELEASED: transitions.release,
            DisputeEffect.VOIDED: transitions.void,
        }[action.effect]

        def build(state: AccountState) -> Change:
            changes: list[Change] = []
            current = state
            for grant in (record, *self._ledger.rolled_over(record)):
                ctx = self._dispute_context(owner, action.effect, grant.grant_id, now)
                try:
                    change = transition(current, grant, ctx)
                except (GrantNotLive, InvalidTransition):
                    continue
                changes.append(change)
                current = change.state
            if not changes:
                raise GrantNotLive(record.grant_id, "nothing left to act on")
            return transitions.combine(state, changes)

        # The change's own key: one only this round writes (its void entries are keyed `void:<grant>`, which an
        # admin void or a cancellation may have written already, and which would answer this round as done)
        round_key = idempotency.stripe_dispute_key(action.effect.value, record.grant_id, owner.version)
        ctx = EntryContext(entry_key=round_key, now=now, reference=owner.key)
        self._commit(owner, action, record.account_id, ctx, build, None, record)

    @staticmethod
    def _dispute_context(
        owner: PaymentRecord, effect: DisputeEffect, grant_id: str, now: datetime
    ) -> EntryContext:
        if effect is DisputeEffect.VOIDED:
            key = idempotency.void_key(grant_id)  # the same key as an admin void: a grant is voided once
        else:
            # A grant may be held and released more than once (a second dispute): the owner record's version
            # tells the rounds apart and is the same for every retry of this round.
            key = idempotency.stripe_dispute_key(effect.value, grant_id, owner.version)
        return EntryContext(entry_key=key, now=now, reference=owner.key)

    def _commit(
        self,
        owner: PaymentRecord,
        action: Action,
        account: str,
        ctx: EntryContext,
        build: Callable[[AccountState], Change],
        grant_id: str | None,
        record: Grant | None = None,
    ) -> None:
        update = applied(owner, action, grant_id)
        try:
            outcome = self._ledger.execute(
                account,
                ctx.entry_key,
                "",
                build,
                extra_actions=[self._payments.put_action(owner, update)],
                records=[record] if record is not None else (),
            )
        except (GrantNotLive, InvalidTransition):
            # Nothing left to act on (spent, expired or voided already): note the effect as applied.
            self._payments.save(owner, update)
            return
        if outcome.replayed:
            # The ledger change was committed before (e.g. by the same key through another path); the record
            # update did not ride with it this time.
            if isinstance(action, GrantAction):
                update = applied(owner, action, outcome.entry.allocations[0].grant_id)
            self._payments.save(owner, update)
