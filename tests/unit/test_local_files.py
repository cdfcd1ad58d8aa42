"""The local stack's private files: created 0600 from the first byte and replaced atomically; its state
directory 0700 even when it existed before with looser rights."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from credits_dev.local.stack import private_dir, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_creates_an_owner_only_file_and_replaces_it_whole(tmp_path: Path) -> None:
    target = tmp_path / "generated.json"
    target.write_text("old")
    target.chmod(0o644)
    old_umask = os.umask(0)  # the most permissive umask must not leak into the file
    try:
        write_private(target, '{"admin_key": "k"}')
    finally:
        os.umask(old_umask)
    assert target.read_text() == '{"admin_key": "k"}'
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["generated.json"]  # no temporary left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "dev.env"
    target.write_text("kept")
    with pytest.raises(TypeError):
        write_private(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["dev.env"]


def test_private_dir_tightens_an_existing_directory(tmp_path: Path) -> None:
    state = tmp_path / ".local"
    state.mkdir(mode=0o755)
    private_dir(state)
    assert mode(state) == 0o700
    private_dir(tmp_path / "new" / ".local")
    assert mode(tmp_path / "new" / ".local") == 0o700
