"""`credits reserve / capture / release / extend / reservations` against the real API handler on moto (an HTTP
server in front of ``lambda_handler``, turning each request into an API Gateway HTTP API v2 event)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from credits_dev import cli
from tests.integration.test_api_support import ADMIN_KEY, Api

pytest_plugins = ["tests.integration.test_api_support"]


@pytest.fixture
def url(api: Api) -> Iterator[str]:
    lock = threading.Lock()  # moto and the handler's caches are not meant for concurrent requests

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else None
            path, _, query = self.path.partition("?")
            event = api.event("health", key=self.headers.get("Authorization", "").removeprefix("Bearer "))
            event["routeKey"] = "$default"
            event["rawPath"] = event["requestContext"]["http"]["path"] = path
            event["requestContext"]["http"]["method"] = self.command
            event["rawQueryString"] = query
            if raw is not None:
                event["body"] = raw
                event["headers"]["content-type"] = "application/json"
            with lock:
                reply = api.invoke(event)
            data = (reply.raw.get("body") or "").encode()
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                if key != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def credits(url: str, *argv: str) -> tuple[int, str, str]:
    out: list[str] = []
    err = io.StringIO()
    code = cli.main(["--url", url, "--key", ADMIN_KEY, *argv], out=out.append, err=err)
    return code, "\n".join(out), err.getvalue()


def test_reserve_capture_release_and_list_from_the_cli(api: Api, url: str) -> None:
    assert api.grant("cus_A", "100").status == 201
    code, out, err = credits(url, "reserve", "cus_A", "30", "--id", "job-1", "--expires-in", "2h")
    assert code == 0, err
    assert out.startswith("reserved 30 credits of cus_A; id job-1; expires ")
    assert credits(url, "reserve", "cus_A", "30", "--id", "job-1", "--expires-in", "2h")[1].startswith(
        "replayed"
    )
    assert credits(url, "reserve", "cus_A", "20", "--meter", "api_call", "--id", "job-2")[0] == 0
    code, out, _ = credits(url, "reservations", "cus_A")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CREDITS", "HELD", "EXPIRES"]
    assert [line.split()[:4] for line in lines[2:]] == [
        ["job-2", "active", "20", "20"],
        ["job-1", "active", "30", "30"],
    ]
    assert "reserved        50" in credits(url, "balance", "cus_A")[1]

    code, out, _ = credits(url, "capture", "job-1", "25")
    assert (code, out) == (0, "captured 25 credits of job-1, released 5; available 55")
    assert credits(url, "capture", "job-1")[1].endswith("(captured before)")
    code, out, _ = credits(url, "release", "job-2")
    assert (code, out) == (0, "job-2 released: 20 credits released")
    code, _, err = credits(url, "capture", "job-2")
    assert code == 1 and "invalid_request (422)" in err
    code, out, _ = credits(url, "reservations", "--id", "job-1", "--json")
    assert json.loads(out)["status"] == "captured"
    assert credits(url, "reservations", "cus_A")[1] == "no open reservations"
    code, _, err = credits(url, "reserve", "cus_A", "1000", "--id", "job-3")
    assert code == 1 and "insufficient_credits (402)" in err


def test_extend_from_the_cli(api: Api, url: str) -> None:
    api.grant("cus_A", "100")
    credits(url, "reserve", "cus_A", "10", "--id", "job-x", "--expires-in", "600")
    code, out, err = credits(url, "extend", "job-x", "1d")
    assert code == 0, err
    assert "status      active" in out and "held        10" in out
    assert credits(url, "extend", "job-x", "soon")[0] == 2
