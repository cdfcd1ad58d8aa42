"""``credits``: the operator and developer command line of the credits ledger.

Talks to the public HTTP API of a local stack (``make dev``) or a deployed one:

    credits [--url URL] [--key KEY] [--json] COMMAND ...

``--url`` defaults to ``$CREDITS_URL`` (else http://127.0.0.1:3000), ``--key`` to ``$CREDITS_API_KEY``.
``. .local/dev.env`` (written by ``make dev``) sets both, and ``STRIPE_WEBHOOK_SECRET``.

Exit codes: 0 done; 1 the API rejected the request (4xx such as 402 insufficient credits, 404, 409) or
failed (5xx); 2 the command line is wrong or the API cannot be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:3000"
BATCH_SIZE = 100
SCOPES = ("admin", "usage:write", "balance:read")
GRANT_STATUSES = ("all", "active", "pending", "held", "depleted", "expired", "voided")
USER_AGENT = "credits-cli/0.1"

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2

HINTS = {
    400: "the request is malformed: check the arguments (`credits COMMAND --help`)",
    401: "check the API key: --key or CREDITS_API_KEY (`make dev` prints the admin key; `. .local/dev.env` sets it)",
    403: "this API key may not do that: use an admin key, or create one with the right scope "
    "(`credits keys create --scope ...`)",
    402: "not enough credits: grant some (`credits grant CUSTOMER AMOUNT`) or simulate a purchase "
    "(`credits stripe send checkout.session.completed --customer CUSTOMER --credits 500`)",
    404: "not found: check the id (and that --url points at the right stack)",
    409: "this id was already used with a different body: use a new --id, or send exactly the same request",
    413: "the request is too large: send fewer events at a time",
    422: "the API refused a value: see the details above",
    429: "rate limited: slow down and retry",
}


class CliError(Exception):
    """A failure to report: message, optional hint, exit code."""

    def __init__(
        self, message: str, code: int = EXIT_REJECTED, hint: str | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint
        self.body = body


# ---------------------------------------------------------------------------------------------------------
# HTTP
@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes

    @property
    def replayed(self) -> bool:
        """The API recognised the idempotency key and answered as the first time: nothing was done again."""
        return self.headers.get("idempotent-replayed") == "true"


class Api:
    def __init__(self, url: str, key: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> ApiResponse:
        url = self.url + path
        if query:
            clean = {k: v for k, v in query.items() if v is not None}
            if clean:
                url += "?" + urllib.parse.urlencode(clean)
        data = raw_body
        all_headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        if body is not None and data is None:
            data = json.dumps(body).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        if auth:
            if not self.key:
                raise CliError(
                    "no API key: pass --key or set CREDITS_API_KEY (`make dev` prints the admin key; "
                    "`. .local/dev.env` sets it)",
                    EXIT_USAGE,
                )
            all_headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # http(s) only
                return self._response(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as exc:
            return self._response(exc.code, dict(exc.headers or {}), exc.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the credits API at {self.url} ({reason})",
                EXIT_USAGE,
                "start the local stack with `make dev`, or pass --url / set CREDITS_URL to a deployed stack",
            ) from exc

    @staticmethod
    def _response(status: int, headers: dict[str, str], raw: bytes) -> ApiResponse:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        return ApiResponse(status, {k.lower(): v for k, v in headers.items()}, body, raw)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> ApiResponse:
        """Like request(), but a 4xx/5xx answer raises CliError."""
        response = self.request(method, path, body, **kwargs)
        if response.status >= 400:
            raise api_error(response)
        return response


def api_error(response: ApiResponse) -> CliError:
    error = response.body.get("error") if isinstance(response.body, dict) else None
    if isinstance(error, dict):
        message = f"{error.get('code', 'error')} ({response.status}): {error.get('message', '')}"
        details = error.get("details") or []
        for detail in details:
            if isinstance(detail, dict):
                message += f"\n  - {detail.get('field', '')}: {detail.get('message', '')}"
    elif isinstance(response.body, dict) and "message" in response.body:
        message = f"HTTP {response.status}: {response.body['message']}"
    else:
        message = f"HTTP {response.status}: {str(response.body or '')[:500]}"
    hint = HINTS.get(response.status)
    if response.status >= 500:
        hint = "the service failed: see the stack's log (the `make dev` console) and retry"
    return CliError(message, EXIT_REJECTED, hint, response.body)


# ---------------------------------------------------------------------------------------------------------
# Rendering
def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """A plain-text table; columns whose index is in ``right`` are right-aligned (amounts)."""
    right_set = set(right)
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(widths[i]) if i in right_set else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(out).rstrip()

    lines = [line(list(headers)), line(["-" * w for w in widths])]
    lines += [line(row) for row in cells]
    return "\n".join(lines)


def render_pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {'' if v is None else v}".rstrip() for k, v in pairs)


def short_time(value: Any) -> str:
    """``2026-11-23T20:06:33.649799Z`` -> ``2026-11-23T20:06:33Z``."""
    if not isinstance(value, str):
        return "" if value is None else str(value)
    return re.sub(r"\.\d+(?=Z|[+-]\d\d:\d\d$)", "", value)


def render_balance(balance: dict[str, Any], forecast: dict[str, Any] | None = None) -> str:
    by_category = balance.get("by_category") or {}
    nxt = balance.get("next_expiry")
    return render_pairs(
        [
            ("customer", balance.get("customer")),
            ("available", balance.get("available")),
            ("  paid", by_category.get("paid")),
            ("  promotional", by_category.get("promotional")),
            ("ledger balance", balance.get("ledger_balance")),
            ("held", balance.get("held")),
            ("pending", balance.get("pending")),
            ("reserved", balance.get("reserved", "0")),
            ("next expiry", f"{nxt.get('amount')} at {short_time(nxt.get('at'))}" if nxt else "-"),
            ("as of", short_time(balance.get("as_of"))),
            *(burn_pairs(forecast) if forecast else []),
        ]
    )


def burn_pairs(forecast: dict[str, Any]) -> list[tuple[str, Any]]:
    runs_out = forecast.get("runs_out_at")
    return [
        ("burn per day", f"{forecast.get('burn_per_day')} (last {forecast.get('window_days', 30)} days)"),
        ("runs out at", short_time(runs_out) if runs_out else "never (nothing burns)"),
    ]


def render_forecast(forecast: dict[str, Any]) -> str:
    days = forecast.get("days") or []
    peak = max((Decimal(str(d.get("burn", "0"))) for d in days), default=Decimal(0))
    rows = []
    for day in days:
        burn = Decimal(str(day.get("burn", "0")))
        bar = "#" * (int(burn * 30 / peak) if peak else 0)
        meters = ", ".join(f"{m} {v}" for m, v in (day.get("by_meter") or {}).items())
        rows.append([day.get("day"), day.get("burn"), bar + (" !" if day.get("anomaly") else ""), meters])
    head = render_pairs(
        [
            ("customer", forecast.get("customer")),
            ("available", forecast.get("available")),
            *burn_pairs(forecast),
        ]
    )
    table = render_table(["day", "burn", "", "by meter"], rows, right=[1]) if rows else ""
    return "\n".join(x for x in (head, table) if x) + (
        "\n! credits.usage.anomaly was raised that day" if any(d.get("anomaly") for d in days) else ""
    )


def render_grants(grants: list[dict[str, Any]]) -> str:
    if not grants:
        return "no grants"
    rows = []
    for g in grants:
        source = g.get("source") or {}
        rows.append(
            [
                g.get("id"),
                g.get("category"),
                g.get("amount"),
                g.get("remaining"),
                g.get("status"),
                g.get("priority"),
                short_time(g.get("effective_at")),
                short_time(g.get("expires_at")) or "never",
                f"{source.get('type')}{':' + _short(source['id']) if source.get('id') else ''}",
            ]
        )
    return render_table(
        ["ID", "CATEGORY", "AMOUNT", "REMAINING", "STATUS", "PRIORITY", "EFFECTIVE", "EXPIRES", "SOURCE"],
        rows,
        right=(2, 3, 5),
    )


def _short(value: str, width: int = 24) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def render_transactions(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no transactions"
    rows = []
    for e in entries:
        allocations = ", ".join(f"{a.get('grant_id')} {a.get('amount')}" for a in e.get("allocations") or [])
        rows.append(
            [
                short_time(e.get("created_at")),
                e.get("type"),
                e.get("amount"),
                e.get("balance_after"),
                e.get("reference") or "",
                allocations,
            ]
        )
    return render_table(["CREATED", "TYPE", "AMOUNT", "BALANCE", "REFERENCE", "GRANTS"], rows, right=(2, 3))


def render_grant(grant: dict[str, Any]) -> str:
    return render_grants([grant])


class Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total)
        rate = done / max(time.monotonic() - self.started, 1e-6)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {rate:.0f}/s {note}".ljust(
                self.width + 40
            )
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------------------
# Arguments
_RELATIVE = re.compile(r"^([+-])(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: dt.datetime | None = None) -> str:
    """ISO 8601 (``2026-12-31``, ``2026-12-31T00:00:00Z``, any offset; no offset means UTC), ``now``, or
    relative to now: ``+7d``, ``-2h``, ``+30m``, ``+1w``. Returns UTC ISO 8601 with ``Z``."""
    try:
        return _parse_time(text.strip(), now or dt.datetime.now(dt.UTC))
    except OverflowError as exc:  # +99999999d, or 0001-01-01T00:00:00+01:00 once in UTC
        raise argparse.ArgumentTypeError(f"{text!r} is out of the range of times") from exc


def _parse_time(text: str, now: dt.datetime) -> str:
    if text == "now":
        moment = now
    elif match := _RELATIVE.match(text):
        sign = 1 if match.group(1) == "+" else -1
        moment = now + dt.timedelta(seconds=sign * float(match.group(2)) * _UNIT_SECONDS[match.group(3)])
    else:
        try:
            moment = dt.datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a time: use ISO 8601 (2026-12-31T00:00:00Z) or +7d / -2h / now"
            ) from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_arg(text: str) -> int:
    """Seconds: ``3600``, or ``30m`` / ``2h`` / ``7d`` / ``1w``."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use seconds or 30m / 2h / 7d")
    return (
        int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}[match.group(2)]
    )


