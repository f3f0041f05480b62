"""The backbone checkpoint that ``dataset.json`` records beside a feature store.

``dinov2-heads extract`` (and the demo) write ``dataset.json`` into the store folder: the
images, their labels and, under ``"checkpoint"``, the checkpoint the features came from, so
that ``train`` can print commands that run its heads with ``--checkpoint PATH`` rather than a
placeholder. Files written before the checkpoint was recorded lack the key; they still work.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dinov2_heads.checkpoints.record import CHECKPOINT_KEY, recorded_argument

# The file beside a store that describes its images; the neighbours read its image paths.
from dinov2_heads.neighbors.image_paths import DATASET_FILE

__all__ = ["DATASET_FILE", "checkpoint_argument", "print_try_next"]


def checkpoint_argument(store: Path | None) -> str | None:
    """``--checkpoint`` as the ``dataset.json`` beside ``store`` records it, quoted for a shell
    (see :func:`~dinov2_heads.checkpoints.record.recorded_argument`); ``None`` when nothing is
    recorded (an older file, a store made in Python) or the checkpoint is gone."""
    if store is None:
        return None
    try:
        recorded = json.loads((store / DATASET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded_argument(recorded.get(CHECKPOINT_KEY) if isinstance(recorded, dict) else None)


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
