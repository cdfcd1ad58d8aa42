"""End-to-end fixtures: the local stack (``python -m credits_dev.local``, what ``make dev`` runs) as a real
subprocess on a free port, with its own state folder, stopped with SIGTERM afterwards; teardown fails the
test if the stack or its DynamoDB Local process is left behind.

    def test_x(stack):            # module-scoped stack on template.yaml
        stack.url, stack.admin_key, stack.webhook_secret, stack.get("/health")
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from credits_dev.local.dynamodb_local import find_java, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "local_admin_e2e_0123456789abcdef"
WEBHOOK_SECRET = "whsec_e2e_0123456789abcdef0123456789abcdef"


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CREDITS_", "STRIPE_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def pids_matching(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (``pgrep -f``)."""
    found = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split() if p.strip() and int(p) != os.getpid()]


class StackProcess:
    def __init__(
        self,
        state_dir: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        template: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = ADMIN_KEY
        self.webhook_secret = WEBHOOK_SECRET
        extra = {
            "PORT": str(self.port),
            "CREDITS_LOCAL_DIR": str(state_dir),
            "CREDITS_ADMIN_KEY": ADMIN_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            **(env or {}),
        }
        if template is not None:
            extra["CREDITS_TEMPLATE"] = str(template)
        self.env = _clean_env(extra)
        self.log_path = state_dir.parent / f"{state_dir.name.lstrip('.')}-stack.log"
        self.process: subprocess.Popen[bytes] | None = None

    def aws_client(self, service: str, **config: Any) -> Any:
        """A boto3 client of ``service`` that talks to this stack (dummy credentials; ``config``: botocore
        Config options, e.g. ``retries``)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(**config),
        )

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> StackProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes it; closed at stop
        self._log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "credits_dev.local"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the local stack exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/_local/info")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the local stack did not start within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        proc, self.process = self.process, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                raise AssertionError(
                    f"the stack ignored signal {sig} for {timeout}s:\n{self.log()}"
                ) from None
        self._log.close()
        return int(proc.returncode or 0)

    def leftovers(self) -> list[int]:
        """Processes still running with this stack's state folder on their command line (DynamoDB Local, the
        functions' worker processes)."""
        return pids_matching(str(self.state_dir))

    def workers(self) -> list[int]:
        """The functions' worker processes (``python -m credits_dev.local.worker <state dir> <function>``)."""
        return pids_matching(f"credits_dev.local.worker {self.state_dir}")

    def log(self, tail: int | None = 6000) -> str:
        """The stack's output: its last `tail` characters (enough for a failure message), or all of it."""
        try:
            text = self.log_path.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        except OSError:
            return ""

    # -- HTTP ----------------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if key:
            all_headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                status, payload, hdrs = answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            status, payload, hdrs = exc.code, exc.read(), dict(exc.headers or {})
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return status, parsed, {k.lower(): v for k, v in hdrs.items()}

    def get(self, path: str, key: str | None = None) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path, key=key)

    def functions(self) -> dict[str, Any]:
        status, info, _ = self.get("/_local/info")
        assert status == 200, info
        return dict(info["functions"])


def require_java() -> None:
    if find_java() is None:
        if os.environ.get("CI"):
            pytest.fail("the local stack tests need Java 17 (DynamoDB Local); CI is set: not skipping")
        pytest.skip("the local stack tests need Java 17 (DynamoDB Local)")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    """One stack on template.yaml for the session, state in ``<tmp>/work/.local`` as ``make dev`` keeps it in
    ``.local`` (so ``. .local/dev.env`` works from ``stack.state_dir.parent``). Tests use their own accounts."""
    require_java()
    process = StackProcess(tmp_path_factory.mktemp("stack") / "work" / ".local").start()
    try:
        yield process
    finally:
        code = process.stop()
        left = process.leftovers()
        assert code == 0, f"the stack exited with {code} on SIGTERM:\n{process.log()}"
        assert not left, f"processes left behind after stopping the stack: {left}"