def day_arg(text: str) -> str:
    """A UTC day as the API takes it; ``today`` and ``-7d`` style offsets are resolved here."""
    today = dt.datetime.now(dt.UTC).date()
    match = re.fullmatch(r"([+-]\d+)d", text.strip())
    if text.strip() == "today":
        return today.isoformat()
    if match:
        return (today + dt.timedelta(days=int(match.group(1)))).isoformat()
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a day: {text!r} (YYYY-MM-DD, today, -7d)") from exc


def amount_arg(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number greater than 0")
    return text


def scopes_arg(values: list[str]) -> list[str]:
    scopes: list[str] = []
    for value in values:
        for scope in value.split(","):
            scope = scope.strip()
            if scope and scope not in scopes:
                scopes.append(scope)
    return scopes


def _add_day_range(p: argparse.ArgumentParser) -> None:
    """--from / --to of the revenue report and of its rebuild (the same UTC days)."""
    p.add_argument("--from", dest="start", type=day_arg, required=True, help="first UTC day, YYYY-MM-DD")
    p.add_argument(
        "--to", dest="end", type=day_arg, required=True, help="last UTC day, YYYY-MM-DD (inclusive)"
    )


def _add_invoke_options(p: argparse.ArgumentParser, function: str) -> None:
    """What a command that runs a function through the Lambda Invoke API (invoke_function) needs."""
    p.add_argument("--function", default=function, help=f"function name (default {function})")
    p.add_argument(
        "--lambda-url",
        default=None,
        help="Lambda API endpoint (default: $CREDITS_LAMBDA_URL, else --url for a local stack, else AWS)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"API base URL (default: $CREDITS_URL or {DEFAULT_URL})"
    )
    common.add_argument("--key", default=argparse.SUPPRESS, help="API key (default: $CREDITS_API_KEY)")
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the API's JSON instead of tables",
    )

    parser = argparse.ArgumentParser(
        prog="credits",
        description="Operate the credits ledger over its HTTP API (local `make dev` stack or deployed).",
        epilog="Exit codes: 0 ok, 1 rejected by the API (e.g. 402 insufficient credits), 2 usage error or "
        "API unreachable. `. .local/dev.env` sets CREDITS_URL, CREDITS_API_KEY and STRIPE_WEBHOOK_SECRET "
        "for the local stack.",
        parents=[common],
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("balance", parents=[common], help="an account's balance")
    p.add_argument("customer")

    p = sub.add_parser(
        "subscriptions", parents=[common], help="an account's subscriptions: plan, month, credits left"
    )
    p.add_argument("customer")

    p = sub.add_parser("grants", parents=[common], help="an account's grants")
    p.add_argument("customer")
    p.add_argument("--status", choices=GRANT_STATUSES, default=None, help="only grants in this status")
    p.add_argument("--limit", type=int, default=None, help="page size (<= 100)")
    p.add_argument("--cursor", default=None, help="next_cursor of a previous page")
    p.add_argument("--all", action="store_true", help="follow every page")

    p = sub.add_parser("transactions", parents=[common], help="an account's ledger, newest first")
    p.add_argument("customer")
    p.add_argument("--limit", type=int, default=None, help="entries per page (<= 100)")
    p.add_argument("--cursor", default=None, help="next_cursor of a previous page")
    p.add_argument("--all", action="store_true", help="follow every page")

    p = sub.add_parser("grant", parents=[common], help="grant credits (admin)")
    p.add_argument("customer")
    p.add_argument("amount", type=amount_arg)
    p.add_argument("--id", help="idempotency key: the same id grants once")
    p.add_argument("--category", choices=("paid", "promotional"))
    p.add_argument("--priority", type=int)
    p.add_argument("--effective-at", type=parse_time, help="ISO 8601 or relative (+1d); default now")
    p.add_argument("--expires-at", type=parse_time, help="ISO 8601 or relative (+30d); default never")
    p.add_argument("--reason")

    p = sub.add_parser("void", parents=[common], help="void what remains of a grant (admin)")
    p.add_argument("grant")

    p = sub.add_parser(
        "usage",
        parents=[common],
        help="report usage: one event, or a JSON Lines file of them",
        description="Report usage. One event: `credits usage CUSTOMER METER QUANTITY`. A file: "
        "`credits usage --file events.jsonl` (one JSON object per line with customer, "
        "meter, quantity and optionally id, timestamp, metadata), sent in batches of "
        "100; a line without an id gets one derived from the file name, the line "
        "number and its content, so sending the same file again debits nothing twice.",
    )
    p.add_argument("customer", nargs="?")
    p.add_argument("meter", nargs="?")
    p.add_argument("quantity", nargs="?", type=amount_arg)
    p.add_argument("--id", help="usage event id (idempotency key); default: a new one")
    p.add_argument("--timestamp", type=parse_time, help="when it happened (ISO 8601 or -10m); default now")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--file", type=Path, help="JSON Lines file of usage events ('-' for stdin)")

    p = sub.add_parser(
        "reserve",
        parents=[common],
        help="hold credits for a long-running job (a reservation)",
        description="Reserve AMOUNT credits for CUSTOMER (with --meter, AMOUNT is a quantity of that meter, "
        "priced like usage). The id makes it idempotent; capture or release it when the job ends.",
    )
    p.add_argument("customer")
    p.add_argument("amount", type=amount_arg)
    p.add_argument("--meter", help="reserve AMOUNT units of this meter instead of AMOUNT credits")
    p.add_argument("--id", help="reservation id (idempotency key); default: a new one")
    p.add_argument(
        "--expires-in", type=duration_arg, help="seconds, or 30m / 2h / 7d (60 s to 30 days; default 1h)"
    )
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("capture", parents=[common], help="charge what a reservation's job used")
    p.add_argument("reservation")
    p.add_argument("amount", nargs="?", type=amount_arg, help="credits used (default: all reserved)")
    p.add_argument("--allow-overrun", action="store_true", help="debit more than reserved from available")

    p = sub.add_parser("release", parents=[common], help="release everything a reservation holds")
    p.add_argument("reservation")

    p = sub.add_parser("extend", parents=[common], help="move a reservation's end to now + a duration")
    p.add_argument("reservation")
    p.add_argument("expires_in", type=duration_arg, help="seconds, or 30m / 2h / 7d")

    p = sub.add_parser(
        "reservations", parents=[common], help="an account's open reservations, or one reservation (--id)"
    )
    p.add_argument("customer", nargs="?")
    p.add_argument("--id", help="show this reservation (any status) instead")

    keys = sub.add_parser("keys", help="API keys (admin)").add_subparsers(
        dest="keys_command", metavar="ACTION"
    )
    keys.required = True
    p = keys.add_parser("create", parents=[common], help="create an API key (shown once)")
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="SCOPE",
        help=f"repeat or comma-separate: {', '.join(SCOPES)}",
    )
    p.add_argument(
        "--customer",
        action="append",
        default=None,
        metavar="CUSTOMER",
        help="limit the key to these accounts (repeatable)",
    )
    p.add_argument("--name")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the key (for $(...))")
    p = keys.add_parser("revoke", parents=[common], help="revoke an API key")
    p.add_argument("key_id", metavar="ID")

    p = sub.add_parser(
        "expire",
        parents=[common],
        help="run the expiry job now (invokes ExpiryFunction through the Lambda Invoke API)",
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--now", action="store_true", help="as of now")
    when.add_argument("--time", type=parse_time, help="as of this time: ISO 8601 or relative (+31d)")
    _add_invoke_options(p, "ExpiryFunction")

    p = sub.add_parser(
        "forecast",
        parents=[common],
        help="an account's burn per day (30 days, by meter) and when it runs out",
    )
    p.add_argument("customer")

    report = sub.add_parser("report", help="the money view (admin)").add_subparsers(
        dest="report_command", metavar="REPORT"
    )
    report.required = True
    p = report.add_parser(
        "revenue",
        parents=[common],
        help="deferred revenue, sold, recognized, breakage and refunded per currency (minor units)",
    )
    _add_day_range(p)
    p.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="output (default table)"
    )
    p = report.add_parser(
        "rebuild",
        parents=[common],
        help="recompute the daily revenue aggregate of a range from the ledger and compare "
        "(invokes ReconcileFunction through the Lambda Invoke API)",
    )
    _add_day_range(p)
    p.add_argument(
        "--write", action="store_true", help="replace the days that differ with the ledger's figures"
    )
    _add_invoke_options(p, "ReconcileFunction")

    p = sub.add_parser(
        "simulate",
        parents=[common],
        help="replay recorded usage under another pricing file, per cohort (light / average / heavy)",
    )
    p.add_argument("--pricing", required=True, help="the proposed pricing file (TOML; packs may say prices)")
    p.add_argument(
        "--current",
        default=None,
        help="today's pricing (default $CREDITS_PRICING_FILE or config/pricing.toml)",
    )
    p.add_argument(
        "--from", dest="start", type=day_arg, required=True, help="first UTC day of recorded usage"
    )
    p.add_argument("--to", dest="end", type=day_arg, required=True, help="last UTC day (inclusive)")
    p.add_argument("--light", default="50", help="light cohort: accounts up to this percentile (default 50)")
    p.add_argument("--heavy", default="90", help="heavy cohort: accounts above this percentile (default 90)")
    p.add_argument("--html", default=None, help="also write the result with charts to this HTML file")
    p.add_argument("--function", default="ReconcileFunction", help="function exporting usage")
    p.add_argument("--lambda-url", default=None, help="Lambda API endpoint (default as for expire)")

    stripe_parser = sub.add_parser("stripe", help="simulate Stripe")
    stripe_sub = stripe_parser.add_subparsers(dest="stripe_command", metavar="ACTION")
    stripe_sub.required = True
    p = stripe_sub.add_parser(
        "send",
        parents=[common],
        help="build, sign and POST a webhook event to /v1/webhooks/stripe",
        description="Build a realistic Stripe event (from Stripe's example objects), sign it with the webhook "
        "secret and POST it to /v1/webhooks/stripe, as Stripe would. A purchase prints its payment "
        "intent: pass it to charge.refunded / charge.dispute.* with --payment-intent.",
    )
    from credits_dev.stripe_events import SUPPORTED_TYPES

    p.add_argument(
        "event_type",
        metavar="EVENT_TYPE",
        choices=SUPPORTED_TYPES,
        help=f"one of: {', '.join(SUPPORTED_TYPES)}",
    )
    p.add_argument("--customer", help="Stripe customer (the account), e.g. cus_123")
    p.add_argument("--credits", type=amount_arg, help="metadata.credits: credits the payment buys")
    p.add_argument("--pack", help="metadata.credits_pack: a pack of the pricing file (e.g. starter)")
    p.add_argument("--valid-days", type=int, help="metadata.credits_valid_days")
    p.add_argument("--category", choices=("paid", "promotional"), help="metadata.credits_category")
    p.add_argument("--account", help="metadata.credits_customer: an account id other than the customer")
    p.add_argument(
        "--amount", type=int, default=1000, help="amount in minor units, before tax (default 1000)"
    )
    p.add_argument("--currency", default="eur", help="currency (default eur)")
    p.add_argument("--payment-intent", help="pi_...: the payment (generated for purchases when absent)")
    p.add_argument("--charge", help="ch_...: the charge (default: derived from the payment intent)")
    p.add_argument(
        "--amount-refunded", type=int, help="charge.refunded: total refunded so far (default: all)"
    )
    p.add_argument("--status", choices=("won", "lost"), help="charge.dispute.closed: the outcome")
    p.add_argument("--dispute", help="dp_...: the dispute id (default: derived from the payment intent)")
    p.add_argument("--price", help="invoice.paid: the Stripe price of the line (a pack's stripe_prices)")
    p.add_argument("--quantity", type=int, default=1, help="invoice.paid: line quantity")
    p.add_argument(
        "--subscription",
        help="sub_...: a subscription's events and invoices (default for customer.subscription.*: from the "
        "customer); with invoice.paid, --price is a plan price and --amount its unit amount",
    )
    p.add_argument("--upgrade-from", help="invoice.paid of a subscription: the old plan price (a proration)")
    p.add_argument("--old-amount", type=int, help="--upgrade-from: the old price's unit amount")
    p.add_argument("--trial-days", type=int, help="customer.subscription.created: trialing for N days")
    p.add_argument("--event-id", help="evt_...: reuse an id to simulate a redelivery")
    p.add_argument("--secret", default=None, help="webhook signing secret (default: $STRIPE_WEBHOOK_SECRET)")
    p.add_argument("--dry-run", action="store_true", help="print the event and its signature, send nothing")

    p = stripe_sub.add_parser(
        "calls",
        parents=[common],
        help="what the local Stripe emulator received (make dev: overage meter events, top-up payments)",
    )
    p.add_argument("--path", help="only calls of this API path, e.g. /v1/billing/meter_events")
    p = stripe_sub.add_parser(
        "card",
        parents=[common],
        help="set a customer's default payment method in the local Stripe emulator",
        description="pm_card_visa succeeds, pm_card_chargeDeclined declines (as in Stripe test mode).",
    )
    p.add_argument("customer")
    p.add_argument("payment_method", choices=("pm_card_visa", "pm_card_chargeDeclined"))

    p = sub.add_parser(
        "settings",
        parents=[common],
        help="an account's settings (admin): low-balance threshold, overage, automatic top-up",
        description="Without options: show them. With options: replace them (PUT; what is not given is "
        "reset to its default).",
    )
    p.add_argument("customer")
    p.add_argument("--low-balance-threshold", type=amount_arg)
    p.add_argument(
        "--overage", choices=("reject", "allow"), help="what a debit beyond what is available does"
    )
    p.add_argument("--overage-limit", type=amount_arg, help="overage credits per UTC month (default: no cap)")
    p.add_argument("--topup-threshold", type=amount_arg, help="buy a pack when a debit leaves less than this")
    p.add_argument("--topup-pack", help="the pack to buy (a pack of the pricing file with a Stripe price)")
    p.add_argument("--topup-quantity", type=int, help="packs per top-up (default 1)")
    p.add_argument("--topup-monthly-limit", type=int, help="top-ups per UTC month (default: no cap)")
    return parser


