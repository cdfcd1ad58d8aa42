"""``GET /health``: liveness, no key needed."""

from __future__ import annotations

from credits_ledger.api.deps import new_router
from credits_ledger.api_models import Health

router = new_router()


@router.get(
    "/health",
    summary="Liveness",
    tags=["health"],
    responses={200: {"description": "up", "content": {"application/json": {"model": Health}}}},
)
def health() -> Health:
    return Health()
