"""The local stack's one HTTP port (stdlib ``ThreadingHTTPServer``, one thread per connection):

==========================================================  ==================================================
``<method> <template route>``                                API Gateway HTTP API -> the route's function
``POST /2015-03-31/functions/{name}/invocations``            Lambda Invoke API (logical id, FunctionName, ARN)
``GET /2015-03-31/functions/``                               Lambda ListFunctions (names only)
``POST /`` with ``X-Amz-Target``                             EventBridge PutEvents, SSM, Secrets Manager stubs
``GET /_local/events``                                       the last 1,000 EventBridge events (``?limit=``,
                                                             ``?source=``, ``?detail-type=``); DELETE clears
``GET /_local/info``                                         functions, routes, engine, mode
``/_stripe/v1/...``, ``/_stripe/_emulator/requests``          the local Stripe API emulator (stripe_emulator.py)
``GET /``                                                    the dashboard (unless the template routes ``/``)
==========================================================  ==================================================

Everything but the API routes and the dashboard controls the machine (runs functions, hands out secrets), so
it answers only requests addressed to this stack: a ``Host`` that is the stack's own loopback address and
port, and no ``Origin`` or the stack's own. A web page elsewhere (or a DNS-rebound name) gets 403. Methods
no route knows (TRACE, ...) get 405, as API Gateway answers them, never a 5xx.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from credits_dev.local.apigw import HttpResponse, build_event, internal_error, not_found, to_http_response
from credits_dev.local.stripe_emulator import PREFIX as STRIPE_PREFIX
from credits_dev.local.stripe_emulator import answer_http

if TYPE_CHECKING:
    from credits_dev.local.stack import LocalStack

STATIC = Path(__file__).parent / "static"
INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations/?")
MAX_BODY = 10 * 1024 * 1024  # HTTP API's payload limit


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback_host(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # listen() backlog: the default 5 resets connections when dozens of clients connect at once (API Gateway
    # queues them); requests beyond CREDITS_LOCAL_CONCURRENCY wait for a free worker instead
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], stack: LocalStack) -> None:
        if not is_loopback_host(address[0]):
            raise SystemExit(
                f"the local stack listens on loopback only (127.0.0.1, ::1, localhost), not {address[0]}: it runs "
                "code and hands out secrets to whoever reaches it"
            )
        super().__init__(address, RequestHandler)
        self.stack = stack

    def own_hosts(self) -> frozenset[str]:
        """``Host`` values that name this stack: its loopback names with its port."""
        port = self.server_address[1]
        bound = str(self.server_address[0])
        return frozenset({f"{name}:{port}" for name in (*LOOPBACK_NAMES, bound)})

    def addressed_here(self, host: str | None, origin: str | None) -> bool:
        """True when the request names this stack as Host and comes from no web page or from its own."""
        own = self.own_hosts()
        if (host or "").lower() not in own:
            return False
        return origin is None or origin.lower() in {f"http://{h}" for h in own}


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "credits-local"
    server: LocalServer

    def log_message(self, format: str, *args: Any) -> None:  # access lines are logged below
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def __getattr__(self, name: str) -> Any:
        # http.server looks up do_<METHOD>; a method no route knows is 405 (http.server would say 501).
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        path = urlsplit(self.path).path or "/"
        self._json(
            405, {"message": "Method Not Allowed"}, [("Allow", ", ".join(self._allowed_methods(path)))]
        )

    def _allowed_methods(self, raw_path: str) -> list[str]:
        """The methods some route of the template serves on ``raw_path`` (RFC 9110: a 405 says which)."""
        router = self.server.stack.router
        return [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE") if router.match(m, raw_path)]

    # -- plumbing ------------------------------------------------------------------------------------------
    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, response: HttpResponse) -> None:
        self.send_response(response.status)
        names = set()
        for key, value in response.headers:
            if key.lower() in ("content-length", "transfer-encoding", "connection", "date", "server"):
                continue
            names.add(key.lower())
            self.send_header(key, value)
        if "content-type" not in names and response.body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _json(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self._send(HttpResponse(status, [("Content-Type", "application/json"), *(headers or [])], body))

    # -- dispatch ------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        stack = self.server.stack
        started = time.monotonic()
        url = urlsplit(self.path)
        raw_path, raw_query = url.path or "/", url.query
        try:
            body = self._read_body()
        except ValueError:  # a Content-Length or chunk size that is not a number
            self.close_connection = True
            self._json(400, {"message": "Bad Request"})
            return
        if body is None:
            self.close_connection = True
            self._json(413, {"message": "Request Entity Too Large"})
            return
        method = self.command.upper()
        try:
            if self._controls_the_machine(method, raw_path) and not self.server.addressed_here(
                self.headers.get("Host"), self.headers.get("Origin")
            ):
                self._json(403, {"message": "Forbidden: not addressed to this local stack (Host / Origin)"})
                stack.access_log(method, self.path, "-", 403, started)
                return
            invoke = INVOKE_PATH.fullmatch(raw_path)
            if invoke and method == "POST":
                self._lambda_invoke(unquote(invoke.group(1)), body)
                return
            if raw_path.rstrip("/") == "/2015-03-31/functions" and method == "GET":
                self._json(200, stack.list_functions())
                return
            target = self.headers.get("X-Amz-Target")
            if method == "POST" and raw_path == "/" and target:
                status, payload = stack.stubs.handle(target, body)
                self._send(
                    HttpResponse(
                        status,
                        [("Content-Type", "application/x-amz-json-1.1")],
                        json.dumps(payload).encode("utf-8"),
                    )
                )
                return
            if raw_path.startswith("/_local/"):
                self._local(method, raw_path, raw_query)
                return
            if raw_path.startswith(STRIPE_PREFIX + "/") and stack.stripe_emulator is not None:
                answer_http(stack.stripe_emulator, self, method, self.path, body)
                return
            found = stack.router.match(method, raw_path)
            if found is None and method == "GET" and raw_path in ("/", "/index.html"):
                self._dashboard()
                return
            if found is None and raw_path == "/favicon.ico":
                self._send(HttpResponse(204, [], b""))
                return
            if found is None:
                self._send(not_found())
                stack.access_log(method, self.path, "-", 404, started)
                return
            compiled, params = found
            function = compiled.target
            host = (
                self.headers.get("Host")
                or f"{self.server.server_address[0]!s}:{self.server.server_address[1]}"
            )
            event = build_event(
                route=compiled.route,
                method=method,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=self.headers.items(),
                body=body,
                path_parameters=params,
                source_ip=self.client_address[0],
                host=host,
            )
            request_id = event["requestContext"]["requestId"]
            outcome = stack.runtime.invoke(function, event)
            response = to_http_response(outcome.result) if outcome.ok else internal_error()
            response.headers.append(("apigw-requestid", request_id))
            self._send(response)
            stack.access_log(method, self.path, function.logical_id, response.status, started)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # never kill the server thread; answer like API Gateway
            stack.log(f"local stack error on {method} {self.path}: {exc.__class__.__name__}: {exc}")
            self._send(internal_error())

    def _controls_the_machine(self, method: str, raw_path: str) -> bool:
        """The Lambda API, the AWS stubs (SSM and Secrets Manager hand out secrets) and /_local/*."""
        return (
            raw_path.startswith(("/2015-03-31/", "/_local/"))
            or raw_path.rstrip("/") == "/_local"
            or (raw_path == "/" and method == "POST")
            or self.headers.get("X-Amz-Target") is not None
        )

    def _lambda_invoke(self, name: str, body: bytes) -> None:
        stack = self.server.stack
        function = stack.model.function(name)
        if function is None:
            self._json(
                404,
                {"Type": "User", "message": f"Function not found: {name}"},
                [("x-amzn-ErrorType", "ResourceNotFoundException")],
            )
            return
        try:
            event = json.loads(body) if body.strip() else {}
        except ValueError:
            self._json(
                400,
                {"Type": "User", "message": "Could not parse request body into json"},
                [("x-amzn-ErrorType", "InvalidRequestContentException")],
            )
            return
        kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind == "DryRun":
            self._send(HttpResponse(204, [], b""))
            return
        if kind == "Event":
            threading.Thread(
                target=stack.invoke_logged, args=(function, event, "Invoke API (Event)"), daemon=True
            ).start()
            self._send(HttpResponse(202, [("x-amzn-RequestId", stack.new_id())], b""))
            return
        started = time.monotonic()
        outcome = stack.runtime.invoke(function, event)
        headers = [
            ("Content-Type", "application/json"),
            ("X-Amz-Executed-Version", "$LATEST"),
            ("x-amzn-RequestId", outcome.request_id),
        ]
        if not outcome.ok:
            headers.append(("X-Amz-Function-Error", "Unhandled"))
        if self.headers.get("X-Amz-Log-Type") == "Tail":
            import base64

            note = f"local stack: {function.logical_id} logs are on the console of `make dev`\n"
            headers.append(("X-Amz-Log-Result", base64.b64encode(note.encode()).decode()))
        self._send(HttpResponse(200, headers, outcome.payload()))
        stack.access_log(
            "INVOKE", function.logical_id, function.logical_id, 200 if outcome.ok else 500, started
        )

    def _local(self, method: str, raw_path: str, raw_query: str) -> None:
        stack = self.server.stack
        query = {k: v[-1] for k, v in parse_qs(raw_query).items()}
        if raw_path.rstrip("/") == "/_local/events":
            if method == "DELETE":
                stack.bus.clear()
                self._send(HttpResponse(204, [], b""))
                return
            try:
                limit = int(query.get("limit", "1000"))
            except ValueError:
                self._json(400, {"message": "limit must be an integer"})
                return
            events = stack.bus.recent(max(1, min(limit, 1000)), query.get("source"), query.get("detail-type"))
            self._json(200, {"events": events, "count": len(events)})
            return
        if raw_path.rstrip("/") == "/_local/info":
            self._json(200, stack.info())
            return
        self._send(not_found())

    def _dashboard(self) -> None:
        page = (STATIC / "index.html").read_bytes()
        self._send(
            HttpResponse(
                200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], page
            )
        )
