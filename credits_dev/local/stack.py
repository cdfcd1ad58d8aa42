"""The local stack: engine + tables + functions + HTTP port + event sources, started and stopped as one."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import secrets
import shlex
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credits_dev.local.apigw import Router
from credits_dev.local.aws_stubs import AwsStubs, EventBus
from credits_dev.local.engine import Engine, EngineError, choose_engine, dynamodb_client
from credits_dev.local.runtime import FunctionRuntime
from credits_dev.local.schedules import Scheduler
from credits_dev.local.server import LocalServer
from credits_dev.local.streams import BatchFailed, Checkpoints, StreamPoller
from credits_dev.local.stripe_emulator import StripeEmulator
from credits_dev.local.stripe_emulator import attach as attach_stripe_emulator
from credits_dev.local.tables import ensure_tables
from credits_dev.local.template import (
    REGION,
    Function,
    LocalNames,
    StackModel,
    TemplateError,
    load_stack,
    read_tables,
)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_REF_SUFFIXES = (
    "_PARAMETER",
    "_PARAMETER_NAME",
    "_PARAM",
    "_PARAM_NAME",
    "_SECRET_ARN",
    "_SECRET_ID",
    "_SECRET_NAME",
    "_ARN",
    "_NAME",
    "_SSM",
    "_SSM_NAME",
)


def find_template() -> Path:
    configured = os.environ.get("CREDITS_TEMPLATE")
    if configured:
        return Path(configured).resolve()
    for candidate in (Path.cwd() / "template.yaml", PACKAGE_ROOT / "template.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise SystemExit("no template.yaml here: run from the repository (or set CREDITS_TEMPLATE)")


def private_dir(path: Path) -> None:
    """The state directory holds keys and data: only its owner may list or enter it (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600) from the first byte, atomically: a
    temporary file created 0600 in the same directory, then renamed over ``path`` (never a moment where the
    file is world-readable or half written)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@dataclass
class Settings:
    template: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 3000
    admin_key: str | None = None
    webhook_secret: str | None = None
    pricing_file: Path | None = None
    run_schedules: bool = False
    quiet_events: bool = False
    generated: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        template = find_template()
        state = Path(os.environ.get("CREDITS_LOCAL_DIR") or template.parent / ".local").resolve()
        pricing_env = os.environ.get("CREDITS_PRICING_FILE")
        pricing = Path(pricing_env).resolve() if pricing_env else template.parent / "config" / "pricing.toml"
        return cls(
            template=template,
            state_dir=state,
            host=os.environ.get("CREDITS_HOST", "127.0.0.1"),
            port=int(os.environ.get("PORT") or 3000),
            admin_key=os.environ.get("CREDITS_ADMIN_KEY") or None,
            webhook_secret=os.environ.get("STRIPE_WEBHOOK_SECRET") or None,
            pricing_file=pricing if (pricing_env or pricing.is_file()) else None,
            run_schedules=os.environ.get("CREDITS_RUN_SCHEDULES", "") in ("1", "true", "yes"),
        )

    def fill_secrets(self) -> None:
        """Generated values are kept in the state dir, so a restart keeps the same key and secret. A chosen
        ``CREDITS_ADMIN_KEY`` under 128 bits of entropy is refused: it opens every account."""
        from credits_ledger.auth import MIN_BOOTSTRAP_KEY_BITS, strong_enough

        if self.admin_key and not strong_enough(self.admin_key):
            raise SystemExit(
                f"CREDITS_ADMIN_KEY is too guessable (under {MIN_BOOTSTRAP_KEY_BITS} bits of entropy): use a "
                "random key, e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`, or unset it "
                "to have one generated"
            )
        store = self.state_dir / "generated.json"
        saved: dict[str, str] = {}
        if store.is_file():
            try:
                saved = json.loads(store.read_text())
            except ValueError:
                saved = {}
        if not self.admin_key:
            self.admin_key = saved.get("admin_key") or f"local_admin_{secrets.token_urlsafe(24)}"
            self.generated["admin_key"] = self.admin_key
        if not self.webhook_secret:
            self.webhook_secret = saved.get("webhook_secret") or f"whsec_{secrets.token_hex(24)}"
            self.generated["webhook_secret"] = self.webhook_secret
        if self.generated:
            private_dir(self.state_dir)
            write_private(store, json.dumps({**saved, **self.generated}, indent=2))


