"""JPEG draft decoding: the reduction chosen, and never fewer pixels than needed."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from PIL import Image

from dinov2_heads.data.pillow import JPEG_REDUCTIONS, draft_jpeg, draft_scale
from tests.data.conftest import write_image


@pytest.mark.parametrize(
    ("size", "needed", "scale"),
    [
        ((4000, 3000), (341, 256), 8),  # a camera photo for the official preset: 500x375
        ((2000, 1500), (341, 256), 4),  # 2000 // 341 = 5, 1500 // 256 = 5: not yet 8
        ((1364, 1024), (341, 256), 4),  # exactly four times on both sides
        ((1363, 1024), (341, 256), 2),  # one pixel short of four times
        ((700, 525), (341, 256), 2),
        ((500, 375), (341, 256), 1),  # the usual 500x375 photo: no reduction
        ((200, 100), (341, 256), 1),  # smaller than needed: enlarged later, never reduced
        ((4000, 500), (448, 56), 8),
        ((4000, 500), (56, 448), 1),  # wide enough but not tall enough
    ],
)
def test_draft_scale_is_the_largest_that_keeps_the_needed_size(
    size: tuple[int, int], needed: tuple[int, int], scale: int
) -> None:
    assert draft_scale(size, needed) == scale


def test_draft_scale_never_goes_below_the_needed_size() -> None:
    sides = [1, 13, 56, 224, 255, 256, 341, 375, 500, 999, 1024, 2048, 3000, 4000, 4032]
    for width, height, need_width, need_height in itertools.product(sides, repeat=4):
        scale = draft_scale((width, height), (need_width, need_height))
        assert scale in (1, *JPEG_REDUCTIONS)
        if scale > 1:
            # What the decoder produces: each side divided by the scale, rounded up.
            assert -(-width // scale) >= need_width
            assert -(-height // scale) >= need_height
            # And the next larger reduction would not have kept the size.
            larger = scale * 2
            if larger <= max(JPEG_REDUCTIONS):
                assert width < larger * need_width or height < larger * need_height


def _decoded(path: Path, needed: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    with Image.open(path) as image:
        scale = draft_jpeg(image, needed)
        image.load()
        return scale, image.size


@pytest.mark.parametrize(
    ("needed", "scale", "size"),
    [
        ((100, 75), 8, (100, 75)),
        ((101, 75), 4, (200, 150)),
        ((200, 150), 4, (200, 150)),
        ((201, 150), 2, (400, 300)),
        ((401, 300), 1, (800, 600)),
    ],
)
def test_a_large_jpeg_decodes_at_the_chosen_reduction(
    tmp_path: Path, needed: tuple[int, int], scale: int, size: tuple[int, int]
) -> None:
    path = write_image(tmp_path / "photo.jpg", height=600, width=800)
    assert _decoded(path, needed) == (scale, size)


def test_reduced_sizes_round_up(tmp_path: Path) -> None:
    path = write_image(tmp_path / "odd.jpg", height=301, width=403)
    assert _decoded(path, (50, 37)) == (8, (51, 38))


@pytest.mark.parametrize("suffix", [".png", ".webp", ".bmp"])
def test_other_formats_are_left_alone(tmp_path: Path, suffix: str) -> None:
    path = write_image(tmp_path / f"photo{suffix}", height=600, width=800)
    assert _decoded(path, (100, 75)) == (1, (800, 600))


def test_greyscale_and_cmyk_jpegs_keep_their_mode(tmp_path: Path) -> None:
    colour = write_image(tmp_path / "colour.png", height=400, width=400)
    for mode in ("L", "CMYK"):
        path = tmp_path / f"{mode}.jpg"
        Image.open(colour).convert(mode).save(path)
        with Image.open(path) as image:
            assert draft_jpeg(image, (50, 50)) == 8
            image.load()
            assert (image.mode, image.size) == (mode, (50, 50))
