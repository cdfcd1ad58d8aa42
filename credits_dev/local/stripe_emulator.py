"""A local emulator of the Stripe API calls this service makes, served by ``make dev`` under ``/_stripe``
(point the functions at it with ``STRIPE_API_BASE=http://127.0.0.1:3000/_stripe``; ``make dev`` does so
unless ``STRIPE_API_BASE`` is set).

It answers, with the shapes of Stripe's own fixtures (credits_dev/fixtures):

=========================================  =============================================================
``POST /v1/billing/meter_events``          records the event; a repeated ``identifier`` is dropped, as
                                           Stripe does for 24 h (kept in ``requests`` with ``duplicate``)
``POST /v1/payment_intents``               confirm + off_session: ``pm_card_visa`` succeeds (then a signed
                                           ``payment_intent.succeeded`` webhook), ``pm_card_chargeDeclined``
                                           declines (402 card_error, then ``payment_intent.payment_failed``)
``GET /v1/customers/{id}``                 ``invoice_settings.default_payment_method``: ``pm_card_visa``
                                           unless set with ``POST /v1/customers/{id}``
                                           (``invoice_settings[default_payment_method]``)
``GET /v1/prices/{id}``                    ``unit_amount`` 1000 (or as set by ``set_price``), currency from
                                           the id (``price_EUR_starter`` -> eur; default eur)
``GET /v1/invoices/{id}/lines``            lines stored with ``set_invoice_lines`` (none by default)
``GET /_emulator/requests``                everything received, in order (``?path=`` filters), for the CLI
                                           and tests; ``DELETE /_emulator/requests`` clears it
=========================================  =============================================================

Like Stripe: every call needs ``Authorization: Bearer <key>``; a POST's ``Idempotency-Key`` replays the first
answer for the same parameters and is a 400 ``idempotency_error`` for other ones. Faults can be injected
(``inject``): an HTTP status for the next calls of a path, or "commit then time out" (the call takes effect,
the answer never arrives), for the failure-injection tests.
"""

from __future__ import annotations

import copy
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SUCCEEDING_METHOD = "pm_card_visa"
DECLINING_METHOD = "pm_card_chargeDeclined"
DEFAULT_UNIT_AMOUNT = 1000

Json = dict[str, Any]
Reply = tuple[int, Json]


def _fixture(name: str) -> Json:
    from credits_dev.stripe_events import fixture

    return fixture(name)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def parse_form(body: str) -> Json:
    """Stripe's form encoding (``a[b][c]=v``, ``a[0]=v``) into nested dicts (list indexes stay keys)."""
    result: Json = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        parts = raw_key.replace("]", "").split("[")
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return result


def _error(status: int, kind: str, message: str, **extra: Any) -> Reply:
    return status, {"error": {"type": kind, "message": message, **extra}}


@dataclass
class Fault:
    status: int | None  # an HTTP status to answer with, or None: commit, then never answer (a timeout)
    remaining: int
    delay: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    params: Json
    idempotency_key: str | None
    status: int
    replayed: bool = False
    duplicate: bool = False
    at: float = field(default_factory=time.time)

    def view(self) -> Json:
        return {
            "method": self.method,
            "path": self.path,
            "params": self.params,
            "idempotency_key": self.idempotency_key,
            "status": self.status,
            "replayed": self.replayed,
            "duplicate": self.duplicate,
            "at": self.at,
        }


class NoAnswer(Exception):
    """An injected "commit then time out": the caller drops the connection without an answer."""

    def __init__(self, delay: float) -> None:
        super().__init__("injected timeout")
        self.delay = delay


