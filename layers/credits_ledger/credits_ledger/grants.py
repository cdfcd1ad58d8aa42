"""Admin operations on grants: manual/promotional grants (idempotent with a client id) and voids.

A manual grant's entry key is ``grant:<id>`` (``idempotency.admin_grant_key``) when the caller gives an id (a replay answers the first grant, the
same id with another body is an idempotency mismatch), otherwise a fresh uuid. Admin grants default to the
``promotional`` category with a zero cost basis: nobody paid for them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from credits_ledger.api_models import GrantRequest
from credits_ledger.domain import idempotency
from credits_ledger.domain.models import CostBasis, Grant, Source
from credits_ledger.domain.money import format_amount
from credits_ledger.domain.times import iso
from credits_ledger.domain.transitions import GrantSpec
from credits_ledger.ledger import Ledger, new_id

ADMIN_SOURCE = "admin"


@dataclass(frozen=True)
class GrantResult:
    grant: Grant
    replayed: bool


def grant_fingerprint(customer: str, request: GrantRequest) -> str:
    canonical = {
        "customer": customer,
        "amount": format_amount(request.amount),
        "category": request.category.value,
        "priority": request.priority,
        "effective_at": iso(request.effective_at) if request.effective_at else None,
        "expires_at": iso(request.expires_at) if request.expires_at else None,
        "reason": request.reason,
    }
    return idempotency.fingerprint(canonical)


def grant_credits(ledger: Ledger, customer: str, request: GrantRequest, granted_by: str) -> GrantResult:
    """Grant credits by hand; InvalidGrant (422) or IdempotencyMismatch (409) when refused."""
    key = idempotency.admin_grant_key(request.id if request.id is not None else str(uuid.uuid4()))
    spec = GrantSpec(
        grant_id=new_id("gr"),
        amount=request.amount,
        source=Source(type=ADMIN_SOURCE, id=request.id),
        category=request.category,
        priority=request.priority,
        effective_at=request.effective_at,
        expires_at=request.expires_at,
        cost_basis=CostBasis(),
        reason=request.reason,
        metadata={"granted_by": granted_by},
    )
    outcome = ledger.grant(
        customer, spec, key, fingerprint=grant_fingerprint(customer, request), reference=request.id
    )
    grant_id = outcome.entry.allocations[0].grant_id
    return GrantResult(grant=ledger.grant_view(grant_id), replayed=outcome.replayed)


def void_grant(ledger: Ledger, grant_id: str, voided_by: str) -> Grant:
    """Void what remains of a grant (nothing when nothing remains) and return it; GrantNotFound (404)."""
    ledger.void(grant_id, reference=voided_by)
    return ledger.grant_view(grant_id)
