"""Writing a demo data set as a folder that appears complete or not at all, and sample images."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

from dinov2_heads.atomic import atomic_path

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
