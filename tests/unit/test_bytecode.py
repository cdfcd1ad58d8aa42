"""tools/bytecode.py: the build ships bytecode Python uses without checking the source's timestamp."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tools.bytecode import compile_tree, main

# PEP 552: the pyc header's flags word; bit 0 set = hash-based, bit 1 clear = not checked against the source
UNCHECKED_HASH_FLAGS = 0b01


def test_every_module_is_compiled_unchecked(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "sub" / "mod.py").write_text("def f() -> int:\n    return 2\n")

    compile_tree(tmp_path)

    for source in (package / "__init__.py", package / "sub" / "mod.py"):
        cached = Path(importlib.util.cache_from_source(str(source)))
        assert cached.exists(), source
        flags = int.from_bytes(cached.read_bytes()[4:8], "little")
        assert flags == UNCHECKED_HASH_FLAGS


def test_the_bytecode_is_what_python_loads(tmp_path: Path) -> None:
    """Changed source behind unchecked bytecode is not read: the shipped bytecode is what runs."""
    (tmp_path / "shipped.py").write_text("ANSWER = 'compiled'\n")
    compile_tree(tmp_path)
    (tmp_path / "shipped.py").write_text("ANSWER = 'source'\n")

    done = subprocess.run(
        [sys.executable, "-c", "import shipped; print(shipped.ANSWER)"],
        cwd=tmp_path,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "compiled"


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    assert main([str(tmp_path / "absent")]) == 2
    assert main([]) == 2