# ---------------------------------------------------------------------------------------------------------
# Commands
Printer = Callable[[str], None]


def _emit(args: argparse.Namespace, out: Printer, payload: Any, human: Callable[[], str]) -> None:
    out(json.dumps(payload, indent=2) if args.json else human())


def cmd_balance(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body = api.call("GET", f"/v1/customers/{_seg(args.customer)}/balance").body
    if args.json:
        out(json.dumps(body, indent=2))
        return EXIT_OK
    # the burn forecast is extra: a stack without the route (or a key that may not read it) still shows
    # the balance
    answer = api.request("GET", f"/v1/customers/{_seg(args.customer)}/forecast")
    forecast = answer.body if answer.status == 200 and isinstance(answer.body, dict) else None
    out(render_balance(body, forecast))
    return EXIT_OK


def cmd_forecast(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body = api.call("GET", f"/v1/customers/{_seg(args.customer)}/forecast").body
    _emit(args, out, body, lambda: render_forecast(body))
    return EXIT_OK


REPORT_COLUMNS = (
    "currency",
    "opening_deferred",
    "sold",
    "recognized",
    "breakage",
    "refunded",
    "closing_deferred",
)


def cmd_report_revenue(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body = api.call("GET", "/v1/reports/revenue", query={"from": args.start, "to": args.end}).body
    lines = body.get("data", []) if isinstance(body, dict) else []
    fmt = "json" if args.json else args.format
    if fmt == "json":
        out(json.dumps(body, indent=2))
    elif fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["from", "to", *REPORT_COLUMNS])
        for line in lines:
            writer.writerow([args.start, args.end, *(line.get(c) for c in REPORT_COLUMNS)])
        out(buffer.getvalue().rstrip("\n"))
    elif not lines:
        out(f"no money moved or deferred from {args.start} to {args.end}")
    else:
        out(f"revenue {args.start} .. {args.end} (minor units of each currency)")
        out(
            render_table(
                REPORT_COLUMNS, [[line.get(c) for c in REPORT_COLUMNS] for line in lines], range(1, 7)
            )
        )
    return EXIT_OK


def cmd_report_rebuild(api: Api, args: argparse.Namespace, out: Printer) -> int:
    event = {"revenue_rebuild": {"from": args.start, "to": args.end, "write": args.write}}
    payload = invoke_function(api, args, event)
    if args.json:
        out(json.dumps(payload, indent=2))
        return EXIT_OK
    out(
        f"revenue rebuild {args.start} .. {args.end}: {payload.get('accounts')} account(s), "
        f"{payload.get('entries')} ledger entries replayed, {payload.get('days_differing')} day(s) differ"
        + (f", {payload.get('days_written')} rewritten" if args.write else "")
    )
    rows = [
        [d["day"], d["currency"], *(f"{d['stored'][f]} -> {d['recomputed'][f]}" for f in FLOW_NAMES)]
        for d in payload.get("differences", [])
    ]
    if rows:
        out(render_table(["day", "currency", *FLOW_NAMES], rows))
        if not args.write:
            out("stored -> recomputed; --write replaces these days with the ledger's figures")
    return EXIT_OK


FLOW_NAMES = ("sold", "recognized", "breakage", "refunded")


def cmd_simulate(api: Api, args: argparse.Namespace, out: Printer) -> int:
    from credits_dev.simulate import SimulationInputError, price_book, records, render_html, render_text
    from credits_ledger.domain.simulate import simulate

    current = Path(args.current or os.environ.get("CREDITS_PRICING_FILE") or "config/pricing.toml")
    try:
        today, proposal = price_book(current), price_book(Path(args.pricing))
    except SimulationInputError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    months = (end.year - start.year) * 12 + end.month - start.month + 1
    export = invoke_function(api, args, {"usage_export": {"from": args.start, "to": args.end}})
    usage = records(export)
    if not usage:
        out(f"no recorded usage from {args.start} to {args.end}: nothing to simulate")
        return EXIT_OK
    try:
        result = simulate(usage, months, today, proposal, Decimal(args.light), Decimal(args.heavy))
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    title = f"{args.pricing} vs {current}, usage {args.start} .. {args.end} ({months} month(s))"
    if args.html:
        Path(args.html).write_text(render_html(result, title), encoding="utf-8")
    if args.json:
        out(json.dumps({k: [_cohort_json(r) for r in v] for k, v in result.items()}, indent=2, default=str))
        return EXIT_OK
    out(title)
    for headers, rows in render_text(result, months):
        out(render_table(headers, rows, right=[1, 3]))
    if args.html:
        out(f"wrote {args.html}")
    return EXIT_OK


def _cohort_json(row: Any) -> dict[str, Any]:
    return {
        "cohort": row.cohort,
        "accounts": row.accounts,
        "credits_per_month": str(row.credits_per_month),
        "purchase": {
            c: {"pack": p.pack, "count": p.count, "cost": str(p.cost)} for c, p in row.purchase.items()
        },
        "revenue_per_month": {c: str(v) for c, v in row.revenue_per_month.items()},
    }


def render_subscriptions(subscriptions: list[dict[str, Any]]) -> str:
    if not subscriptions:
        return "no subscriptions"
    rows = [
        (
            s["id"],
            s["plan"] or "-",
            s["status"] + (" (cancels at period end)" if s["cancel_at_period_end"] else ""),
            s["quantity"],
            f"{short_time(s['current_period']['start'])} - {short_time(s['current_period']['end'])}",
            s["credits_this_month"],
            s["remaining_this_month"],
        )
        for s in subscriptions
    ]
    headers = ("SUBSCRIPTION", "PLAN", "STATUS", "QTY", "CURRENT PERIOD", "THIS MONTH", "LEFT")
    return render_table(headers, rows, right=(3, 5, 6))


def cmd_subscriptions(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body = api.call("GET", f"/v1/customers/{_seg(args.customer)}/subscriptions").body
    _emit(args, out, body, lambda: render_subscriptions(body["data"]))
    return EXIT_OK


def _pages(api: Api, path: str, query: dict[str, Any], follow: bool) -> Iterator[dict[str, Any]]:
    while True:
        body = api.call("GET", path, query=query).body
        yield body
        if not follow or not body.get("has_more") or not body.get("next_cursor"):
            return
        query = {**query, "cursor": body["next_cursor"]}


def _list(
    api: Api,
    args: argparse.Namespace,
    out: Printer,
    path: str,
    query: dict[str, Any],
    render: Callable[[list[dict[str, Any]]], str],
) -> int:
    pages = list(_pages(api, path, query, args.all))
    data = [item for page in pages for item in page.get("data") or []]
    last = pages[-1]
    if args.json:
        out(
            json.dumps(
                {"data": data, "has_more": last.get("has_more"), "next_cursor": last.get("next_cursor")},
                indent=2,
            )
        )
        return EXIT_OK
    out(render(data))
    if last.get("has_more") and last.get("next_cursor"):
        out(f"(more: --cursor {last['next_cursor']} or --all)")
    return EXIT_OK


def cmd_grants(api: Api, args: argparse.Namespace, out: Printer) -> int:
    query = {"status": args.status, "limit": args.limit, "cursor": args.cursor}
    return _list(api, args, out, f"/v1/customers/{_seg(args.customer)}/grants", query, render_grants)


def cmd_transactions(api: Api, args: argparse.Namespace, out: Printer) -> int:
    query = {"limit": args.limit, "cursor": args.cursor}
    return _list(
        api, args, out, f"/v1/customers/{_seg(args.customer)}/transactions", query, render_transactions
    )


def cmd_grant(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body: dict[str, Any] = {"amount": args.amount}
    for field_name in ("id", "category", "priority", "effective_at", "expires_at", "reason"):
        value = getattr(args, field_name)
        if value is not None:
            body[field_name] = value
    grant = api.call("POST", f"/v1/customers/{_seg(args.customer)}/grants", body).body
    _emit(args, out, grant, lambda: render_grant(grant))
    return EXIT_OK


def cmd_void(api: Api, args: argparse.Namespace, out: Printer) -> int:
    grant = api.call("POST", f"/v1/grants/{_seg(args.grant)}/void", {}).body
    _emit(args, out, grant, lambda: render_grant(grant))
    return EXIT_OK


def _idempotency_key(given: str | None) -> str:
    """``--id``, else a fresh key: the same command run again without ``--id`` is a new request."""
    import uuid

    return given or f"cli_{uuid.uuid4().hex}"


def _add_metadata(body: dict[str, Any], pairs: list[str]) -> None:
    """``--metadata KEY=VALUE`` options as ``body["metadata"]``; no key at all when none is given."""
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata {pair!r}: use KEY=VALUE", EXIT_USAGE)
        metadata[key] = value
    if metadata:
        body["metadata"] = metadata


def cmd_usage(api: Api, args: argparse.Namespace, out: Printer) -> int:
    if args.file is not None:
        if args.customer or args.meter or args.quantity or args.id:
            raise CliError("give either CUSTOMER METER QUANTITY or --file, not both", EXIT_USAGE)
        return usage_file(api, args, out)
    if not (args.customer and args.meter and args.quantity):
        raise CliError(
            "usage needs CUSTOMER METER QUANTITY (e.g. `credits usage cus_123 api_call 3`) or --file",
            EXIT_USAGE,
        )
    event: dict[str, Any] = {
        "id": _idempotency_key(args.id),
        "customer": args.customer,
        "meter": args.meter,
        "quantity": args.quantity,
    }
    if args.timestamp:
        event["timestamp"] = args.timestamp
    _add_metadata(event, args.metadata)
    response = api.call("POST", "/v1/usage", event)
    body = response.body
    _emit(
        args,
        out,
        body,
        lambda: (
            f"{'replayed' if response.replayed else 'debited'} {body.get('credits')} credits from "
            f"{body.get('customer')} ({body.get('quantity')} {body.get('meter')}); available "
            f"{body.get('balance')}; id {body.get('id')}"
            + (f"; overage {body['overage']}" if body.get("overage") else "")
        ),
    )
    return EXIT_OK


def parse_usage_lines(lines: Iterable[str], source: str) -> list[dict[str, Any]]:
    """Usage events of JSON Lines; an event without ``id`` gets a stable one (source, line number, content)."""
    events = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            event = json.loads(text)
        except ValueError as exc:
            raise CliError(f"{source}:{number}: not JSON ({exc})", EXIT_USAGE) from exc
        if not isinstance(event, dict):
            raise CliError(f"{source}:{number}: each line must be a JSON object", EXIT_USAGE)
        if "id" not in event:
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
            event["id"] = f"{Path(source).stem}-{number}-{digest}"
        events.append(event)
    return events


def read_usage_file(path: Path) -> list[dict[str, Any]]:
    if str(path) == "-":
        return parse_usage_lines(sys.stdin, "stdin")
    if not path.is_file():
        raise CliError(f"{path}: no such file", EXIT_USAGE)
    with open(path, encoding="utf-8") as handle:
        return parse_usage_lines(handle, str(path))


def usage_file(api: Api, args: argparse.Namespace, out: Printer) -> int:
    events = read_usage_file(args.file)
    progress = Progress(len(events))
    counts = {"debited": 0, "replayed": 0, "rejected": 0}
    results: list[dict[str, Any]] = []
    for start in range(0, len(events), BATCH_SIZE):
        batch = events[start : start + BATCH_SIZE]
        body = api.call("POST", "/v1/usage/batch", {"events": batch}).body
        for result in body.get("results") or []:
            status = result.get("status", "rejected")
            counts[status] = counts.get(status, 0) + 1
            results.append(result)
        progress.update(start + len(batch), f"rejected {counts['rejected']}")
    progress.close()
    if args.json:
        out(json.dumps({**counts, "results": results}, indent=2))
    else:
        for result in results:
            if result.get("status") == "rejected":
                error = result.get("error") or {}
                out(f"rejected {result.get('id')}: {error.get('code')}: {error.get('message')}")
        out(
            f"{len(events)} events: {counts['debited']} debited, {counts['replayed']} replayed, "
            f"{counts['rejected']} rejected"
        )
    return EXIT_REJECTED if counts["rejected"] else EXIT_OK


def render_reservations(reservations: list[dict[str, Any]]) -> str:
    if not reservations:
        return "no open reservations"
    rows = [
        [r.get("id"), r.get("status"), r.get("credits"), r.get("held"), short_time(r.get("expires_at"))]
        for r in reservations
    ]
    return render_table(["ID", "STATUS", "CREDITS", "HELD", "EXPIRES"], rows, right=(2, 3))


def render_reservation(r: dict[str, Any]) -> str:
    pairs: list[tuple[str, Any]] = [
        ("id", r.get("id")),
        ("customer", r.get("customer")),
        ("status", r.get("status")),
        ("credits", r.get("credits")),
        ("held", r.get("held")),
        ("expires at", short_time(r.get("expires_at"))),
    ]
    if r.get("captured") is not None:
        pairs += [("captured", r.get("captured")), ("released", r.get("released"))]
    pairs.append(("grants", ", ".join(f"{a['grant_id']}:{a['amount']}" for a in r.get("allocations") or [])))
    return render_pairs(pairs)


def cmd_reserve(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body: dict[str, Any] = {"id": _idempotency_key(args.id), "customer": args.customer}
    if args.meter:
        body.update(meter=args.meter, quantity=args.amount)
    else:
        body["credits"] = args.amount
    if args.expires_in is not None:
        body["expires_in"] = args.expires_in
    _add_metadata(body, args.metadata)
    response = api.call("POST", "/v1/reservations", body)
    answer = response.body
    _emit(
        args,
        out,
        answer,
        lambda: (
            f"{'replayed' if response.replayed else 'reserved'} {answer.get('credits')} credits of "
            f"{answer.get('customer')}; id {answer.get('id')}; expires {short_time(answer.get('expires_at'))}"
        ),
    )
    return EXIT_OK


def cmd_capture(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body: dict[str, Any] = {}
    if args.amount is not None:
        body["credits"] = args.amount
    if args.allow_overrun:
        body["allow_overrun"] = True
    response = api.call("POST", f"/v1/reservations/{_seg(args.reservation)}/capture", body)
    answer = response.body
    again = " (captured before)" if response.replayed else ""
    _emit(
        args,
        out,
        answer,
        lambda: (
            f"captured {answer.get('captured')} credits of {answer.get('id')}, released "
            f"{answer.get('released')}; available {answer.get('balance')}{again}"
        ),
    )
    return EXIT_OK


def cmd_release(api: Api, args: argparse.Namespace, out: Printer) -> int:
    answer = api.call("POST", f"/v1/reservations/{_seg(args.reservation)}/release", {}).body
    _emit(
        args,
        out,
        answer,
        lambda: f"{answer.get('id')} {answer.get('status')}: {answer.get('released')} credits released",
    )
    return EXIT_OK


def cmd_extend(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body = {"expires_in": args.expires_in}
    answer = api.call("POST", f"/v1/reservations/{_seg(args.reservation)}/extend", body).body
    _emit(args, out, answer, lambda: render_reservation(answer))
    return EXIT_OK


def cmd_reservations(api: Api, args: argparse.Namespace, out: Printer) -> int:
    if args.id:
        answer = api.call("GET", f"/v1/reservations/{_seg(args.id)}").body
        _emit(args, out, answer, lambda: render_reservation(answer))
        return EXIT_OK
    if not args.customer:
        raise CliError("reservations needs CUSTOMER (or --id RESERVATION)", EXIT_USAGE)
    body = api.call("GET", f"/v1/customers/{_seg(args.customer)}/reservations").body
    _emit(args, out, body, lambda: render_reservations(body.get("data") or []))
    return EXIT_OK


def cmd_keys_create(api: Api, args: argparse.Namespace, out: Printer) -> int:
    scopes = scopes_arg(args.scope)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise CliError(f"unknown scope {', '.join(unknown)}: use {', '.join(SCOPES)}", EXIT_USAGE)
    body: dict[str, Any] = {"scopes": scopes}
    if args.customer:
        body["customers"] = args.customer
    if args.name:
        body["name"] = args.name
    created = api.call("POST", "/v1/api-keys", body).body
    if args.quiet:
        out(created["key"])
    elif args.json:
        out(json.dumps(created, indent=2))
    else:
        out(
            render_pairs(
                [
                    ("id", created.get("id")),
                    ("key", created.get("key")),
                    ("scopes", ", ".join(created.get("scopes") or [])),
                    ("customers", ", ".join(created.get("customers") or []) or "all"),
                    ("name", created.get("name") or ""),
                ]
            )
        )
        out("Save the key now: it is shown only once.")
    return EXIT_OK


def cmd_keys_revoke(api: Api, args: argparse.Namespace, out: Printer) -> int:
    api.call("DELETE", f"/v1/api-keys/{_seg(args.key_id)}")
    _emit(args, out, {"id": args.key_id, "revoked": True}, lambda: f"revoked API key {args.key_id}")
    return EXIT_OK


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0") or host.endswith(".localhost")


def expire_event(when: str) -> dict[str, Any]:
    import uuid

    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "123456789012",
        "time": when,
        "region": os.environ.get("AWS_REGION", "us-east-1"),
        "resources": ["arn:aws:scheduler:us-east-1:123456789012:schedule/default/credits-expiry-manual"],
        "detail": {},
    }


def cmd_expire(api: Api, args: argparse.Namespace, out: Printer) -> int:
    when = parse_time("now") if args.now else args.time
    payload = invoke_function(api, args, expire_event(when))
    if args.json:
        out(json.dumps(payload, indent=2))
    else:
        out(f"expiry run as of {when}:")
        if isinstance(payload, dict):
            out(
                render_pairs(
                    [(str(k), json.dumps(v) if isinstance(v, dict | list) else v) for k, v in payload.items()]
                )
                if payload
                else "(no summary)"
            )
        else:
            out(json.dumps(payload))
    return EXIT_OK


def invoke_function(api: Api, args: argparse.Namespace, event: dict[str, Any]) -> Any:
    """Run ``args.function`` with ``event`` through the Lambda Invoke API (the local stack answers it on
    --url; AWS otherwise) and return what it returned."""
    endpoint = (
        args.lambda_url
        or os.environ.get("CREDITS_LAMBDA_URL")
        or (api.url if _is_loopback(api.url) else None)
    )
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    kwargs: dict[str, Any] = {
        "region_name": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "config": Config(read_timeout=900, connect_timeout=5, retries={"max_attempts": 0}),
    }
    if endpoint:
        kwargs["endpoint_url"] = endpoint
        if _is_loopback(endpoint):
            kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    client = boto3.client("lambda", **kwargs)
    try:
        answer = client.invoke(FunctionName=args.function, Payload=json.dumps(event).encode("utf-8"))
    except botocore.exceptions.EndpointConnectionError as exc:
        raise CliError(
            f"cannot reach the Lambda API at {endpoint} ({exc})",
            EXIT_USAGE,
            "start the local stack with `make dev`, or pass --lambda-url",
        ) from exc
    except botocore.exceptions.ClientError as exc:
        raise CliError(
            f"Lambda invoke of {args.function} failed: {exc}",
            EXIT_REJECTED,
            "check --function (the logical id locally, the function name in AWS)",
        ) from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise CliError(
            "no AWS credentials to invoke the deployed function",
            EXIT_USAGE,
            "configure AWS credentials, or pass --lambda-url for a local stack",
        ) from exc
    payload = json.loads(answer["Payload"].read() or b"null")
    if answer.get("FunctionError"):
        raise CliError(
            f"{args.function} failed: {payload.get('errorType')}: {payload.get('errorMessage')}",
            EXIT_REJECTED,
            "see the stack's log (the `make dev` console)",
            payload,
        )
    return payload


def cmd_stripe_send(api: Api, args: argparse.Namespace, out: Printer) -> int:
    from credits_dev.stripe_events import EventBuildError, EventOptions, body, build_event, signature_header

    secret = args.secret or os.environ.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        raise CliError(
            "no webhook secret: set STRIPE_WEBHOOK_SECRET (printed by `make dev`; "
            "`. .local/dev.env` sets it) or pass --secret",
            EXIT_USAGE,
        )
    if args.event_type.startswith("charge.") and not (args.payment_intent or args.charge):
        raise CliError(
            f"{args.event_type} needs --payment-intent pi_... (printed when you sent the purchase)",
            EXIT_USAGE,
        )
    options = EventOptions(
        customer=args.customer,
        credits=args.credits,
        pack=args.pack,
        valid_days=args.valid_days,
        category=args.category,
        account=args.account,
        amount=args.amount,
        currency=args.currency.lower(),
        payment_intent=args.payment_intent,
        charge=args.charge,
        amount_refunded=args.amount_refunded,
        status=args.status,
        dispute=args.dispute,
        price=args.price,
        quantity=args.quantity,
        event_id=args.event_id,
        subscription=args.subscription,
        upgrade_from=args.upgrade_from,
        old_amount=args.old_amount,
        trial_days=args.trial_days,
    )
    try:
        event = build_event(args.event_type, options)
    except EventBuildError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    payload = body(event)
    signature = signature_header(payload, secret)
    intent = options.payment_intent  # given, or generated (and related to the charge / dispute ids)
    if args.dry_run:
        out(f"Stripe-Signature: {signature}")
        out(payload)
        return EXIT_OK
    response = api.request(
        "POST",
        "/v1/webhooks/stripe",
        raw_body=payload.encode("utf-8"),
        auth=False,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        },
    )
    if response.status >= 400:
        raise api_error(response)
    if args.json:
        out(
            json.dumps(
                {
                    "event": event["id"],
                    "type": event["type"],
                    "payment_intent": intent,
                    "status": response.status,
                    "response": response.body,
                },
                indent=2,
            )
        )
    else:
        status = response.body.get("status") if isinstance(response.body, dict) else None
        subject = f"payment intent {intent}"
        if args.event_type.startswith("customer.subscription.") or args.subscription:
            obj = event["data"]["object"]
            subject = (
                f"subscription {obj['id'] if obj.get('object') == 'subscription' else args.subscription}"
            )
        out(
            f"sent {event['type']} {event['id']} ({subject}): HTTP {response.status}"
            + (f", {status}" if status else "")
        )
    return EXIT_OK


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _settings_body(args: argparse.Namespace) -> dict[str, Any] | None:
    given = [
        args.low_balance_threshold,
        args.overage,
        args.overage_limit,
        args.topup_threshold,
        args.topup_pack,
        args.topup_quantity,
        args.topup_monthly_limit,
    ]
    if all(value is None for value in given):
        return None
    body: dict[str, Any] = {}
    if args.low_balance_threshold is not None:
        body["low_balance_threshold"] = args.low_balance_threshold
    if args.overage is not None or args.overage_limit is not None:
        body["overage"] = {"policy": args.overage or "allow"}
        if args.overage_limit is not None:
            body["overage"]["limit"] = args.overage_limit
    if args.topup_threshold is not None or args.topup_pack is not None:
        if args.topup_threshold is None or args.topup_pack is None:
            raise CliError("an automatic top-up needs --topup-threshold and --topup-pack", EXIT_USAGE)
        topup: dict[str, Any] = {"enabled": True, "threshold": args.topup_threshold, "pack": args.topup_pack}
        if args.topup_quantity is not None:
            topup["quantity"] = args.topup_quantity
        if args.topup_monthly_limit is not None:
            topup["monthly_limit"] = args.topup_monthly_limit
        body["auto_topup"] = topup
    return body


def render_settings(settings: dict[str, Any]) -> str:
    overage = settings.get("overage") or {}
    topup = settings.get("auto_topup")
    rows = [
        ("customer", settings.get("customer")),
        ("low balance threshold", settings.get("effective_low_balance_threshold")),
        (
            "overage",
            f"{overage.get('policy')}"
            + (f", at most {overage['limit']} a month" if overage.get("limit") else ""),
        ),
    ]
    if topup:
        limit = f", at most {topup['monthly_limit']} a month" if topup.get("monthly_limit") else ""
        state = "" if topup.get("enabled") else " (disabled)"
        rows.append(
            ("auto top-up", f"{topup['quantity']} x {topup['pack']} below {topup['threshold']}{limit}{state}")
        )
    else:
        rows.append(("auto top-up", "off"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def cmd_settings(api: Api, args: argparse.Namespace, out: Printer) -> int:
    body = _settings_body(args)
    path = f"/v1/customers/{_seg(args.customer)}/settings"
    settings = api.call("PUT", path, body).body if body is not None else api.call("GET", path).body
    _emit(args, out, settings, lambda: render_settings(settings))
    return EXIT_OK


def cmd_stripe_calls(api: Api, args: argparse.Namespace, out: Printer) -> int:
    response = api.request("GET", "/_stripe/_emulator/requests", query={"path": args.path}, auth=False)
    if response.status != 200:
        raise CliError(
            f"no local Stripe emulator at {api.url} (HTTP {response.status})",
            EXIT_USAGE,
            "`make dev` serves it unless STRIPE_API_BASE is set",
        )
    calls = list(response.body["data"])
    if args.json:
        out(json.dumps(calls, indent=2))
        return EXIT_OK
    lines = []
    for call in calls:
        params = call.get("params") or {}
        what = ""
        if call["path"] == "/v1/billing/meter_events":
            payload = params.get("payload") or {}
            what = f"{payload.get('stripe_customer_id')} value {payload.get('value')} identifier {params.get('identifier')}"
        elif call["path"] == "/v1/payment_intents":
            what = f"{params.get('customer')} {params.get('amount')} {params.get('currency')} {params.get('payment_method')}"
        flags = " replayed" if call.get("replayed") else (" duplicate" if call.get("duplicate") else "")
        lines.append(f"{call['method']} {call['path']} -> {call['status']}{flags}  {what}".rstrip())
    out("\n".join(lines) if lines else "no calls")
    return EXIT_OK


def cmd_stripe_card(api: Api, args: argparse.Namespace, out: Printer) -> int:
    response = api.request(
        "POST",
        f"/_stripe/v1/customers/{_seg(args.customer)}",
        raw_body=urllib.parse.urlencode(
            {"invoice_settings[default_payment_method]": args.payment_method}
        ).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer rk_test_cli"},
        auth=False,
    )
    if response.status != 200:
        raise CliError(f"the local Stripe emulator answered HTTP {response.status}", EXIT_REJECTED)
    out(f"{args.customer}: default payment method {args.payment_method}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Api, argparse.Namespace, Printer], int]] = {
    "balance": cmd_balance,
    "subscriptions": cmd_subscriptions,
    "grants": cmd_grants,
    "transactions": cmd_transactions,
    "grant": cmd_grant,
    "void": cmd_void,
    "usage": cmd_usage,
    "reserve": cmd_reserve,
    "capture": cmd_capture,
    "release": cmd_release,
    "extend": cmd_extend,
    "reservations": cmd_reservations,
    "keys create": cmd_keys_create,
    "keys revoke": cmd_keys_revoke,
    "expire": cmd_expire,
    "forecast": cmd_forecast,
    "report revenue": cmd_report_revenue,
    "report rebuild": cmd_report_rebuild,
    "simulate": cmd_simulate,
    "stripe send": cmd_stripe_send,
    "stripe calls": cmd_stripe_calls,
    "stripe card": cmd_stripe_card,
    "settings": cmd_settings,
}


def command_name(args: argparse.Namespace) -> str:
    if args.command == "keys":
        return f"keys {args.keys_command}"
    if args.command == "stripe":
        return f"stripe {args.stripe_command}"
    if args.command == "report":
        return f"report {args.report_command}"
    return str(args.command)


def main(argv: Sequence[str] | None = None, out: Printer | None = None, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    printer = out or (lambda text: print(text, flush=True))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on errors, 0 for --help
        return int(exc.code or 0)
    args.url = getattr(args, "url", None) or os.environ.get("CREDITS_URL") or DEFAULT_URL
    args.key = getattr(args, "key", None) or os.environ.get("CREDITS_API_KEY")
    args.json = getattr(args, "json", False)
    api = Api(args.url, args.key, timeout=args.timeout)
    try:
        return COMMANDS[command_name(args)](api, args, printer)
    except CliError as exc:
        print(f"error: {exc.message}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except BrokenPipeError:  # `credits ... | head`: the reader is gone, nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
