"""``on_error="skip"`` checks JPEG files at 1/8 size and finds exactly what a full decode finds."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from dinov2_heads.data import (
    ImageFolderDataset,
    Preprocess,
    UnreadableImageError,
    check_images,
    load_image,
)
from dinov2_heads.data.loading import _check_image

from .conftest import noise_image

WIDTH, HEIGHT = 320, 240


def jpeg_bytes(tmp_path: Path, *, progressive: bool = False, seed: int = 0) -> bytes:
    path = tmp_path / f"source-{progressive}-{seed}.jpg"
    noise_image(HEIGHT, WIDTH, seed).save(path, quality=90, progressive=progressive)
    data = path.read_bytes()
    path.unlink()
    return data


def full_decode_fails(path: Path) -> bool:
    """The reference: does a decode at full size, as ``load_image`` without draft, fail?"""
    try:
        load_image(path)
    except UnreadableImageError:
        return True
    return False


def check_fails(path: Path) -> bool:
    kept, skipped = check_images([path], on_error="skip")
    assert len(kept) + len(skipped) == 1
    return bool(skipped)


def flipped(data: bytes, position: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 1 << bit
    return bytes(changed)


def overwritten(data: bytes, position: int, fill: bytes) -> bytes:
    return data[:position] + fill + data[position + len(fill) :]


#: The damaged files of the issue, by name: bytes of a good JPEG -> bytes written.
DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "cut at 10%": lambda data: data[: len(data) // 10],
    "cut at half": lambda data: data[: len(data) // 2],
    "cut at 90%": lambda data: data[: len(data) * 9 // 10],
    "end marker missing": lambda data: data[:-2],
    "header only": lambda data: data[:600],
    "a bit flipped in the middle": lambda data: flipped(data, len(data) // 2, 3),
    "a byte flipped in the middle": lambda data: overwritten(
        data, len(data) // 2, bytes([data[len(data) // 2] ^ 0xFF])
    ),
    "garbage in the middle": lambda data: overwritten(
        data, len(data) // 2, bytes(random.Random(0).randrange(256) for _ in range(64))
    ),
    "zeros in the middle": lambda data: overwritten(data, len(data) // 3, bytes(2048)),
    "a marker in the middle": lambda data: overwritten(data, len(data) // 2, b"\xff\xd9"),
    "start marker broken": lambda data: flipped(data, 1),
}


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_jpegs_are_found_as_by_a_full_decode(
    damage: str, progressive: bool, tmp_path: Path
) -> None:
    path = tmp_path / "damaged.jpg"
    path.write_bytes(DAMAGE[damage](jpeg_bytes(tmp_path, progressive=progressive)))
    assert check_fails(path) == full_decode_fails(path)
    if not check_fails(path):
        # Kept: it loads, at full size and drafted (a wrongly kept file would fail mid-run).
        assert load_image(path).size == (WIDTH, HEIGHT)
        load_image(path, draft_for=Preprocess(resize=32, crop=(28, 28), draft=True))


def test_truncated_files_are_found_whatever_the_format(tmp_path: Path) -> None:
    good_jpeg = jpeg_bytes(tmp_path)
    png = tmp_path / "good.png"
    noise_image(HEIGHT, WIDTH).save(png)
    files = {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "truncated.png": png.read_bytes()[: len(png.read_bytes()) * 2 // 3],
        "text.jpg": b"not really a jpeg",
        "empty.jpg": b"",
        "good.jpg": good_jpeg,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / name for name in files] + [png, tmp_path / "missing.jpg"]
    kept, skipped = check_images(paths, on_error="skip")
    assert kept == [tmp_path / "good.jpg", png]
    assert [record.path.name for record in skipped] == [
        "truncated.jpg",
        "truncated.png",
        "text.jpg",
        "empty.jpg",
        "missing.jpg",
    ]
    assert [full_decode_fails(path) for path in paths] == [path not in kept for path in paths]


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_sweep_of_cuts_and_damage_agrees_with_the_full_decode(
    progressive: bool, tmp_path: Path
) -> None:
    data = jpeg_bytes(tmp_path, progressive=progressive, seed=1)
    rng = random.Random(progressive)
    cases = [data[:cut] for cut in range(0, len(data), max(len(data) // 40, 1))]
    cases += [flipped(data, rng.randrange(len(data)), rng.randrange(8)) for _ in range(40)]
    cases += [
        overwritten(data, rng.randrange(len(data)), rng.randbytes(rng.randrange(1, 48)))
        for _ in range(40)
    ]
    path = tmp_path / "case.jpg"
    failures = []
    for case in cases:
        path.write_bytes(case)
        failed = full_decode_fails(path)
        assert check_fails(path) == failed, len(case)
        failures.append(failed)
    # Both kinds are in the sweep: files that fail and damaged files that still decode.
    assert any(failures)
    assert not all(failures)


def test_the_check_decodes_a_large_jpeg_at_an_eighth(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    noise_image(HEIGHT, WIDTH).save(path)
    assert _check_image(path).size == (WIDTH // 8, HEIGHT // 8)
    png = tmp_path / "large.png"
    noise_image(HEIGHT, WIDTH).save(png)
    assert _check_image(png).size == (WIDTH, HEIGHT)


def test_a_turned_jpeg_is_checked_upright(tmp_path: Path) -> None:
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[274] = 6  # a quarter turn
    noise_image(HEIGHT, WIDTH).save(path, exif=exif)
    assert _check_image(path).size == (HEIGHT // 8, WIDTH // 8)


def test_a_folder_dataset_skips_what_a_full_decode_cannot_read(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    data = jpeg_bytes(tmp_path)
    (root / "a" / "good.jpg").write_bytes(data)
    (root / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "b" / "flipped.jpg").write_bytes(DAMAGE["a bit flipped in the middle"](data))
    (root / "b" / "empty.jpg").write_bytes(b"")
    dataset = ImageFolderDataset(root, Preprocess(resize=32, crop=(28, 28)), on_error="skip")
    assert sorted(record.path.name for record in dataset.skipped) == ["cut.jpg", "empty.jpg"]
    assert sorted(path.name for path in dataset.paths) == ["flipped.jpg", "good.jpg"]
    for index in range(len(dataset)):
        image, _ = dataset[index]
        assert image.shape == (3, 28, 28)
