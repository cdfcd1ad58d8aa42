"""The README's quickstart section, run as a new user would: every fenced ``sh`` block in order, in one shell session (so
variables and ``. .local/dev.env`` carry over), against a fresh local stack started as ``make dev`` starts
it (``python -m credits_dev.local``; the block that says ``make dev`` is that start). The ``text`` block that
follows a command block is its expected output: ``...`` matches anything within a line, a line of just
``...`` any number of lines, and runs of spaces match any run of spaces (column widths vary)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, StackProcess, require_java

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
QUICKSTART_SECTION = re.compile(r"<!-- quickstart:start -->\n(.*?)<!-- quickstart:end -->", re.DOTALL)


def quickstart_text() -> str:
    """The quickstart section of the README (between its markers), where a new user reads it."""
    found = QUICKSTART_SECTION.search(README.read_text())
    assert found, "README.md has no quickstart section (<!-- quickstart:start --> ... end markers)"
    return found.group(1)


FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass
class Step:
    code: str
    expected: str | None
    line: int

    @property
    def starts_the_stack(self) -> bool:
        commands = [c.strip() for c in self.code.splitlines() if c.strip() and not c.strip().startswith("#")]
        return commands == ["make dev"]


def parse(markdown: str) -> list[Step]:
    steps: list[Step] = []
    blocks = list(FENCE.finditer(markdown))
    for index, block in enumerate(blocks):
        if block.group(1) != "sh":
            continue
        expected = None
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        if (
            following
            and following.group(1) == "text"
            and not markdown[block.end() : following.start()].strip()
        ):
            expected = following.group(2)
        steps.append(Step(block.group(2), expected, markdown.count("\n", 0, block.start()) + 1))
    return steps


def pattern(expected: str) -> re.Pattern[str]:
    parts = []
    for line in expected.rstrip("\n").splitlines():
        line = line.rstrip()
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        regex = ""
        for i, piece in enumerate(line.split("...")):
            if i:
                regex += r"[^\n]*?"
            regex += (
                r"\s+".join(re.escape(word) for word in re.split(r"\s+", piece))
                if piece.strip()
                else (r"\s*" if piece else "")
            )
        parts.append(regex + r"\n")
    return re.compile("".join(parts))


def matches(expected: str, actual: str) -> bool:
    text = "\n".join(line.rstrip() for line in actual.strip("\n").splitlines()) + "\n"
    return pattern(expected).fullmatch(text) is not None


# ---- the matcher itself ----------------------------------------------------------------------------------
def test_expected_output_matcher() -> None:
    assert matches("available       440\n", "available  440\n")
    assert matches("sent evt_... (pi_1): HTTP 200\n", "sent evt_abc123 (pi_1): HTTP 200")
    assert matches("A\n...\nZ\n", "A\nB\nC\nZ\n") and matches("A\n...\nZ\n", "A\nZ\n")
    assert not matches("available 440\n", "available 441\n")
    assert not matches("A\nZ\n", "A\nB\nZ\n")


def test_the_quickstart_has_commands_and_expectations() -> None:
    steps = parse(quickstart_text())
    assert steps[0].starts_the_stack
    assert len(steps) >= 10
    assert sum(s.expected is not None for s in steps) >= len(steps) - 2
    text = quickstart_text()
    for needed in (
        "credits keys create",
        "credits stripe send",
        "credits --key",
        "credits balance",
        "credits transactions",
        "credits expire",
    ):
        assert needed in text


# ---- running it ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    require_java()
    work = tmp_path_factory.mktemp("quickstart")
    stack = StackProcess(work / ".local").start()
    try:
        yield stack
    finally:
        code = stack.stop()
        left = stack.leftovers()
        assert code == 0, stack.log()
        assert not left, f"left running after the quickstart: {left}"


def run_session(steps: list[Step], cwd: Path, env: dict[str, str]) -> list[tuple[int, str]]:
    """Run the steps in one bash, each step's output (stdout + stderr) and status cut out by markers."""
    script = ["exec 2>&1"]
    for index, step in enumerate(steps):
        script += [f"echo '@@STEP {index}@@'", step.code.rstrip("\n"), f'echo "@@STATUS {index} $?@@"']
    result = subprocess.run(
        ["bash", "--noprofile", "--norc"],
        input="\n".join(script) + "\n",
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    outputs = []
    for index in range(len(steps)):
        found = re.search(rf"@@STEP {index}@@\n(.*?)@@STATUS {index} (\d+)@@", result.stdout, re.DOTALL)
        assert found, f"step {index} did not finish; session output:\n{result.stdout[-4000:]}"
        outputs.append((int(found.group(2)), found.group(1)))
    return outputs


def test_quickstart_runs_as_written(fresh_stack: StackProcess) -> None:
    steps = [s for s in parse(quickstart_text()) if not s.starts_the_stack]
    env = dict(fresh_stack.env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(fresh_stack.state_dir.parent)
    env.pop("CREDITS_ADMIN_KEY", None)
    env.pop("STRIPE_WEBHOOK_SECRET", None)
    outputs = run_session(steps, fresh_stack.state_dir.parent, env)
    failures = []
    for step, (status, output) in zip(steps, outputs, strict=True):
        where = f"README quickstart line {step.line}: {step.code.strip()}"
        if status != 0:
            failures.append(f"{where}\n  exited with {status}; output:\n{output}")
        elif step.expected is not None and not matches(step.expected, output):
            failures.append(f"{where}\n  expected:\n{step.expected}\n  got:\n{output}")
    assert not failures, "\n\n".join(failures) + "\n\nstack log:\n" + fresh_stack.log()[-3000:]
    # and nothing failed behind the answers: every stream batch of the walk-through went through first time
    log = fresh_stack.log(tail=None)
    assert "batch failed" not in log and "Traceback" not in log, log[log.find("Traceback") - 2000 :][:6000]