class StripeEmulator:
    """The emulator's state and routing; ``webhook`` receives each event Stripe would send (signing and
    delivering it is the host's job: the local stack posts it to its own webhook route)."""

    def __init__(self, webhook: Callable[[Json], None] | None = None) -> None:
        self.webhook = webhook
        self.requests: list[Received] = []
        self.meter_events: list[Json] = []  # accepted ones (duplicates dropped)
        self.payment_intents: dict[str, Json] = {}
        self.customers: dict[str, Json] = {}
        self.prices: dict[str, tuple[int, str]] = {}
        self.invoice_lines: dict[str, list[Json]] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.webhook_failures: list[str] = []
        self._identifiers: dict[str, float] = {}
        self._idempotent: dict[str, tuple[str, str, Json, Reply]] = {}
        self._lock = threading.RLock()
        self._senders: list[threading.Thread] = []

    # ---- configuration (tests, CLI) ----------------------------------------------------------------------
    def set_price(self, price_id: str, unit_amount: int, currency: str) -> None:
        self.prices[price_id] = (unit_amount, currency)

    def set_invoice_lines(self, invoice_id: str, lines: list[Json]) -> None:
        self.invoice_lines[invoice_id] = lines

    def inject(self, path: str, status: int | None, times: int = 1, delay: float = 0.0) -> None:
        """The next ``times`` calls of ``path`` answer ``status`` (None: take effect, then no answer)."""
        self.faults.setdefault(path, []).append(Fault(status, times, delay))

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every webhook sent so far was delivered (tests, the CLI)."""
        with self._lock:
            senders, self._senders = self._senders, []
        for sender in senders:
            sender.join(timeout)

    def _send(self, events: list[Json]) -> None:
        for event in events:
            webhook = self.webhook
            if webhook is not None:
                try:
                    webhook(event)
                except Exception as exc:  # the stack answered 5xx or is down: Stripe would retry later
                    self.webhook_failures.append(f"{event['id']}: {exc}")

    def received(self, path: str | None = None) -> list[Json]:
        with self._lock:
            return [r.view() for r in self.requests if path is None or r.path == path]

    # ---- the API -------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str], body: str) -> Reply:
        """Answer one call (``path`` without the ``/_stripe`` prefix); raises NoAnswer for an injected timeout."""
        headers = {k.lower(): v for k, v in headers.items()}
        if path.startswith("/_emulator/requests"):
            if method == "DELETE":
                with self._lock:
                    self.requests.clear()
                return 200, {"deleted": True}
            wanted = dict(parse_qsl(path.partition("?")[2])).get("path")
            return 200, {"object": "list", "data": self.received(wanted)}
        params = parse_form(body) if method == "POST" else dict(parse_qsl(path.partition("?")[2]))
        path = path.partition("?")[0]
        if not headers.get("authorization", "").startswith("Bearer ") or len(headers["authorization"]) < 12:
            return _error(401, "invalid_request_error", "You did not provide an API key.")
        key = headers.get("idempotency-key")
        with self._lock:
            fault = self._fault(path)
            if fault is not None and fault.status is not None:
                reply = _error(
                    fault.status, "api_error" if fault.status >= 500 else "rate_limit_error", "injected"
                )
                self.requests.append(Received(method, path, params, key, fault.status))
                return reply
            if key and method == "POST" and key in self._idempotent:
                first_method, first_path, first_params, reply = self._idempotent[key]
                if (first_method, first_path, first_params) != (method, path, params):
                    reply = _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were "
                        "first used with.",
                    )
                self.requests.append(Received(method, path, params, key, reply[0], replayed=True))
                if fault is not None:
                    raise NoAnswer(fault.delay)
                return reply
            reply, events, duplicate = self._route(method, path, params)
            if key and method == "POST" and reply[0] != 400:
                self._idempotent[key] = (method, path, params, reply)
            self.requests.append(Received(method, path, params, key, reply[0], duplicate=duplicate))
        if events and self.webhook is not None:
            # Stripe sends webhooks after it answered, not while the caller waits
            sender = threading.Thread(target=self._send, args=(events,), daemon=True)
            with self._lock:
                self._senders.append(sender)
            sender.start()
        if fault is not None:
            raise NoAnswer(fault.delay)
        return reply

    def _fault(self, path: str) -> Fault | None:
        queue = self.faults.get(path) or []
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.pop(0)
        return fault

    def _route(self, method: str, path: str, params: Json) -> tuple[Reply, list[Json], bool]:
        parts = [p for p in path.split("/") if p]
        if method == "POST" and parts == ["v1", "billing", "meter_events"]:
            return self._meter_event(params)
        if method == "POST" and parts == ["v1", "payment_intents"]:
            reply, events = self._payment_intent(params)
            return reply, events, False
        if len(parts) == 3 and parts[:2] == ["v1", "customers"]:
            return self._customer(method, parts[2], params), [], False
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "prices"]:
            return (200, self._price(parts[2])), [], False
        if method == "GET" and len(parts) == 4 and parts[:2] == ["v1", "invoices"] and parts[3] == "lines":
            lines = self.invoice_lines.get(parts[2], [])
            url = f"/v1/invoices/{parts[2]}/lines"
            return (200, {"object": "list", "data": lines, "has_more": False, "url": url}), [], False
        return (
            _error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."),
            [],
            False,
        )

    def _meter_event(self, params: Json) -> tuple[Reply, list[Json], bool]:
        payload = params.get("payload") or {}
        for name, value in (("event_name", params.get("event_name")), ("payload", payload)):
            if not value:
                return (
                    _error(400, "invalid_request_error", f"Missing required param: {name}.", param=name),
                    [],
                    False,
                )
        if "stripe_customer_id" not in payload or "value" not in payload:
            return (
                _error(400, "invalid_request_error", "payload needs stripe_customer_id and value."),
                [],
                False,
            )
        identifier = params.get("identifier") or _new_id("mev")
        now = time.time()
        event = _fixture("billing.meter_event")
        event.update(
            event_name=params["event_name"],
            identifier=identifier,
            payload={"stripe_customer_id": payload["stripe_customer_id"], "value": payload["value"]},
            timestamp=int(params.get("timestamp") or now),
            created=int(now),
        )
        seen = self._identifiers.get(identifier)
        duplicate = seen is not None and now - seen < 86_400
        if not duplicate:
            self._identifiers[identifier] = now
            self.meter_events.append(event)
        return (200, event), [], duplicate

    def _customer(self, method: str, customer_id: str, params: Json) -> Reply:
        customer = self.customers.get(customer_id)
        if customer is None:
            customer = _fixture("customer")
            customer.update(id=customer_id, created=int(time.time()), discount=None)
            customer["invoice_settings"]["default_payment_method"] = SUCCEEDING_METHOD
            self.customers[customer_id] = customer
        if method == "POST":
            settings = params.get("invoice_settings") or {}
            if "default_payment_method" in settings:
                customer["invoice_settings"]["default_payment_method"] = (
                    settings["default_payment_method"] or None
                )
            if "metadata" in params:
                customer["metadata"].update(params["metadata"])
        return 200, copy.deepcopy(customer)

    def _price(self, price_id: str) -> Json:
        amount, currency = self.prices.get(price_id, (DEFAULT_UNIT_AMOUNT, ""))
        if not currency:
            lowered = price_id.lower()
            currency = next((c for c in ("usd", "gbp", "eur") if f"_{c}_" in f"_{lowered}_"), "eur")
        price = _fixture("price")
        price.update(
            id=price_id,
            currency=currency,
            unit_amount=amount,
            unit_amount_decimal=str(amount),
            type="one_time",
            recurring=None,
            transform_quantity=None,
            created=int(time.time()),
        )
        return price

    def _payment_intent(self, params: Json) -> tuple[Reply, list[Json]]:
        for name in ("amount", "currency"):
            if not params.get(name):
                return _error(
                    400, "invalid_request_error", f"Missing required param: {name}.", param=name
                ), []
        if not str(params["amount"]).isdigit() or int(params["amount"]) < 1:
            return _error(400, "invalid_request_error", "Invalid integer: amount", param="amount"), []
        method = params.get("payment_method")
        if method not in (SUCCEEDING_METHOD, DECLINING_METHOD):
            return _error(
                400, "invalid_request_error", f"No such PaymentMethod: '{method}'", param="payment_method"
            ), []
        now = int(time.time())
        intent = _fixture("payment_intent")
        intent.update(
            id=_new_id("pi"),
            amount=int(params["amount"]),
            currency=params["currency"],
            customer=params.get("customer"),
            payment_method=method,
            metadata=dict(params.get("metadata") or {}),
            created=now,
            canceled_at=None,
            client_secret=None,
            last_payment_error=None,
            next_action=None,
            processing=None,
            transfer_data=None,
            payment_method_configuration_details=None,
            automatic_payment_methods=None,
        )
        if method == SUCCEEDING_METHOD:
            intent.update(status="succeeded", amount_received=intent["amount"], latest_charge=_new_id("ch"))
            self.payment_intents[intent["id"]] = intent
            return (200, intent), [self._event("payment_intent.succeeded", intent)]
        error: Json = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
            "payment_method": {"id": method, "object": "payment_method"},
        }
        intent.update(status="requires_payment_method", last_payment_error=error, latest_charge=_new_id("ch"))
        self.payment_intents[intent["id"]] = intent
        reply = _error(402, "card_error", str(error["message"]), code="card_declined",
                       decline_code="generic_decline", payment_intent=intent)  # fmt: skip
        return reply, [self._event("payment_intent.payment_failed", intent)]

    @staticmethod
    def _event(event_type: str, obj: Json) -> Json:
        from credits_dev.stripe_events import event

        return event(event_type, copy.deepcopy(obj))


def signed_delivery(
    url: str, secret: str, post: Callable[[str, bytes, dict[str, str]], None]
) -> Callable[[Json], None]:
    """A webhook sender: signs each event with ``secret`` as Stripe does and posts it to ``url``."""
    from credits_dev.stripe_events import body, signature_header

    def deliver(event: Json) -> None:
        payload = body(event)
        headers = {"Content-Type": "application/json", "Stripe-Signature": signature_header(payload, secret)}
        post(url, payload.encode(), headers)

    return deliver


PREFIX = "/_stripe"


def answer_http(emulator: StripeEmulator, handler: Any, method: str, raw_path: str, body: bytes) -> None:
    """Serve one emulator call on a ``BaseHTTPRequestHandler`` (``raw_path`` starts with ``/_stripe``)."""
    path = raw_path[len(PREFIX) :] or "/"
    try:
        status, payload = emulator.handle(
            method, path, dict(handler.headers.items()), body.decode("utf-8", "replace")
        )
    except NoAnswer as exc:
        time.sleep(exc.delay)
        handler.close_connection = True
        return
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Request-Id", _new_id("req"))
    handler.end_headers()
    handler.wfile.write(data)


def serve(emulator: StripeEmulator, host: str = "127.0.0.1", port: int = 0) -> Any:
    """The emulator alone on its own port (tests, ``python -m``): returns the started server; its API base is
    ``http://host:port/_stripe``."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not self.path.startswith(PREFIX):
                self.send_error(404)
                return
            answer_http(emulator, self, self.command, self.path, body)

        do_GET = do_POST = do_DELETE = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


