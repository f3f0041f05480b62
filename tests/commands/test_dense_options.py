"""The test-time options ``segment`` and ``depth`` share, and the output names per image."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dinov2_heads.commands import _dense
from dinov2_heads.dense import Depther, Segmenter, get_preset
from dinov2_heads.heads import LinearDepthHead, LinearSegmentationHead
from tests.dense.conftest import tiny_backbone


def parse(argv: list[str], *, preset: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _dense.add_window_arguments(parser, preset=preset)
    parser.add_argument("--scales", type=float, nargs="+")
    return parser.parse_args(argv)


def test_options_override_a_preset_one_by_one() -> None:
    ms = get_preset("voc2012_ms").settings()
    assert _dense.window_settings(parse([], preset=True), ms) == {
        "mode": "slide",
        "crop_size": (640, 640),
        "stride": (320, 320),
        "flip": True,
        "scales": (1.0, 1.32, 1.73, 2.28, 3.0),
    }
    chosen = _dense.window_settings(
        parse(["--stride", "100", "200", "--no-flip", "--scales", "1", "2"], preset=True), ms
    )
    assert chosen == {
        "mode": "slide",
        "crop_size": (640, 640),
        "stride": (100, 200),
        "flip": False,
        "scales": (1.0, 2.0),
    }
    # --mode whole drops the preset's windows, which whole inference refuses.
    whole = _dense.window_settings(parse(["--mode", "whole"], preset=True), ms)
    assert whole == {"mode": "whole", "flip": True, "scales": ms.scales}
    assert _dense.window_settings(parse([], preset=True)) == {}


def test_without_a_preset_the_mode_is_whole_and_flip_off() -> None:
    assert _dense.window_settings(parse([], preset=False)) == {"mode": "whole", "flip": False}
    slide = parse(
        ["--mode", "slide", "--crop-size", "28", "42", "--stride", "14", "21", "--flip"],
        preset=False,
    )
    assert _dense.window_settings(slide) == {
        "mode": "slide",
        "crop_size": (28, 42),
        "stride": (14, 21),
        "flip": True,
    }
    with pytest.raises(SystemExit):
        parse(["--no-flip"], preset=False)


def test_the_settings_build_the_predictors() -> None:
    backbone = tiny_backbone(depth=4)
    settings = _dense.window_settings(
        parse(["--mode", "slide", "--crop-size", "28", "28", "--stride", "14", "14"], preset=False)
    )
    depther = Depther(backbone, LinearDepthHead(32, layers=4), **settings)
    assert (depther.settings.crop_size, depther.settings.stride) == ((28, 28), (14, 14))
    segmenter = Segmenter(
        backbone,
        LinearSegmentationHead(32, 3),
        **_dense.window_settings(
            parse(["--mode", "whole"], preset=True), get_preset("ade20k_ms").settings()
        ),
    )
    assert segmenter.settings.mode == "whole"
    assert segmenter.settings.num_views == 10
    # A window without --mode slide is the predictor's error, naming the fix.
    with pytest.raises(ValueError, match="pass mode='slide'"):
        Depther(
            backbone,
            LinearDepthHead(32, layers=4),
            **_dense.window_settings(parse(["--crop-size", "28", "28"], preset=False)),
        )


def test_output_names_never_collide() -> None:
    stems = [Path(f"{stem}.jpg") for stem in ["x", "x-2", "x", "x"]]
    assert _dense.output_names(stems, [".png"]) == ["x", "x-2", "x-3", "x-4"]
    paths = [Path("a/car.jpg"), Path("b/car.png"), Path("car-2.jpg"), Path("c/my car.jpg")]
    assert _dense.output_names(paths, [".png"]) == ["car", "car-2", "car-2-2", "my_car"]


def test_output_names_are_safe_and_differ_on_every_file_they_write() -> None:
    # Unsafe characters become _, so "my car" meets "my_car"; a stem of nothing safe is "image".
    paths = [Path("my car.jpg"), Path("my_car.png"), Path("&.jpg"), Path("café's.jpg")]
    assert _dense.output_names(paths, [".png"]) == ["my_car", "my_car-2", "_", "café_s"]
    # A file system that ignores case would make X.png and x.png one file.
    assert _dense.output_names([Path("a/X.jpg"), Path("b/x.jpg")], [".png"]) == ["X", "x-2"]
    # segment writes NAME.png and NAME_overlay.png: x's overlay is not x_overlay's labels.
    both = [".png", "_overlay.png"]
    assert _dense.output_names([Path("x.jpg"), Path("x_overlay.jpg")], both) == [
        "x",
        "x_overlay-2",
    ]
    assert _dense.output_names([Path("x_overlay.jpg"), Path("x.jpg")], both) == [
        "x_overlay",
        "x-2",
    ]
    # The same images in the same order: the same names, whatever the suffixes' order.
    paths = [Path("b/x.jpg"), Path("x_overlay.png"), Path("a/x.jpg"), Path("X.png")]
    names = _dense.output_names(paths, both)
    assert names == _dense.output_names(paths, both[::-1]) == _dense.output_names(paths, both)
    files = [(name + suffix).casefold() for name in names for suffix in both]
    assert len(set(files)) == len(files)
