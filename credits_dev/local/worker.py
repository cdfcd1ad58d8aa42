"""One Lambda execution environment of the local stack: a process that imports one function's handler and
runs its invocations one at a time, as a warm Lambda instance does (``runtime.py`` starts and feeds them).

Protocol, one JSON document per line:

* stdin, first line: ``{"function": {...}, "path": [...]}`` (what the context needs, and the folders put in
  front of ``sys.path``: the function's code, then its layers, as ``/var/task`` before ``/opt/python``);
* stdout: ``{"ready": true, "init_error": null | {...}}`` once the handler is imported;
* then for each stdin line ``{"request_id", "event"}`` one stdout line ``{"result"}`` or ``{"error"}``.

The function's own output (``print``, Powertools' JSON logs) goes to stderr, which the stack forwards to its
log: stdout is kept for the protocol. The process ends when its stdin closes: when the stack stops it, or
when the stack process dies (its end of the pipe closes with it). No parent-death signal: Linux sends it
when the *thread* that started the worker ends, and the stack starts workers from short-lived threads.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from credits_dev.lambda_context import FakeLambdaContext


def error_shape(exc: BaseException, error_type: str | None, request_id: str) -> dict[str, Any]:
    """Lambda's answer for a failed invocation."""
    return {
        "errorMessage": str(exc),
        "errorType": error_type or exc.__class__.__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def import_handler_module(logical_id: str, code_uri: Path, module_name: str) -> ModuleType:
    relative = module_name.replace(".", os.sep)
    candidates = [code_uri / f"{relative}.py", code_uri / relative / "__init__.py"]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise ImportError(f"{logical_id}: handler module {module_name} not found in {code_uri}")
    if "." in module_name:
        return importlib.import_module(module_name)
    unique = f"_credits_local_{logical_id}_{module_name}"
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


class Worker:
    def __init__(self, config: dict[str, Any], out: IO[str]) -> None:
        self.function: dict[str, Any] = config["function"]
        self.out = out
        self._handler: Callable[[Any, Any], Any] | None = None
        for entry in reversed(config.get("path", [])):
            if entry in sys.path:
                sys.path.remove(entry)
            sys.path.insert(0, entry)

    def load(self) -> Callable[[Any, Any], Any]:
        if self._handler is None:
            fn = self.function
            module = import_handler_module(fn["logical_id"], Path(fn["code_uri"]), fn["module_name"])
            target = getattr(module, fn["function_name"], None)
            if not callable(target):
                raise ImportError(f"{fn['logical_id']}: {fn['handler']}: no callable {fn['function_name']!r}")
            self._handler = target
        return self._handler

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def init(self) -> None:
        try:
            self.load()
            self.send({"ready": True, "init_error": None})
        except Exception as exc:  # reported; retried on the next invocation, as Lambda does
            self.send({"ready": True, "init_error": error_shape(exc, "Runtime.ImportModuleError", "init")})

    def invoke(self, request_id: str, event: Any) -> dict[str, Any]:
        try:
            handler = self.load()
        except Exception as exc:  # Lambda reports an init error
            return {"error": error_shape(exc, "Runtime.ImportModuleError", request_id)}
        fn = self.function
        context = FakeLambdaContext(
            fn["name"],
            memory_limit_in_mb=fn["memory_size"],
            timeout_s=fn["timeout"],
            request_id=request_id,
            arn=fn["arn"],
        )
        try:
            result = handler(event, context)
        except Exception as exc:  # the function failed: Lambda's error answer
            traceback.print_exc()
            return {"error": error_shape(exc, None, request_id)}
        try:
            json.dumps(result)  # Lambda serializes the result: unserializable is an error
        except (TypeError, ValueError) as exc:
            return {"error": error_shape(exc, "Runtime.MarshalError", request_id)}
        return {"result": result}


def main() -> int:
    # The protocol keeps the real stdout; everything the function prints goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", encoding="utf-8", buffering=1, closefd=False)
    first = sys.stdin.readline()
    if not first:
        return 0
    worker = Worker(json.loads(first), protocol)
    worker.init()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        worker.send(worker.invoke(request["request_id"], request["event"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
