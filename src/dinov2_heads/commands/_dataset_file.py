"""The backbone checkpoint that ``dataset.json`` records beside a feature store.

``dinov2-heads extract`` (and the demo) write ``dataset.json`` into the store folder: the
images, their labels and, under ``"checkpoint"``, the checkpoint the features came from, so
that ``train`` can print commands that run its heads with ``--checkpoint PATH`` rather than a
placeholder. Files written before the checkpoint was recorded lack the key; they still work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path
from typing import Any

# The file beside a store that describes its images; the neighbours read its image paths.
from dinov2_heads.neighbors.image_paths import DATASET_FILE

__all__ = [
    "CHECKPOINT_KEY",
    "DATASET_FILE",
    "checkpoint_argument",
    "checkpoint_record",
    "print_try_next",
]

#: The key of the checkpoint record: ``{"given": "as typed", "path": "/absolute/path"}``.
CHECKPOINT_KEY = "checkpoint"


def checkpoint_record(given: str | os.PathLike[str]) -> dict[str, str | None]:
    """What ``dataset.json`` records about ``--checkpoint``: the path as given (a file or a
    folder) and its absolute form (``None`` for a Hugging Face repo id read from the cache)."""
    from dinov2_heads.checkpoints.huggingface_cache import looks_like_repo_id

    path = Path(given).expanduser()
    repo_id = isinstance(given, str) and not path.exists() and looks_like_repo_id(given)
    return {"given": os.fspath(given), "path": None if repo_id else str(path.resolve())}


def checkpoint_argument(store: Path | None) -> str | None:
    """``--checkpoint`` as the ``dataset.json`` beside ``store`` records it, quoted for a shell.

    The path as it was given when it still names the same file or folder from here (short, as
    the user typed it), else the absolute one; a Hugging Face repo id as given while the cache
    still holds it. ``None`` when nothing is recorded (an older file, a store made in Python)
    or the recorded path (or cached repo) no longer exists.
    """
    from dinov2_heads.checkpoints.huggingface_cache import cached_repo

    if store is None:
        return None
    try:
        recorded = json.loads((store / DATASET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry: Any = recorded.get(CHECKPOINT_KEY) if isinstance(recorded, dict) else None
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


def print_try_next(heads_file: Path, store: Path | None) -> None:
    """The commands that use ``heads_file`` (the ones ``inspect`` shows for it), after ``train``.

    ``--checkpoint`` is the checkpoint that ``dataset.json`` beside ``store`` records, when it
    still exists; else the placeholder BACKBONE, which the heading explains.
    """
    from dinov2_heads.export import describe_heads

    checkpoint = checkpoint_argument(store)
    if checkpoint is not None:
        print("\ntry next (IMAGES: image files or folders):")
    else:
        print(
            "\ntry next (BACKBONE: the checkpoint the features were extracted with, which the "
            "store does not record; IMAGES: image files or folders):"
        )
    summary = dataclasses.replace(describe_heads(heads_file), checkpoint=checkpoint)
    for line in summary.commands():
        print(f"  {line}")
