"""API Gateway HTTP API, locally: route matching on the template's routes, payload format 2.0 events, and
the mapping of a handler's answer back to an HTTP response.

Route selection follows HTTP API's rules: the most specific path wins (more literal segments first, then
path variables, greedy ``{proxy+}`` last, ``$default`` only when nothing else matches), and a route for the
method beats ``ANY``. No match: 404 ``{"message":"Not Found"}``, as HTTP API answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote

from credits_dev.local.template import ACCOUNT_ID, Route

T = TypeVar("T")

TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
    "application/graphql",
    "+json",
    "+xml",
)
API_ID = "local"


@dataclass(frozen=True)
class CompiledRoute(Generic[T]):
    route: Route
    target: T
    regex: re.Pattern[str] | None
    params: tuple[str, ...]
    sort_key: tuple[int, int, int, int, int]


def compile_route(route: Route, target: T) -> CompiledRoute[T]:
    if route.path == "$default":
        return CompiledRoute(route, target, None, (), (1, 0, 0, 0, 0))
    segments = [s for s in route.path.strip("/").split("/") if s != ""]
    parts: list[str] = []
    params: list[str] = []
    literal = greedy = variables = 0
    for segment in segments:
        match = re.fullmatch(r"\{([^}+]+)(\+?)\}", segment)
        if match and match.group(2):
            parts.append(f"(?P<p{len(params)}>.+)")
            params.append(match.group(1))
            greedy += 1
        elif match:
            parts.append(f"(?P<p{len(params)}>[^/]+)")
            params.append(match.group(1))
            variables += 1
        else:
            parts.append(re.escape(segment))
            literal += 1
    regex = re.compile("/" + "/".join(parts) if parts else "/")
    any_method = 1 if route.method == "ANY" else 0
    return CompiledRoute(route, target, regex, tuple(params), (0, greedy, -literal, variables, any_method))


class Router(Generic[T]):
    def __init__(self, routes: Iterable[tuple[Route, T]]) -> None:
        self.routes = sorted((compile_route(r, t) for r, t in routes), key=lambda c: c.sort_key)

    def match(self, method: str, raw_path: str) -> tuple[CompiledRoute[T], dict[str, str]] | None:
        method = method.upper()
        for compiled in self.routes:
            if compiled.route.method not in (method, "ANY"):
                continue
            if compiled.regex is None:
                return compiled, {}
            found = compiled.regex.fullmatch(raw_path)
            if found:
                values = {name: unquote(found.group(f"p{i}")) for i, name in enumerate(compiled.params)}
                return compiled, values
        return None


def is_text(content_type: str | None) -> bool:
    if not content_type:
        return True
    ct = content_type.split(";", 1)[0].strip().lower()
    return any(ct.startswith(t) if t.endswith("/") else (t in ct) for t in TEXT_TYPES)


def build_event(
    *,
    route: Route,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    path_parameters: Mapping[str, str],
    source_ip: str,
    host: str,
    request_id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API payload format 2.0 event."""
    now = time.time() if now is None else now
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    merged.setdefault("host", host)
    merged["x-forwarded-for"] = (
        f"{merged['x-forwarded-for']}, {source_ip}" if "x-forwarded-for" in merged else source_ip
    )
    merged.setdefault("x-forwarded-port", host.rsplit(":", 1)[-1] if ":" in host else "80")
    merged.setdefault("x-forwarded-proto", "http")
    merged.setdefault("x-amzn-trace-id", f"Root=1-{int(now):08x}-{uuid.uuid4().hex[:24]}")
    request_id = request_id or _request_id()
    decoded_path = unquote(raw_path)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": decoded_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = merged
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": host,
        "domainPrefix": host.split(".", 1)[0].split(":", 1)[0],
        "http": {
            "method": method.upper(),
            "path": decoded_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": merged.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route.route_key,
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body:
        if is_text(merged.get("content-type")):
            try:
                event["body"] = body.decode("utf-8")
                event["isBase64Encoded"] = False
            except UnicodeDecodeError:
                event["body"] = base64.b64encode(body).decode("ascii")
                event["isBase64Encoded"] = True
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    else:
        event["isBase64Encoded"] = False
    return event


def _request_id() -> str:
    """API Gateway request ids look like ``Xq3k2hLgIAMEVxw=``."""
    return base64.b64encode(uuid.uuid4().bytes[:10]).decode("ascii")


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def to_http_response(result: Any) -> HttpResponse:
    """Map a handler's answer to the HTTP response HTTP API (payload 2.0) would send."""
    if isinstance(result, Mapping) and "statusCode" in result:
        try:
            status = int(result["statusCode"])
        except (TypeError, ValueError):
            return internal_error()
        headers: list[tuple[str, str]] = []
        for key, value in (result.get("headers") or {}).items():
            headers.append((str(key), str(value)))
        for key, values in (result.get("multiValueHeaders") or {}).items():
            headers += [(str(key), str(v)) for v in values or []]
        headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
        body = result.get("body")
        if body is None:
            raw = b""
        elif result.get("isBase64Encoded"):
            try:
                raw = base64.b64decode(str(body))
            except (binascii.Error, ValueError):
                return internal_error()
        else:
            raw = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        return HttpResponse(status, headers, raw)
    raw = json.dumps(result).encode("utf-8")
    return HttpResponse(200, [("Content-Type", "application/json")], raw)


def internal_error() -> HttpResponse:
    return HttpResponse(500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}')


def not_found() -> HttpResponse:
    return HttpResponse(404, [("Content-Type", "application/json")], b'{"message":"Not Found"}')
