"""Compile a built Lambda package to bytecode, as the function's Python will load it.

Lambda mounts the function and its layers read-only, so a package shipped without ``__pycache__`` is compiled
from source in memory at every cold start: boto3 alone then costs about 3.5x its compiled import. ``make
build`` strips what the build copied from the working tree (bytecode of whatever Python ran the tests) and
runs this with the runtime's Python (3.13), so every module ships compiled for that version. The bytecode is
``unchecked-hash``: it is used without comparing a source timestamp, which a zip file's 2-second times would
not match, and a build directory is never edited after the build. ``make bench`` (section ``coldstart``)
compiles its copy with the same function, so the figure it prints is that of the shipped package.

    python3.13 -m tools.bytecode .aws-sam/build
"""

from __future__ import annotations

import compileall
import py_compile
import sys
from pathlib import Path


def compile_tree(root: Path) -> None:
    """Compile every ``.py`` below ``root`` into ``__pycache__`` beside it; a file that does not compile
    (a template of a dependency, a Python 2 leftover) is left as source, as Lambda would meet it anyway."""
    compileall.compile_dir(
        str(root),
        quiet=2,
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tools.bytecode DIR [DIR ...]", file=sys.stderr)
        return 2
    for name in argv:
        root = Path(name)
        if not root.is_dir():
            print(f"error: {root} is not a directory", file=sys.stderr)
            return 2
        compile_tree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