LOCAL_API_KEY = "rk_test_local_emulator"


def attach(stack_url: str, webhook_secret: str, env: Any) -> StripeEmulator | None:
    """The local stack's emulator, unless ``STRIPE_API_BASE`` points the functions elsewhere (stripe-mock,
    Stripe itself with a test key). Sets ``STRIPE_API_BASE`` / ``STRIPE_API_KEY`` for the functions and sends
    the emulator's webhooks, signed with the stack's secret, to the stack's own webhook route."""
    if env.get("STRIPE_API_BASE"):
        return None
    import urllib.request

    env["STRIPE_API_BASE"] = stack_url + PREFIX
    env.setdefault("STRIPE_API_KEY", LOCAL_API_KEY)

    def post(url: str, data: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    return StripeEmulator(webhook=signed_delivery(stack_url + "/v1/webhooks/stripe", webhook_secret, post))


def in_process_client(emulator: StripeEmulator) -> Any:
    """A stripe SDK HTTP client that hands each call to ``emulator`` without a socket (property tests,
    benchmarks): the SDK's own retries, idempotency keys and error mapping still run. An injected "no
    answer" is a connection error the SDK may retry, as a timeout is."""
    import stripe

    class InProcessClient(stripe.HTTPClient):
        name = "in_process"

        def request(
            self, method: str, url: str, headers: Any, post_data: Any = None, *, _usage: Any = None
        ) -> tuple[str, int, dict[str, str]]:
            parts = urlsplit(url)
            path = parts.path.removeprefix(PREFIX) + (f"?{parts.query}" if parts.query else "")
            body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
            try:
                status, payload = emulator.handle(method.upper(), path, dict(headers or {}), body)
            except NoAnswer as exc:
                raise stripe.APIConnectionError("no answer (injected)", should_retry=True) from exc  # type: ignore[no-untyped-call]
            return json.dumps(payload), status, {"request-id": _new_id("req")}

        def _sleep_time_seconds(self, num_retries: int, response: Any = None) -> float:
            return 0.0  # nothing to wait for in-process

        def close(self) -> None:
            pass

    return InProcessClient()
