"""Where a backbone checkpoint came from, as it is recorded beside what was made with it.

``dinov2-heads extract`` (and the demo) record the ``--checkpoint`` they used in the
``dataset.json`` beside a feature store, as ``{"given": "as typed", "path": "/absolute/path"}``
(``"path"`` is ``None`` for a Hugging Face repo id read from the cache), so that the commands
printed later can name it instead of a placeholder.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from dinov2_heads.checkpoints.huggingface_cache import cached_repo, looks_like_repo_id

__all__ = ["CHECKPOINT_KEY", "checkpoint_record", "recorded_argument"]

#: The key the record is kept under.
CHECKPOINT_KEY = "checkpoint"


def checkpoint_record(given: str | os.PathLike[str]) -> dict[str, str | None]:
    """The record of the checkpoint ``given``: the path as given (a file or a folder) and its
    absolute form (``None`` for a Hugging Face repo id read from the cache)."""
    path = Path(given).expanduser()
    repo_id = isinstance(given, str) and not path.exists() and looks_like_repo_id(given)
    return {"given": os.fspath(given), "path": None if repo_id else str(path.resolve())}


def recorded_argument(entry: Any) -> str | None:
    """``--checkpoint`` as the record ``entry`` names it, quoted for a shell.

    The path as it was given when it still names the same file or folder from here (short, as
    the user typed it), else the absolute one; a Hugging Face repo id as given while the cache
    still holds it. ``None`` for anything that is not a record, or when the recorded path (or
    cached repo) no longer exists.
    """
    if not isinstance(entry, dict):
        return None
    given = entry.get("given")
    if entry.get("path") is None and isinstance(given, str):
        # A repo id (checkpoint_record records no path for one), read from the cache.
        return shlex.quote(given) if cached_repo(given) is not None else None
    if not isinstance(entry.get("path"), str):
        return None
    absolute = Path(entry["path"])
    if not absolute.exists():
        return None
    if isinstance(given, str) and _same(Path(given).expanduser(), absolute):
        return shlex.quote(given)
    return shlex.quote(str(absolute))


def _same(path: Path, other: Path) -> bool:
    try:
        return path.samefile(other)
    except OSError:
        return False
