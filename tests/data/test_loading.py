from __future__ import annotations

import logging
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads.data import (
    Preprocess,
    SkippedImage,
    UnreadableImageError,
    check_images,
    load_batch,
    load_image,
    pil_to_tensor,
)
from dinov2_heads.data.loading import require_pillow

from .conftest import noise_image, write_image, write_truncated


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_load_image_gives_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    noise_image(6, 8).convert(mode).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (8, 6)


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    pixels = Image.new("RGB", (4, 2), (0, 0, 0))
    pixels.putpixel((0, 0), (255, 255, 255))  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    path = tmp_path / "rotated.png"
    pixels.save(path, exif=exif)
    upright = load_image(path)
    assert upright.size == (2, 4)
    # Turning clockwise moves the top-left corner to the top-right.
    assert pil_to_tensor(upright)[:, 0, 1].tolist() == [255, 255, 255]
    assert pil_to_tensor(upright)[:, 0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_load_image_scales_16_bit_greyscale_to_8_bits(tmp_path: Path, suffix: str) -> None:
    # Pillow's convert("RGB") clips 16-bit values at 255, which turns such images white.
    values = np.linspace(0, 65535, 4 * 64).round().astype(np.uint16).reshape(4, 64)
    path = tmp_path / f"depth{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    x = pil_to_tensor(load_image(path))
    # The high byte, as Pillow keeps for 16-bit RGB and grey+alpha files.
    expected = torch.from_numpy((values >> 8).astype(np.uint8))
    assert x.shape == (3, 4, 64)
    for channel in x:
        assert torch.equal(channel, expected)


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (np.linspace(0.0, 1.0, 32, dtype=np.float32).reshape(4, 8), "floating-point"),
        (np.arange(32, dtype=np.int32).reshape(4, 8) * 100_000, "integer"),
    ],
)
def test_32_bit_images_are_refused_not_clipped(
    tmp_path: Path, values: np.ndarray, kind: str
) -> None:
    # Floats in [0, 1] would come out black, large integers white: no range to map from.
    path = tmp_path / "scan.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("F", "I")
    with pytest.raises(UnreadableImageError, match=f"32-bit {kind} pixels .* scale the image"):
        load_image(path)
    paths, skipped = check_images([path], on_error="skip")
    assert (paths, [entry.path for entry in skipped]) == ([], [path])
    with pytest.raises(ValueError, match="no fixed range"):
        pil_to_tensor(Image.open(path))


@pytest.mark.parametrize("kind", ["truncated", "missing", "text", "empty"])
def test_unreadable_images_raise_with_their_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.jpg"
    if kind == "truncated":
        write_truncated(path)
    elif kind == "text":
        path.write_text("hello")
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=re.escape(str(path))) as info:
        load_image(path)
    assert info.value.path == path
    assert "on_error='skip'" in str(info.value)
    assert isinstance(info.value, OSError)


def test_unreadable_image_error_pickles(tmp_path: Path) -> None:
    error = UnreadableImageError(tmp_path / "x.png", "broken")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.path == error.path
    assert copy.reason == "broken"
    assert str(copy) == str(error)


def test_check_images_skips_and_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = write_image(tmp_path / "good.png")
    bad = write_truncated(tmp_path / "bad.jpg")
    other = write_image(tmp_path / "other.png", seed=1)
    with caplog.at_level(logging.WARNING):
        kept, skipped = check_images([good, bad, other], on_error="skip")
    assert kept == [good, other]
    assert len(skipped) == 1
    assert isinstance(skipped[0], SkippedImage)
    assert skipped[0].path == bad
    assert "truncated" in skipped[0].reason.lower()
    assert str(bad) in caplog.text
    with pytest.raises(UnreadableImageError, match=r"bad\.jpg"):
        check_images([good, bad], on_error="raise")
    with pytest.raises(ValueError, match="'raise' or 'skip'"):
        check_images([good], on_error="ignore")  # type: ignore[arg-type]


