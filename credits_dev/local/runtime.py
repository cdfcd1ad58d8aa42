"""Runs the template's Lambda handlers as Lambda does: each invocation in an execution environment of its
function (a worker process, ``worker.py``), up to ``CREDITS_LOCAL_CONCURRENCY`` (default 8) invocations of
one function at once.

An environment runs one invocation at a time and stays warm for the next (its imports and module-level
clients survive, as in Lambda); a function with every environment busy gets a new one (a cold start: the
handler module is imported again) until the limit, then the invocation waits for a free one. Each worker
process has exactly its function's environment variables on top of the stack's (AWS endpoints, secrets),
and only its own code folder and layers on ``sys.path`` (code first, as ``/var/task`` comes before
``/opt/python``). Every invocation gets a Lambda context (function name, version, ARN, memory,
``aws_request_id``, ``get_remaining_time_in_millis()`` counting down from the template's ``Timeout``).

A worker that dies during an invocation (``os._exit``, a crash) answers ``Runtime.ExitError`` and is
replaced. A function slower than its ``Timeout`` is not stopped; the log says it would have timed out.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from credits_dev.local.template import Function, StackModel
from credits_dev.local.worker import error_shape

__all__ = ["FunctionRuntime", "Invocation", "environment_summary", "local_concurrency"]

DEFAULT_CONCURRENCY = 8
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def local_concurrency(environ: Mapping[str, str] | None = None) -> int:
    """``CREDITS_LOCAL_CONCURRENCY``: invocations of one function at once (default 8, at least 1)."""
    raw = (environ if environ is not None else os.environ).get("CREDITS_LOCAL_CONCURRENCY", "").strip()
    if not raw:
        return DEFAULT_CONCURRENCY
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"CREDITS_LOCAL_CONCURRENCY={raw!r} is not a whole number") from None
    if value < 1:
        raise SystemExit(f"CREDITS_LOCAL_CONCURRENCY={raw!r} must be at least 1")
    return value


@dataclass
class Invocation:
    """The outcome of one invocation: ``result`` (JSON-ready) or ``error`` (Lambda's error shape)."""

    request_id: str
    result: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0
    worker_pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def payload(self) -> bytes:
        return json.dumps(self.error if self.error is not None else self.result).encode("utf-8")


class WorkerGone(RuntimeError):
    """The worker process ended before it answered."""


class WorkerProcess:
    """One execution environment: a ``python -m credits_dev.local.worker`` child process."""

    def __init__(
        self, fn: Function, environment: Mapping[str, str], log: Callable[[str], None], label: str = ""
    ) -> None:
        self.fn = fn
        env = {**environment, **fn.environment}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PACKAGE_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.process = subprocess.Popen(
            # the label (the stack's state folder) and the function on the command line: `ps` says whose it is
            [sys.executable, "-m", "credits_dev.local.worker", label or "-", fn.logical_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.pid = self.process.pid
        self._stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        self._stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        threading.Thread(
            target=self._forward, args=(self.process.stderr, log), name=f"{fn.logical_id}-{self.pid}-log",
            daemon=True,
        ).start()  # fmt: skip
        path = [str(fn.code_uri), *(str(layer) for layer in fn.layers)]
        self._send(
            {
                "function": {
                    "logical_id": fn.logical_id,
                    "name": fn.physical_name or fn.logical_id,
                    "arn": fn.arn,
                    "memory_size": fn.memory_size,
                    "timeout": fn.timeout,
                    "handler": fn.handler,
                    "module_name": fn.module_name,
                    "function_name": fn.function_name,
                    "code_uri": str(fn.code_uri),
                },
                "path": path,
            }
        )
        ready = self._receive()
        self.init_error: dict[str, Any] | None = ready.get("init_error")

    @staticmethod
    def _forward(stream: IO[str] | None, log: Callable[[str], None]) -> None:
        if stream is None:
            return
        for line in stream:
            log(line.rstrip("\n"))

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._stdin.write(json.dumps(message) + "\n")
            self._stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise WorkerGone(f"worker {self.pid} of {self.fn.logical_id} is gone") from exc

    def _receive(self) -> dict[str, Any]:
        line = self._stdout.readline()
        if not line:
            code = self.process.wait()
            raise WorkerGone(f"worker {self.pid} of {self.fn.logical_id} exited with status {code}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def invoke(self, request_id: str, event: Any) -> dict[str, Any]:
        self._send({"request_id": request_id, "event": event})
        return self._receive()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self._stdin.close()  # the worker ends its loop on EOF
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class FunctionPool:
    """The execution environments of one function: at most ``limit`` at once, reused while warm."""

    def __init__(self, fn: Function, limit: int, spawn: Callable[[Function], WorkerProcess]) -> None:
        self.fn = fn
        self.limit = limit
        self._spawn = spawn
        self._idle: list[WorkerProcess] = []
        self._count = 0
        self._all: set[WorkerProcess] = set()
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self) -> WorkerProcess:
        with self._cond:
            while not self._idle and self._count >= self.limit and not self._closed:
                self._cond.wait()
            if self._closed:
                raise WorkerGone(f"{self.fn.logical_id}: the stack is stopping")
            if self._idle:
                return self._idle.pop()  # the most recently used: warmest
            self._count += 1
        try:
            worker = self._spawn(self.fn)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(worker)
        return worker

    def release(self, worker: WorkerProcess) -> None:
        with self._cond:
            if worker.alive and not self._closed:
                self._idle.append(worker)
            elif worker in self._all:
                self._count -= 1
                self._all.discard(worker)
            self._cond.notify()
        if self._closed or not worker.alive:
            worker.stop()

    def discard(self, worker: WorkerProcess) -> None:
        worker.stop()
        with self._cond:
            if worker in self._all:
                self._count -= 1
                self._all.discard(worker)
            self._cond.notify()

    @property
    def size(self) -> int:
        with self._cond:
            return self._count

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._count = 0
            self._cond.notify_all()
        for worker in workers:
            worker.stop()


class FunctionRuntime:
    """Starts and invokes the execution environments of the functions of a :class:`StackModel`."""

    def __init__(
        self,
        stack: StackModel,
        log: Callable[[str], None] = print,
        concurrency: int | None = None,
        environment: Mapping[str, str] | None = None,
        label: str = "",
    ) -> None:
        self.stack = stack
        self.label = label
        self.log = log
        self.concurrency = concurrency if concurrency is not None else local_concurrency()
        self._environment = environment
        self.conflicts = self._conflicting_variables(stack)
        self.mode = f"one process per invocation, up to {self.concurrency} at once per function"
        self._pools = {
            name: FunctionPool(fn, self.concurrency, self._spawn) for name, fn in stack.functions.items()
        }
        self._warn_shadowing([str(fn.code_uri) for fn in stack.functions.values()])

    # -- environment ---------------------------------------------------------------------------------------
    @staticmethod
    def _conflicting_variables(stack: StackModel) -> dict[str, dict[str, str]]:
        """Variables that functions set to different values (each worker sees its own function's value)."""
        seen: dict[str, dict[str, str]] = {}
        for fn in stack.functions.values():
            for key, value in fn.environment.items():
                seen.setdefault(key, {})[fn.logical_id] = value
        return {k: v for k, v in seen.items() if len(set(v.values())) > 1}

    def _spawn(self, fn: Function) -> WorkerProcess:
        # the stack's environment as it is now (AWS endpoints, secrets), then the function's own variables
        base = dict(self._environment if self._environment is not None else os.environ)
        prefix = f"[{fn.logical_id}] "

        def log(line: str) -> None:
            self.log(prefix + line)

        worker = WorkerProcess(fn, base, log, self.label)
        if worker.init_error is not None:
            self.log(f"{fn.logical_id}: cannot load {fn.handler}: {worker.init_error.get('errorMessage')}")
        return worker

    def _warn_shadowing(self, code_dirs: list[str]) -> None:
        """Two functions' folders sharing a module name other than their handler's would be a surprise when
        the code is moved to a shared layer; each worker only sees its own folder."""
        handler_modules = {fn.module_name.split(".")[0] for fn in self.stack.functions.values()}
        owners: dict[str, list[str]] = {}
        for folder in dict.fromkeys(code_dirs):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                stem = name[:-3] if name.endswith(".py") else name
                if (
                    name.endswith(".py") or os.path.isdir(os.path.join(folder, name))
                ) and not name.startswith((".", "_")):
                    owners.setdefault(stem, []).append(folder)
        for stem, folders in owners.items():
            if len(folders) > 1 and stem not in handler_modules and stem not in ("config", "tests"):
                self.log(
                    f"warning: module {stem!r} exists in several function folders ({', '.join(folders)})"
                )

    def preload(self) -> dict[str, str | None]:
        """Start one warm environment per function, in parallel; ``{logical_id: None | init error}``."""
        out: dict[str, str | None] = {}
        lock = threading.Lock()

        def warm(name: str, pool: FunctionPool) -> None:
            try:
                worker = pool.acquire()
            except Exception as exc:  # reported, retried on first invoke
                with lock:
                    out[name] = f"{exc.__class__.__name__}: {exc}"
                return
            error = worker.init_error
            pool.release(worker)
            with lock:
                out[name] = (
                    None if error is None else f"{error.get('errorType')}: {error.get('errorMessage')}"
                )

        threads = [threading.Thread(target=warm, args=item, daemon=True) for item in self._pools.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {name: out.get(name) for name in self._pools}

    def environments(self) -> dict[str, int]:
        """Execution environments (worker processes) per function right now."""
        return {name: pool.size for name, pool in self._pools.items()}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    # -- invoke --------------------------------------------------------------------------------------------
    def invoke(self, fn: Function, event: Any, request_id: str | None = None) -> Invocation:
        request_id = request_id or str(uuid.uuid4())
        started = time.monotonic()
        invocation = Invocation(request_id)
        pool = self._pools[fn.logical_id]
        try:
            worker = pool.acquire()
        except Exception as exc:  # the environment could not start: Lambda's init error
            invocation.error = error_shape(exc, "Runtime.InitError", request_id)
            self.log(f"{fn.logical_id}: cannot start an environment: {exc}")
            return invocation
        invocation.worker_pid = worker.pid
        try:
            answer = worker.invoke(request_id, event)
        except WorkerGone as exc:
            pool.discard(worker)
            invocation.error = error_shape(exc, "Runtime.ExitError", request_id)
            self.log(f"{fn.logical_id}: {exc}")
        else:
            pool.release(worker)
            invocation.result = answer.get("result")
            invocation.error = answer.get("error")
            if (
                invocation.error is not None
                and invocation.error.get("errorType") == "Runtime.ImportModuleError"
            ):
                self.log(f"{fn.logical_id}: cannot load {fn.handler}: {invocation.error.get('errorMessage')}")
        invocation.duration_ms = (time.monotonic() - started) * 1000
        if invocation.duration_ms > fn.timeout * 1000:
            self.log(
                f"warning: {fn.logical_id} took {invocation.duration_ms:.0f} ms: more than its Timeout "
                f"({fn.timeout} s); Lambda would have stopped it"
            )
        return invocation


def environment_summary(functions: Mapping[str, Function]) -> list[str]:
    return [f"{name}: {', '.join(sorted(fn.environment)) or '-'}" for name, fn in functions.items()]
