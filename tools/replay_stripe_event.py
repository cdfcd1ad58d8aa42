"""Replay Stripe events that the webhook recorded as failed, against a deployed table (docs/deploy.md).

A verified event the webhook could not act on (unknown pack, no account, malformed object ...) is
acknowledged to Stripe and stored with its payload under ``pk = STRIPE_EVENT#<event id>`` (``status`` failed,
kept 90 days). Once the cause is fixed (pricing file deployed, customer metadata corrected), this script
runs ``StripeWebhookProcessor.replay_failed(event_id)`` for each id with the caller's AWS credentials,
exactly as the webhook would have: at most once per payment, whatever Stripe redelivers meanwhile.

    .venv/bin/python -m tools.replay_stripe_event --stack credits-prod --list
    .venv/bin/python -m tools.replay_stripe_event --stack credits-prod evt_1Pq... evt_1Pr...
    .venv/bin/python -m tools.replay_stripe_event --table credits-prod-CreditsTable-1ABC --region eu-west-1 evt_...

The pricing file must be the one the stack runs (default: config/pricing.toml of this checkout, which
`sam deploy` shipped). The caller needs dynamodb:GetItem, BatchGetItem, PutItem, UpdateItem,
ConditionCheckItem and Query on the table (and cloudformation:DescribeStacks for --stack;
dynamodb:Scan for --list). Exit status: 0 when every event ended processed, duplicate or ignored; 1 when one
is still failed (its new reason is printed); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRICING = ROOT / "config" / "pricing.toml"
TABLE_OUTPUT = "CreditsTableName"
EVENT_PREFIX = "STRIPE_EVENT#"


def table_from_stack(cloudformation: Any, stack: str) -> str:
    """The table name from the stack's ``CreditsTableName`` output."""
    [description] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    for output in description.get("Outputs") or []:
        if output.get("OutputKey") == TABLE_OUTPUT:
            return str(output["OutputValue"])
    raise SystemExit(f"stack {stack} has no {TABLE_OUTPUT} output")


def failed_events(client: Any, table: str) -> Iterator[dict[str, str]]:
    """Failed events still stored (a Scan: reads the whole table, ~0.5 RRU per 4 KB; for rare use)."""
    paginator = client.get_paginator("scan")
    pages = paginator.paginate(
        TableName=table,
        FilterExpression="begins_with(pk, :prefix) AND #status = :failed",
        ProjectionExpression="pk, event_type, reason, received_at",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={":prefix": {"S": EVENT_PREFIX}, ":failed": {"S": "failed"}},
    )
    for page in pages:
        for item in page.get("Items", []):
            yield {
                "event_id": item["pk"]["S"].removeprefix(EVENT_PREFIX),
                "event_type": item.get("event_type", {}).get("S", ""),
                "reason": item.get("reason", {}).get("S", ""),
                "received_at": item.get("received_at", {}).get("S", ""),
            }


def replay(client: Any, table: str, pricing_file: Path, event_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Replay each event; one result dict per id (``status``: processed, duplicate, ignored or failed)."""
    from credits_ledger.dal.accounts import AccountRepository
    from credits_ledger.dal.payments import PaymentRepository
    from credits_ledger.ledger import Ledger
    from credits_ledger.pricing import load_pricing
    from credits_ledger.webhooks import StripeWebhookProcessor

    processor = StripeWebhookProcessor(
        Ledger(AccountRepository(client, table)), PaymentRepository(client, table), load_pricing(pricing_file)
    )
    results = []
    for event_id in event_ids:
        result = processor.replay_failed(event_id)
        results.append(
            {
                "event_id": event_id,
                "status": result.status,
                "reason": result.reason,
                "actions": result.actions,
            }
        )
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.replay_stripe_event",
        description="Replay Stripe events recorded as failed by the credits webhook (docs/deploy.md).",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help="CloudFormation stack name (reads its CreditsTableName output)")
    where.add_argument("--table", help="DynamoDB table name")
    parser.add_argument("--region", help="AWS region (default: your profile's / AWS_REGION)")
    parser.add_argument("--profile", help="AWS profile (default: the usual credential chain)")
    parser.add_argument(
        "--pricing", type=Path, default=DEFAULT_PRICING, help=f"pricing file (default {DEFAULT_PRICING})"
    )
    parser.add_argument("--list", action="store_true", help="list the failed events instead (Scan)")
    parser.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="Stripe event ids (evt_...)")
    return parser


def main(argv: Sequence[str] | None = None, session: Any = None) -> int:
    args = _parser().parse_args(argv)
    if not args.list and not args.event_ids:
        _parser().error("name at least one EVENT_ID, or --list")
    if not args.pricing.is_file():
        _parser().error(f"no pricing file {args.pricing}")
    if session is None:
        import boto3

        session = boto3.Session(profile_name=args.profile, region_name=args.region)
    client = session.client("dynamodb")
    table = args.table or table_from_stack(session.client("cloudformation"), args.stack)
    if args.list:
        for event in failed_events(client, table):
            print(json.dumps(event))
        return 0
    results = replay(client, table, args.pricing, args.event_ids)
    for result in results:
        print(json.dumps(result))
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
