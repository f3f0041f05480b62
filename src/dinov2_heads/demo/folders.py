"""Writing a demo data set as a folder that appears complete or not at all, sample images, and
the dense heads the demo trains."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from torch import nn

from dinov2_heads.atomic import atomic_path
from dinov2_heads.export import save_heads

logger = logging.getLogger(__name__)


def write_tree(root: Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder in a hidden sibling, then rename it to ``root`` in one step."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} already exists and is not an empty folder; choose a new path"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        fill(staging)
        for path in staging.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
        if root.exists():
            root.rmdir()
        staging.chmod(0o755)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s", root)
    return root


def write_samples(folder: Path, pictures: Iterable[tuple[int, Image.Image]]) -> None:
    """Write each ``(index, picture)`` to ``folder`` as ``<index>.png`` (six digits), each file
    atomically, after removing the numbered samples an earlier run left there."""
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("[0-9]*.png"):
        stale.unlink()
    for index, picture in pictures:
        with atomic_path(folder / f"{index:06d}.png") as temporary:
            picture.save(temporary, format="PNG")


def save_demo_head(
    files: Mapping[str, Path],
    head: nn.Module,
    backbone: nn.Module,
    input_size: tuple[int, int],
    metrics: Mapping[str, Any],
    pictures: Iterable[tuple[int, Image.Image]],
) -> None:
    """Save a dense head of the demo as ``dinov2-heads train`` saves one (alone, with the
    backbone, the input size and its held-out ``metrics``) to ``files["heads"]``, and its held-out
    ``pictures`` to ``files["samples"]`` (see :func:`write_samples`)."""
    save_heads(
        files["heads"],
        head,
        backbone=backbone,
        input_size=input_size,
        extra={"made_by": "dinov2-heads demo", "heldout_metrics": dict(metrics)},
    )
    write_samples(files["samples"], pictures)
