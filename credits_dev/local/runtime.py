"""Runs the template's Lambda handlers in this process, as the Lambda Python runtime would.

Each function's handler module is imported from its ``CodeUri`` (under a name of its own, so two functions'
``app.py`` never collide), with the function's layers and code folder on ``sys.path`` (code first, as
``/var/task`` comes before ``/opt/python`` in Lambda). Every invocation gets a fake Lambda context
(function name, version, ARN, memory, ``aws_request_id``, ``get_remaining_time_in_millis()`` counting down
from the template's ``Timeout``).

Concurrency and environment (os.environ is one per process):

* ``concurrent`` mode (the usual case): no two functions of the template give one variable different
  values, so the union of their variables is set once at start, and each function runs one invocation at a
  time (a lock per function: like one warm Lambda instance each); different functions run in parallel.
* ``serialized`` mode: some variable differs between functions (listed in the log); then every invocation
  of every function takes one global lock and runs with exactly its own variables, restored afterwards.

A function slower than its ``Timeout`` is not stopped (threads cannot be killed); the log says it would
have timed out in Lambda.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from credits_dev.lambda_context import FakeLambdaContext
from credits_dev.local.template import Function, StackModel


@dataclass
class Invocation:
    """The outcome of one invocation: ``result`` (JSON-ready) or ``error`` (Lambda's error shape)."""

    request_id: str
    result: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def payload(self) -> bytes:
        return json.dumps(self.error if self.error is not None else self.result).encode("utf-8")


class FunctionRuntime:
    """Loads and invokes the functions of a :class:`StackModel`."""

    def __init__(self, stack: StackModel, log: Callable[[str], None] = print) -> None:
        self.stack = stack
        self.log = log
        self._modules: dict[str, ModuleType] = {}
        self._import_lock = threading.RLock()
        self._function_locks = {name: threading.Lock() for name in stack.functions}
        self._global_lock = threading.RLock()
        self.conflicts = self._conflicting_variables(stack)
        self.mode = "serialized" if self.conflicts else "concurrent"
        self._path_ready = False

    # -- environment ---------------------------------------------------------------------------------------
    @staticmethod
    def _conflicting_variables(stack: StackModel) -> dict[str, dict[str, str]]:
        seen: dict[str, dict[str, str]] = {}
        for fn in stack.functions.values():
            for key, value in fn.environment.items():
                seen.setdefault(key, {})[fn.logical_id] = value
        return {k: v for k, v in seen.items() if len(set(v.values())) > 1}

    def apply_shared_environment(self) -> None:
        """Concurrent mode: set the union of the functions' variables once."""
        if self.mode != "concurrent":
            return
        for fn in self.stack.functions.values():
            os.environ.update(fn.environment)

    @contextmanager
    def _environment(self, fn: Function) -> Iterator[None]:
        if self.mode == "concurrent":
            yield
            return
        saved = {key: os.environ.get(key) for key in fn.environment}
        os.environ.update(fn.environment)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @contextmanager
    def _slot(self, fn: Function) -> Iterator[None]:
        lock = self._global_lock if self.mode == "serialized" else self._function_locks[fn.logical_id]
        with lock:
            yield

    # -- import --------------------------------------------------------------------------------------------
    def _prepare_sys_path(self) -> None:
        if self._path_ready:
            return
        layers: list[str] = []
        code: list[str] = []
        for fn in self.stack.functions.values():
            for layer in fn.layers:
                if str(layer) not in layers:
                    layers.append(str(layer))
            if str(fn.code_uri) not in code:
                code.append(str(fn.code_uri))
        for entry in reversed(code + layers):
            if entry in sys.path:
                sys.path.remove(entry)
            sys.path.insert(0, entry)
        self._warn_shadowing(code)
        self._path_ready = True

    def _warn_shadowing(self, code_dirs: list[str]) -> None:
        """Two functions' folders sharing a module name other than their handler's would shadow each other."""
        handler_modules = {fn.module_name.split(".")[0] for fn in self.stack.functions.values()}
        owners: dict[str, list[str]] = {}
        for folder in code_dirs:
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

    def module(self, fn: Function) -> ModuleType:
        with self._import_lock:
            if fn.logical_id in self._modules:
                return self._modules[fn.logical_id]
            self._prepare_sys_path()
            with self._environment(fn):
                module = self._import(fn)
            self._modules[fn.logical_id] = module
            return module

    @staticmethod
    def _import(fn: Function) -> ModuleType:
        relative = fn.module_name.replace(".", os.sep)
        candidates = [fn.code_uri / f"{relative}.py", fn.code_uri / relative / "__init__.py"]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise ImportError(f"{fn.logical_id}: handler module {fn.module_name} not found in {fn.code_uri}")
        if "." in fn.module_name:
            return importlib.import_module(fn.module_name)
        unique = f"_credits_local_{fn.logical_id}_{fn.module_name}"
        spec = importlib.util.spec_from_file_location(unique, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(unique, None)
            raise
        return module

    def preload(self) -> dict[str, str | None]:
        """Import every handler now; return ``{logical_id: None | error}`` (errors are retried at invoke)."""
        out: dict[str, str | None] = {}
        for fn in self.stack.functions.values():
            try:
                self.handler(fn)
                out[fn.logical_id] = None
            except Exception as exc:  # reported, retried on first invoke
                out[fn.logical_id] = f"{exc.__class__.__name__}: {exc}"
        return out

    def handler(self, fn: Function) -> Callable[[Any, Any], Any]:
        target = getattr(self.module(fn), fn.function_name, None)
        if not callable(target):
            raise ImportError(f"{fn.logical_id}: {fn.handler}: no callable {fn.function_name!r}")
        return target

    # -- invoke --------------------------------------------------------------------------------------------
    def invoke(self, fn: Function, event: Any, request_id: str | None = None) -> Invocation:
        request_id = request_id or str(uuid.uuid4())
        started = time.monotonic()
        invocation = Invocation(request_id)
        with self._slot(fn):
            try:
                handler = self.handler(fn)
            except Exception as exc:  # Lambda reports an init error
                invocation.error = _error(exc, "Runtime.ImportModuleError", request_id)
                self.log(f"{fn.logical_id}: cannot load {fn.handler}: {exc}")
                return invocation
            context = FakeLambdaContext(
                fn.physical_name or fn.logical_id,
                memory_limit_in_mb=fn.memory_size,
                timeout_s=fn.timeout,
                request_id=request_id,
                arn=fn.arn,
            )
            with self._environment(fn):
                try:
                    result = handler(event, context)
                    json.dumps(result)  # Lambda serializes the result: unserializable is an error
                    invocation.result = result
                except TypeError as exc:
                    if "JSON serializable" in str(exc):
                        invocation.error = _error(exc, "Runtime.MarshalError", request_id)
                    else:
                        invocation.error = _error(exc, None, request_id)
                        self.log(f"{fn.logical_id} raised:\n{traceback.format_exc()}")
                except Exception as exc:  # the function failed: Lambda's error answer
                    invocation.error = _error(exc, None, request_id)
                    self.log(f"{fn.logical_id} raised:\n{traceback.format_exc()}")
        invocation.duration_ms = (time.monotonic() - started) * 1000
        if invocation.duration_ms > fn.timeout * 1000:
            self.log(
                f"warning: {fn.logical_id} took {invocation.duration_ms:.0f} ms: more than its Timeout "
                f"({fn.timeout} s); Lambda would have stopped it"
            )
        return invocation


def _error(exc: BaseException, error_type: str | None, request_id: str) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": error_type or exc.__class__.__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def environment_summary(functions: Mapping[str, Function]) -> list[str]:
    return [f"{name}: {', '.join(sorted(fn.environment)) or '-'}" for name, fn in functions.items()]
