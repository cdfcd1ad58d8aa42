"""Reservations (docs/reservations.md): ``POST /v1/reservations``, ``.../{id}/capture``, ``.../{id}/release``,
``.../{id}/extend``, ``GET /v1/reservations/{id}`` and the open ones of an account."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path

from credits_ledger.api.deps import caller, new_router, replayable, reservations
from credits_ledger.api.openapi import REPLAY, responses
from credits_ledger.api.params import CustomerId
from credits_ledger.api_models import (
    AllocationView,
    CaptureRequest,
    CaptureResponse,
    ExtendRequest,
    ReleaseResponse,
    ReservationCreated,
    ReservationList,
    ReservationRequest,
    ReservationView,
)
from credits_ledger.auth import Scope
from credits_ledger.domain.models import Allocation
from credits_ledger.domain.money import ZERO, format_amount
from credits_ledger.domain.times import iso
from credits_ledger.pricing import load_pricing

if TYPE_CHECKING:
    from credits_ledger.dal.reservations import ReservationRecord
    from credits_ledger.reservations import ReservationView as View

# The reservation service (credits_ledger.reservations and its repository) loads on the first reservation
# request an instance serves (api/deps.py), not in every cold start of the API (docs/decisions.md, "Cold start").

router = new_router()
ReservationId = Annotated[str, Path(min_length=1, max_length=255, description="reservation id")]
ENDED_TWICE = " (200 with Idempotent-Replayed: true when it ended this way before: the first answer)"


def _allocations(allocations: tuple[Allocation, ...]) -> list[AllocationView]:
    return [AllocationView(grant_id=a.grant_id, amount=format_amount(a.amount)) for a in allocations]


def _view(view: View) -> ReservationView:
    record = view.record
    ended = record.ended_at is not None
    return ReservationView(
        id=record.reservation_id,
        customer=record.account_id,
        status=view.status.value,
        credits=format_amount(record.credits),
        held=format_amount(view.held),
        expires_at=iso(view.expires_at),
        allocations=_allocations(record.allocations),
        created_at=iso(record.created_at),
        meter=record.meter,
        quantity=format_amount(record.quantity) if record.quantity is not None else None,
        metadata=record.metadata or None,
        captured=format_amount(record.captured) if ended else None,
        released=format_amount(record.released) if ended else None,
        ended_at=iso(record.ended_at) if record.ended_at else None,
    )


def _record(reservation_id: str, scope: Scope) -> ReservationRecord:
    """The reservation, once the key may act on its account (403 otherwise, 404 when there is none)."""
    principal = caller()
    principal.require(scope)
    record = reservations().record(reservation_id)
    principal.require(scope, record.account_id)
    return record


@router.post(
    "/v1/reservations",
    summary="Reserve credits for a long-running job",
    tags=["reservations"],
    responses=responses(201, "reserved" + REPLAY, ReservationCreated, 402, 409),
)
def create_reservation(body: ReservationRequest) -> Response[ReservationCreated]:
    from credits_ledger.reservations import ReserveRequest, credits_for

    caller().require(Scope.USAGE_WRITE, body.customer)
    credits = body.credits
    if credits is None:
        assert body.meter is not None and body.quantity is not None  # the model says one or the other
        credits = credits_for(body.meter, body.quantity, load_pricing())
    answer = reservations().reserve(
        ReserveRequest(
            reservation_id=body.id,
            account_id=body.customer,
            credits=credits,
            expires_in=body.expires_in,
            meter=body.meter,
            quantity=body.quantity,
            metadata=dict(body.metadata or {}),
        )
    )
    record = answer.record
    created = ReservationCreated(
        id=record.reservation_id,
        customer=record.account_id,
        credits=format_amount(record.credits),
        expires_at=iso(record.expires_at),
        allocations=_allocations(record.allocations),
    )
    return replayable(created, answer.replayed)


@router.post(
    "/v1/reservations/<id>/capture",
    summary="Capture what the job used; release the rest",
    tags=["reservations"],
    responses=responses(200, "captured" + ENDED_TWICE, CaptureResponse, 402, 404),
)
def capture(
    id: ReservationId, body: Annotated[CaptureRequest | None, Body(description="optional")] = None
) -> Response[CaptureResponse]:
    record = _record(id, Scope.USAGE_WRITE)
    asked = body or CaptureRequest()
    answer = reservations().capture(record, asked.credits, asked.allow_overrun)
    ended = answer.record
    captured = CaptureResponse(
        id=ended.reservation_id,
        captured=format_amount(ended.captured),
        released=format_amount(ended.released),
        balance=format_amount(ended.available_after if ended.available_after is not None else ZERO),
    )
    return replayable(captured, answer.replayed, first=HTTPStatus.OK)


@router.post(
    "/v1/reservations/<id>/release",
    summary="Release everything a reservation holds",
    tags=["reservations"],
    responses=responses(200, "released" + ENDED_TWICE, ReleaseResponse, 404),
)
def release(id: ReservationId) -> Response[ReleaseResponse]:
    record = _record(id, Scope.USAGE_WRITE)
    answer = reservations().release(record)
    ended = answer.record
    status: Literal["released", "expired"] = "expired" if ended.status.value == "expired" else "released"
    released = ReleaseResponse(id=ended.reservation_id, status=status, released=format_amount(ended.released))
    return replayable(released, answer.replayed, first=HTTPStatus.OK)


@router.post(
    "/v1/reservations/<id>/extend",
    summary="Move the end of a reservation to now + expires_in",
    tags=["reservations"],
    responses=responses(200, "the reservation", ReservationView, 404),
)
def extend(id: ReservationId, body: ExtendRequest) -> ReservationView:
    record = _record(id, Scope.USAGE_WRITE)
    return _view(reservations().extend(record, body.expires_in))


@router.get(
    "/v1/reservations/<id>",
    summary="A reservation",
    tags=["reservations"],
    responses=responses(200, "the reservation as it is now", ReservationView, 404),
)
def get_reservation(id: ReservationId) -> ReservationView:
    record = _record(id, Scope.BALANCE_READ)
    return _view(reservations().view(record))


@router.get(
    "/v1/customers/<customer>/reservations",
    summary="The open reservations of an account",
    tags=["reservations"],
    responses=responses(
        200, "reservations not ended yet (lapsed ones read expired), soonest end first", ReservationList
    ),
)
def list_reservations(customer: CustomerId) -> ReservationList:
    caller().require(Scope.BALANCE_READ, customer)
    return ReservationList(data=[_view(v) for v in reservations().open_of(customer)])
