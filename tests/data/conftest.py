"""Small image files for the data tests, written with Pillow into temporary folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth gradient plus noise: edges and flat parts, so resizing has work to do."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs / max(width - 1, 1), ys / max(height - 1, 1), (xs + ys) % 7 / 6], -1)
    pixels = np.clip(base * 200 + rng.integers(0, 56, (height, width, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def write_image(path: Path, height: int = 20, width: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(height, width, seed).save(path)
    return path


def write_truncated(path: Path, height: int = 40, width: int = 40) -> Path:
    """A JPEG cut off halfway: Pillow opens it but cannot decode it."""
    write_image(path.with_suffix(".jpg"), height, width)
    data = path.with_suffix(".jpg").read_bytes()
    path.with_suffix(".jpg").unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/{cat,ant,bee}/ with two images each (created out of order), one nested."""
    root = tmp_path / "images"
    write_image(root / "cat" / "c1.png", seed=1)
    write_image(root / "cat" / "deeper" / "c2.jpg", seed=2)
    write_image(root / "ant" / "a1.png", seed=3)
    write_image(root / "ant" / "a2.bmp", seed=4)
    write_image(root / "bee" / "b1.png", seed=5)
    write_image(root / "bee" / "b2.png", seed=6)
    (root / "bee" / "notes.txt").write_text("not an image")
    (root / "bee" / ".hidden.png").write_bytes(b"junk")
    (root / ".cache").mkdir()
    return root
