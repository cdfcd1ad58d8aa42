"""bench section ``coldstart``: what a cold start pays to import each HTTP handler, against a bare
``import boto3`` (the floor of any Python function that talks to DynamoDB). Issue 15's goal: at most 2x.

The handlers are imported as ``make build`` ships them: the layer's package and the functions are copied and
compiled to bytecode by ``tools/bytecode.py`` (the build's own step), against boto3, pydantic and Powertools as
pip installed (compiled) them, with the environment ``template.yaml`` gives every function. Each round starts
one fresh interpreter per module (no .pyc writes, as a Lambda cold start), in turn, so every module meets the
same load; the figure is the median of the rounds. CPU time of the import is the
headline (on a shared machine wall time mostly measures the neighbours); wall time is printed beside it.
The handlers import as outside Lambda, where nothing is traced; the ``traced`` rows import them as inside
Lambda with tracing on (the X-Ray SDK loaded and botocore patched at init).

    python -m tools.bench_coldstart              # prints the rows
    python -m tools.bench --only coldstart
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.bench import ValueRow
from tools.bytecode import compile_tree

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "credits_ledger"
SECTION = "coldstart"
RUNS = int(os.environ.get("BENCH_COLDSTART_RUNS", "5"))
GOAL = 2.0
BASELINE = "boto3"
HANDLERS = {"api": "functions.api.app", "webhook": "functions.stripe_webhook.app"}
# What any Powertools HTTP handler that validates with pydantic pays before its own code: boto3, the logger,
# metrics and tracer, and a resolver with validation on (it loads pydantic's model machinery). Printed so the
# handlers' own share of the goal can be read off in the same run.
FLOOR = "floor"
FLOOR_STATEMENT = (
    "import boto3; "
    "from aws_lambda_powertools import Logger, Metrics, Tracer; "
    "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver; "
    "APIGatewayHttpResolver(enable_validation=True)"
)
# template.yaml Globals: what every function's environment holds (the ledger loads no pydantic plugin)
FUNCTION_ENV = {"PYDANTIC_DISABLE_PLUGINS": "__all__"}
# Inside Lambda the handlers check their environment at import (credits_ledger/environment.py): give them
# what template.yaml gives them.
TRACED_ENV = {
    "LAMBDA_TASK_ROOT": str(ROOT),
    "POWERTOOLS_TRACE_DISABLED": "false",
    "AWS_SAM_LOCAL": "",
    "TABLE_NAME": "CreditsTable",
    "STRIPE_WEBHOOK_SECRET": "whsec_bench_not_a_secret",
}
_PROBE = (
    "import json, time\n"
    "cpu, wall = time.process_time(), time.perf_counter()\n"
    "{statement}\n"
    "print(json.dumps([time.process_time() - cpu, time.perf_counter() - wall]))\n"
)


def shipped_copy(into: Path) -> list[Path]:
    """The layer's package and the functions as the build ships them (compiled), below ``into``; the
    import path that finds them first."""
    layer, task_root = into / "layer", into / "task"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(LAYER / "credits_ledger", layer / "credits_ledger", ignore=ignore)
    shutil.copytree(ROOT / "functions", task_root / "functions", ignore=ignore)
    compile_tree(into)
    return [layer, task_root]


def import_seconds(
    statement: str, extra_env: dict[str, str] | None = None, path: list[Path] | None = None
) -> tuple[float, float]:
    """(CPU, wall) seconds one fresh interpreter spends on ``statement`` (an ``import module``)."""
    env = {
        **os.environ,
        **FUNCTION_ENV,
        "PYTHONPATH": os.pathsep.join(str(entry) for entry in (path or [LAYER, ROOT])),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in ("LAMBDA_TASK_ROOT", "AWS_SAM_LOCAL"):
        env.pop(name, None)
    env.update({k: v for k, v in (extra_env or {}).items() if v})
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(statement=statement)],
        cwd=(path or [ROOT])[-1],  # `-c` puts the working directory first on sys.path: the task root
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cpu, wall = json.loads(done.stdout.strip().splitlines()[-1])
    return float(cpu), float(wall)


def measure(runs: int = RUNS) -> dict[str, tuple[float, float]]:
    """Median (CPU ms, wall ms) per name: ``boto3``, each handler, each handler traced."""
    cases: dict[str, tuple[str, dict[str, str] | None]] = {
        BASELINE: (f"import {BASELINE}", None),
        FLOOR: (FLOOR_STATEMENT, None),
    }
    for name, module in HANDLERS.items():
        cases[name] = (f"import {module}", None)
        cases[f"{name} traced"] = (f"import {module}", TRACED_ENV)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        path = shipped_copy(Path(tmp))
        for _ in range(runs):
            for name, (statement, extra_env) in cases.items():
                samples[name].append(import_seconds(statement, extra_env, path))
    return {
        name: (
            1000 * statistics.median(cpu for cpu, _ in values),
            1000 * statistics.median(wall for _, wall in values),
        )
        for name, values in samples.items()
    }


def rows_of(medians: dict[str, tuple[float, float]], runs: int = RUNS) -> list[ValueRow]:
    base_cpu, base_wall = medians[BASELINE]
    rows = [
        ValueRow(SECTION, "import boto3", base_cpu, "ms CPU", f"{base_wall:.0f} ms wall; median of {runs}")
    ]
    floor_cpu, floor_wall = medians[FLOOR]
    rows.append(
        ValueRow(
            SECTION,
            "boto3 + Powertools validating resolver",
            floor_cpu,
            "ms CPU",
            f"{floor_wall:.0f} ms wall; {floor_cpu / base_cpu:.2f}x import boto3: any such handler's floor",
        )
    )
    for name, (cpu, wall) in medians.items():
        if name in (BASELINE, FLOOR):
            continue
        module = HANDLERS[name.split()[0]]
        ratio = cpu / base_cpu if base_cpu else float("inf")
        verdict = (
            ""
            if name.endswith("traced")
            else (" (goal <= 2x: met)" if ratio <= GOAL else " (goal <= 2x: NOT met)")
        )
        rows.append(
            ValueRow(
                SECTION,
                f"import {module}" + (" traced" if "traced" in name else ""),
                cpu,
                "ms CPU",
                f"{wall:.0f} ms wall",
            )
        )
        rows.append(ValueRow(SECTION, f"  {name} / import boto3", ratio, "x", f"CPU time{verdict}"))
    return rows


def run(endpoint: str | None = None) -> list[ValueRow]:
    """The section's rows (``endpoint`` unused: importing needs no DynamoDB)."""
    return rows_of(measure())


def main() -> int:
    for row in run():
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
