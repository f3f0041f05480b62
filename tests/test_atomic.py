"""Atomic writes: permissions of replaced files, read-only targets, folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dinov2_heads import atomic
from dinov2_heads.atomic import atomic_write_bytes


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_are_0644_and_replaced_files_keep_their_mode(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.bin"
    atomic_write_bytes(fresh, b"new")
    assert (fresh.read_bytes(), mode(fresh)) == (b"new", 0o644)
    private = tmp_path / "private.bin"
    private.write_bytes(b"old")
    private.chmod(0o600)
    atomic_write_bytes(private, b"new")
    # A private file stays private: replacing it must not make it world-readable.
    assert (private.read_bytes(), mode(private)) == (b"new", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.bin", "private.bin"]


def test_read_only_files_are_not_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "heads.pt"
    target.write_bytes(b"keep me")
    target.chmod(0o444)
    # Faked: the suite may run as root, for whom os.access calls every file writable.
    real_access = os.access
    monkeypatch.setattr(
        atomic.os, "access", lambda p, m: False if Path(p) == target else real_access(p, m)
    )
    with pytest.raises(PermissionError, match="read-only; make it writable"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["heads.pt"]


def test_a_folder_or_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        atomic_write_bytes(tmp_path, b"x")
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        atomic_write_bytes(tmp_path / "missing" / "file.bin", b"x")
    assert list(tmp_path.iterdir()) == []