def test_load_batch(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png", 30, 40, seed=i) for i in range(3)]
    broken = write_truncated(tmp_path / "broken.jpg")
    files = [paths[0], broken, paths[1], paths[2]]
    batch = load_batch(files, Preprocess(resize=(14, 28)), on_error="skip")
    assert batch.images.shape == (3, 3, 14, 28)
    assert batch.paths == tuple(paths)
    assert [s.path for s in batch.skipped] == [broken]
    default = load_batch(paths[:1])
    assert default.images.shape == (1, 3, 224, 224)
    with pytest.raises(UnreadableImageError):
        load_batch([broken])
    with pytest.raises(ValueError, match="no image could be read"):
        load_batch([broken], on_error="skip")
    # A glob that matched nothing: the message says so, not that images were unreadable.
    with pytest.raises(ValueError, match="load_batch got no image paths"):
        load_batch(tmp_path.glob("*.webp"))
    smaller = write_image(tmp_path / "smaller.png", 20, 30)
    with pytest.raises(ValueError, match="different shapes"):
        load_batch([paths[0], smaller], pil_to_tensor)


def test_missing_pillow_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(
        ImportError, match="a dependency of dinov2-heads that is missing here: pip install Pillow"
    ):
        require_pillow()


def test_importing_the_data_package_does_not_import_pillow() -> None:
    code = "import sys, dinov2_heads.data, dinov2_heads.viz; print('PIL' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
    assert result.stderr == ""


# ---------------------------------------------------------------------- draft decoding

DRAFT = Preprocess(resize=256, crop=(224, 224), draft=True)


def write_photo(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A JPEG that looks like a photo to the decoder: gradients, soft shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([150 * xs + 40, 120 * ys + 50, 100 * (1 - xs) + 60], -1)
    coarse = rng.integers(0, 90, (height // 48 + 2, width // 48 + 2, 3)).astype(np.uint8)
    shapes = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    pixels = np.clip(base + shapes + rng.normal(0, 4, (height, width, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, quality=90)
    return path


def _grey_levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised images, in grey levels (0..255)."""
    std = torch.tensor(DRAFT.std).view(3, 1, 1)
    return (a - b).abs() * std * 255


def test_a_large_jpeg_loads_at_reduced_size_for_a_draft_transform(tmp_path: Path) -> None:
    path = write_photo(tmp_path / "photo.jpg", height=1200, width=1600)
    full = load_image(path)
    reduced = load_image(path, draft_for=DRAFT)
    assert full.size == (1600, 1200)
    # The resize needs 341x256: 1600 // 341 = 4 and 1200 // 256 = 4, so a quarter per side.
    assert reduced.size == (400, 300)
    assert reduced.mode == "RGB"
    # After the whole preprocessing the two differ by a few grey levels at most.
    difference = _grey_levels(DRAFT(reduced), DRAFT(full))
    assert 0 < difference.max() <= 4
    assert difference.mean() <= 0.75
    # The transform's own draft setting decides, not the loader: off means full size.
    assert load_image(path, draft_for=DRAFT.replace(draft=False)).size == (1600, 1200)
    assert load_image(path, draft_for=lambda image: image).size == (1600, 1200)


def test_small_jpegs_and_other_formats_load_exactly_as_without_draft(tmp_path: Path) -> None:
    cases = [
        write_image(tmp_path / "small.jpg", height=375, width=500),  # 500 // 341 = 1
        write_image(tmp_path / "large.png", height=1200, width=1600),
        write_image(tmp_path / "large.webp", height=1200, width=1600),
    ]
    for path in cases:
        assert torch.equal(
            pil_to_tensor(load_image(path, draft_for=DRAFT)), pil_to_tensor(load_image(path))
        ), path.name


def test_draft_size_follows_the_exif_turn(tmp_path: Path) -> None:
    # Stored 4000x1000 and turned a quarter by its EXIF tag: upright it is 1000 wide, 4000 tall.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    noise_image(1000, 4000).save(path, exif=exif)
    # The resize needs 896 wide and 112 tall upright: the file's 1000 stored rows are the
    # upright width, so no reduction keeps it; reducing the stored image by its own sides
    # (4000 // 896 = 4, 1000 // 112 = 8) would give an upright width of 250.
    wide = Preprocess(resize=(112, 896), draft=True)
    assert load_image(path, draft_for=wide).size == (1000, 4000)
    # 56 wide and 224 tall upright is 224 x 56 in the file: a reduction of 8 keeps it.
    tall = Preprocess(resize=(224, 56), draft=True)
    assert load_image(path, draft_for=tall).size == (125, 500)


def test_load_batch_decodes_at_reduced_size_with_a_draft_transform(tmp_path: Path) -> None:
    paths = [
        write_photo(tmp_path / "a.jpg", height=1200, width=1600, seed=1),
        write_image(tmp_path / "b.png", height=1200, width=1600, seed=2),
    ]
    full = load_batch(paths, DRAFT.replace(draft=False)).images
    drafted = load_batch(paths, DRAFT).images
    assert torch.equal(drafted[1], full[1])  # the PNG
    difference = _grey_levels(drafted[0], full[0])
    assert 0 < difference.max() <= 4
    assert torch.equal(drafted[0], DRAFT(load_image(paths[0], draft_for=DRAFT)))