class LocalStack:
    def __init__(self, settings: Settings, log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._log_lock = threading.Lock()
        self._log = log or self._print
        self.engine: Engine | None = None
        self.server: LocalServer | None = None
        self.thread: threading.Thread | None = None
        self.pollers: list[StreamPoller] = []
        self.scheduler: Scheduler | None = None
        self.secret_values: dict[str, str] = {}
        self.bus = EventBus(self.log, quiet=settings.quiet_events)
        self.stripe_emulator: StripeEmulator | None = None
        self.stubs = AwsStubs(self.bus, self.secret_values)
        self.model: StackModel
        self.runtime: FunctionRuntime
        self.router: Router[Function]
        self.url = ""

    # -- logging -------------------------------------------------------------------------------------------
    @staticmethod
    def _print(line: str) -> None:
        print(line, flush=True)

    def log(self, line: str) -> None:
        with self._log_lock:
            self._log(line)

    def access_log(self, method: str, path: str, function: str, status: int, started: float) -> None:
        self.log(f"{method} {path} -> {function} {status} ({(time.monotonic() - started) * 1000:.0f} ms)")

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    # -- start ---------------------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        s = self.settings
        private_dir(s.state_dir)
        s.fill_secrets()
        if s.pricing_file is not None and not s.pricing_file.is_file():
            raise SystemExit(f"CREDITS_PRICING_FILE={s.pricing_file} does not exist")
        # 1. the port first: the functions' AWS endpoints point at it
        self.server = LocalServer((s.host, s.port), self)
        port = self.server.server_address[1]
        self.url = f"http://{s.host}:{port}"
        # 2. the engine and the tables (the template is read first: a broken one starts nothing)
        tables = read_tables(self._raw_template())
        self.engine = choose_engine(s.state_dir, [s.template.parent, Path.cwd(), PACKAGE_ROOT], self.log)
        self.engine.start()
        ensure_tables(dynamodb_client(self.engine.endpoint), tables, self.log)
        # 3. the process environment every function sees, then the functions
        self._base_environment()
        self.model = load_stack(
            s.template,
            LocalNames(table_names={t.logical_id: t.name for t in tables.values()}),
            self._env_override,
        )
        for warning in self.model.warnings:
            self.log(f"template: {warning}")
        self.runtime = FunctionRuntime(self.model, self.log, label=str(s.state_dir))
        self.router = Router(self.model.routes())
        failures = self.runtime.preload()
        # 4. event sources
        checkpoints = Checkpoints(s.state_dir / "streams.json")
        for fn in self.model.functions.values():
            for rule in fn.event_rules:
                self.bus.subscribe(
                    f"{fn.logical_id}.{rule.name}",
                    rule.bus,
                    rule.pattern,
                    self._async_delivery(fn, rule.input),
                )
            for source in fn.streams:
                table = self.model.tables.get(source.table_logical_id or "")
                if table is None or not source.enabled:
                    self.log(f"stream {fn.logical_id}.{source.name}: table not found or disabled: not polled")
                    continue
                poller = StreamPoller(
                    fn,
                    source,
                    table.name,
                    self.engine.endpoint,
                    dynamodb_client(self.engine.endpoint),
                    self._stream_invoke,
                    self.log,
                    checkpoints,
                )
                poller.start()
                self.pollers.append(poller)
        schedule_lines: list[str] = []
        if s.run_schedules:
            self.scheduler = Scheduler(list(self.model.functions.values()), self._schedule_invoke, self.log)
            schedule_lines = self.scheduler.start()
        # 5. serve; dev.env and the banner first, so whoever sees the stack answer can already use both
        self._write_env_file()
        self._banner(failures, schedule_lines)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="local-http", daemon=True
        )
        self.thread.start()
        return self

    def _raw_template(self) -> dict[str, Any]:
        from credits_dev.local.template import load_yaml

        return load_yaml(self.settings.template)

    def _base_environment(self) -> None:
        s = self.settings
        assert self.engine is not None
        env = os.environ
        if not env.get("AWS_ACCESS_KEY_ID"):
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = "local", "local"
            env["AWS_SESSION_TOKEN"] = "local"
        env["AWS_REGION"] = env.get("AWS_REGION") or REGION
        env["AWS_DEFAULT_REGION"] = env["AWS_REGION"]
        env.pop("AWS_PROFILE", None)
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        # Every AWS call of a function goes to the local stack (never to AWS): DynamoDB to the engine, the
        # rest to this port (EventBridge, SSM, Secrets Manager answered here; anything else fails loudly).
        env["AWS_ENDPOINT_URL"] = self.url
        env["AWS_ENDPOINT_URL_DYNAMODB"] = self.engine.endpoint
        env["AWS_ENDPOINT_URL_DYNAMODB_STREAMS"] = self.engine.endpoint
        for service in ("EVENTS", "EVENTBRIDGE", "SSM", "SECRETS_MANAGER"):
            env[f"AWS_ENDPOINT_URL_{service}"] = self.url
        env["AWS_SAM_LOCAL"] = "true"
        env.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
        env.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        assert s.admin_key and s.webhook_secret
        env["CREDITS_ADMIN_KEY"] = s.admin_key
        env["STRIPE_WEBHOOK_SECRET"] = s.webhook_secret
        if s.pricing_file is not None:
            env["CREDITS_PRICING_FILE"] = str(s.pricing_file)
        self.stripe_emulator = attach_stripe_emulator(self.url, s.webhook_secret, env)

    def _env_override(self, function_id: str, variable: str, value: Any) -> str | None:
        """Secrets: a variable holding a secret gets the local value; one naming an SSM parameter or a
        secret keeps the name, and the local SSM / Secrets Manager answer it with the local value."""
        upper = variable.upper()
        if "ADMIN_KEY" in upper or upper == "ADMIN_API_KEY":
            local = self.settings.admin_key
        elif "WEBHOOK" in upper and ("SECRET" in upper or "SIGNING" in upper):
            local = self.settings.webhook_secret
        else:
            return None
        assert local is not None
        if upper.endswith(_REF_SUFFIXES):
            self.secret_values[str(value)] = local
            return None
        return local

    def _async_delivery(self, fn: Function, rule_input: str | None) -> Callable[[dict[str, Any]], None]:
        def deliver(event: dict[str, Any]) -> None:
            payload: Any = json.loads(rule_input) if rule_input else event
            threading.Thread(
                target=self.invoke_logged, args=(fn, payload, "EventBridge rule"), daemon=True
            ).start()

        return deliver

    def invoke_logged(self, fn: Function, event: Any, why: str) -> None:
        started = time.monotonic()
        outcome = self.runtime.invoke(fn, event)
        state = "ok" if outcome.ok else f"failed: {outcome.error and outcome.error.get('errorMessage')}"
        self.log(f"{why} -> {fn.logical_id} {state} ({(time.monotonic() - started) * 1000:.0f} ms)")

    def _stream_invoke(self, fn: Function, event: Any) -> None:
        started = time.monotonic()
        outcome = self.runtime.invoke(fn, event)
        count = len(event.get("Records", []))
        if not outcome.ok:
            raise BatchFailed(str((outcome.error or {}).get("errorMessage")))
        failures = (
            (outcome.result or {}).get("batchItemFailures") if isinstance(outcome.result, dict) else None
        )
        if failures:
            raise BatchFailed(f"{len(failures)} item failures", str(failures[0].get("itemIdentifier")))
        self.log(
            f"DynamoDB stream -> {fn.logical_id} {count} records ok "
            f"({(time.monotonic() - started) * 1000:.0f} ms)"
        )

    def _schedule_invoke(self, fn: Function, event: Any) -> None:
        self.invoke_logged(fn, event, "schedule")

    # -- info ----------------------------------------------------------------------------------------------
    def list_functions(self) -> dict[str, Any]:
        return {
            "Functions": [
                {
                    "FunctionName": fn.logical_id,
                    "FunctionArn": fn.arn,
                    "Runtime": fn.runtime,
                    "Handler": fn.handler,
                    "Timeout": fn.timeout,
                    "MemorySize": fn.memory_size,
                    "Environment": {"Variables": fn.environment},
                }
                for fn in self.model.functions.values()
            ]
        }

    def info(self) -> dict[str, Any]:
        assert self.engine is not None
        return {
            "url": self.url,
            "template": str(self.settings.template),
            "engine": {
                "kind": self.engine.kind,
                "endpoint": self.engine.endpoint,
                "description": self.engine.description,
            },
            "mode": self.runtime.mode,
            "concurrency": self.runtime.concurrency,
            "environments": self.runtime.environments(),
            "functions": {
                fn.logical_id: {
                    "handler": fn.handler,
                    "code_uri": str(fn.code_uri),
                    "routes": [r.route_key for r in fn.routes],
                    "schedules": [s.expression for s in fn.schedules],
                    "streams": [s.name for s in fn.streams],
                    "event_rules": [r.name for r in fn.event_rules],
                }
                for fn in self.model.functions.values()
            },
            "pid": os.getpid(),
        }

    def _write_env_file(self) -> None:
        s = self.settings
        path = s.state_dir / "dev.env"
        lines = [
            f"# Written by the local stack (make dev) at {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}.",
            "# `. .local/dev.env` points the credits CLI at it: URL, admin API key, Stripe webhook secret.",
            f"export CREDITS_URL={shlex.quote(self.url)}",
            f"export CREDITS_API_KEY={shlex.quote(s.admin_key or '')}",
            f"export STRIPE_WEBHOOK_SECRET={shlex.quote(s.webhook_secret or '')}",
        ]
        write_private(path, "\n".join(lines) + "\n")

    def _banner(self, failures: dict[str, str | None], schedules: list[str]) -> None:
        s = self.settings
        assert self.engine is not None
        generated = s.generated
        env_file = s.state_dir / "dev.env"
        rel = os.path.relpath(env_file) if env_file.is_relative_to(Path.cwd()) else str(env_file)
        lines = [
            "",
            "credits local stack",
            f"  API            {self.url}",
            f"  dashboard      {self.url}/",
            f"  Lambda Invoke  {self.url}/2015-03-31/functions/<LogicalId>/invocations",
            f"  events         {self.url}/_local/events",
            f"  DynamoDB       {self.engine.description}",
            # Only secrets this stack generated are printed: one the user chose may be reused elsewhere and
            # would end up in terminal scrollback and CI logs.
            "  admin key      "
            + (
                f"{s.admin_key}   (generated; set CREDITS_ADMIN_KEY to choose it)"
                if "admin_key" in generated
                else "from CREDITS_ADMIN_KEY (not printed)"
            ),
            "  webhook secret "
            + (
                f"{s.webhook_secret}   (generated; set STRIPE_WEBHOOK_SECRET to choose it)"
                if "webhook_secret" in generated
                else "from STRIPE_WEBHOOK_SECRET (not printed)"
            ),
            f"  pricing        {s.pricing_file or 'the functions default (config/pricing.toml)'}",
            f"  functions run  {self.runtime.mode} (CREDITS_LOCAL_CONCURRENCY)",
            f"  CLI            . {rel}   # sets CREDITS_URL, CREDITS_API_KEY, STRIPE_WEBHOOK_SECRET",
            "  routes:",
        ]
        for route, fn in self.model.routes():
            lines.append(f"    {route.route_key:<45} -> {fn.logical_id}")
        if not self.model.routes():
            lines.append("    (none yet in template.yaml)")
        for name, fn in self.model.functions.items():
            extra = []
            if fn.schedules:
                extra.append("schedule " + ", ".join(x.expression for x in fn.schedules))
            if fn.streams:
                extra.append("DynamoDB stream")
            if fn.event_rules:
                extra.append("EventBridge rule")
            error = failures.get(name)
            lines.append(
                f"  function {name}: {fn.handler}"
                + (f" [{'; '.join(extra)}]" if extra else "")
                + (f"  LOAD ERROR: {error}" if error else "")
            )
        if s.run_schedules:
            lines += ["  schedules (CREDITS_RUN_SCHEDULES=1):", *[f"    {x}" for x in schedules]]
        else:
            lines.append(
                "  schedules      off (CREDITS_RUN_SCHEDULES=1 runs them; `credits expire --now` any time)"
            )
        lines += ["Ctrl-C stops everything.", ""]
        self.log("\n".join(lines))

    # -- stop ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        for poller in self.pollers:
            poller.stop()
        if self.server is not None:
            if self.thread is not None:
                self.server.shutdown()
            self.server.server_close()
            self.server = None
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
        if self.engine is not None:
            self.engine.stop()
            self.engine = None


def main() -> int:
    import signal

    settings = Settings.from_env()
    stack = LocalStack(settings)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_signal)
    try:
        stack.start()
    except OSError as exc:
        stack.stop()
        if exc.errno == errno.EADDRINUSE:
            print(
                f"error: port {settings.port} is in use (another `make dev`?): set PORT=...", file=sys.stderr
            )
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except (TemplateError, EngineError) as exc:
        stack.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        stack.stop()
        raise
    try:
        while not stopping.wait(0.5):
            pass
        stack.log("stopping ...")
    finally:
        stack.stop()
    stack.log("stopped")
    return 0
