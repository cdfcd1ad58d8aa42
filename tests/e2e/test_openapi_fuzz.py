"""schemathesis (``--checks all``) against the local stack: what docs/openapi.json says and what the API does
agree. Fixed seed and a bounded number of examples per operation, so a run is reproducible and takes a couple
of minutes. ``positive_data_acceptance`` is left out on purpose: business rules the document cannot state
(a meter must exist in the deployment's pricing file, a usage time is relative to now, a cursor must be one
the API returned, credits may be missing or an id used before) refuse some schema-valid requests with 4xx.
``unsupported_method`` too: API Gateway HTTP API answers 404 to a method a path does not declare (PUT
/v1/usage), and the local stack answers as it does (tests/e2e/test_local_runtime.py); methods no route knows
(TRACE, ...) get 405 with Allow (tests/e2e/test_local_security.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN_KEY, REPO_ROOT, StackProcess

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).with_name("st")
SEED = 1
EXAMPLES = 10


def test_the_fuzzer_finds_nothing(stack: StackProcess, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SCHEMATHESIS} missing in CI: run `make venv`")
        pytest.skip("schemathesis not installed in this venv: run `make venv`")
    command = [
        str(SCHEMATHESIS),
        "run",
        str(REPO_ROOT / "docs" / "openapi.json"),
        "--url",
        stack.url,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance,unsupported_method",
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES),
        "--request-timeout",
        "60",
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--no-color",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "Tested: " in run.stdout, report
