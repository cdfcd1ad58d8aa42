"""A clone is all a user has: no tracked file may point outside the repository for its documentation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# spelled in pieces so that this file does not match itself
OUTSIDE = ("../" + "shared", "CONTRACT" + ".md")


def test_no_file_refers_to_documents_outside_the_clone() -> None:
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    offenders = []
    for name in filter(None, tracked):
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".jar"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{name}: {needle}" for needle in OUTSIDE if needle in text]
    assert offenders == []


def test_the_public_api_is_documented_in_the_clone() -> None:
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for heading in ("## 3. HTTP API", "## 4. Stripe webhooks", "## 2. Pricing configuration", "## 9. Money"):
        assert heading in api
    assert "docs/api.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_relative_link_of_the_documentation_resolves() -> None:
    """A moved or split document leaves no link behind (the docs cite each other by file and section)."""
    documents = [
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "README.md",
        ROOT / "credits_dev" / "README.md",
    ]
    broken = []
    for document in documents:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text(encoding="utf-8")):
            if "://" not in target and not (document.parent / target).exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert broken == []
