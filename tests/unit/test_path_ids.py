"""An id the API takes where it is later addressed by path (an account, a reservation) must be one a route's
``{param}`` matches once API Gateway has decoded the path: ``domain.models.is_addressable`` against
Powertools' own router."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from hypothesis import example, given
from hypothesis import strategies as st

from credits_dev.lambda_context import FakeLambdaContext
from credits_ledger.domain.models import is_account_id, is_addressable

app = APIGatewayHttpResolver()


@app.get("/v1/reservations/<id>")
def found(id: str) -> dict[str, Any]:
    return {"id": id}


def routed(segment: str) -> str | None:
    """What the route receives for the decoded path ``/v1/reservations/<segment>``, or None (404)."""
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": f"/v1/reservations/{segment}",
        "headers": {},
        "requestContext": {
            "http": {"method": "GET", "path": f"/v1/reservations/{segment}"},
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }
    reply = app.resolve(event, FakeLambdaContext())
    return json.loads(reply["body"])["id"] if reply["statusCode"] == 200 else None


# identifiers hold no control characters (a route's pattern would also take "0\n" as "0": "$" before a newline)
@given(st.text(st.characters(exclude_characters="/", exclude_categories=["Cc"]), min_size=1, max_size=6))
@example("job-42 (retry) #1")
@example("\N{GRINNING FACE}")
@example("\U00020000")
@example("e\N{COMBINING ACUTE ACCENT}")
@example("a?b")
def test_an_addressable_id_is_exactly_one_a_route_can_reach(segment: str) -> None:
    assert is_addressable(segment) == (routed(segment) == segment)


def test_account_ids_are_identifiers_that_fit_in_a_path() -> None:
    assert is_account_id("cus_NffrFeUfNV2Hib") and is_account_id("org 42 (EU)") and is_account_id("日本")
    assert not is_account_id("org/42") and not is_account_id("team \N{GRINNING FACE}")
    assert not is_account_id("") and not is_account_id("a" * 256) and not is_account_id("a\tb")
