"""Route modules of the HTTP API, one Powertools Router per area. ``ROUTERS`` is what the API function
includes, in this order; a new area adds its module here."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from credits_ledger.api.routes import (
    api_keys,
    balance,
    grants,
    health,
    reports,
    reservations,
    settings,
    subscriptions,
    usage,
)

ROUTERS: tuple[APIGatewayHttpRouter, ...] = (
    health.router,
    usage.router,
    reservations.router,
    balance.router,
    grants.router,
    settings.router,
    subscriptions.router,
    api_keys.router,
    reports.router,
)
