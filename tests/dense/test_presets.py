"""The released segmentation heads' presets and label sets, as the official sources give them.

What is pinned here was read in mmsegmentation (``mmseg/datasets/ade.py``, ``voc.py``), in
DINOv2's ``dinov2/eval/segmentation/utils/colormaps.py`` and in copies of the configuration
files released with the heads (see ``dinov2_heads.dense.presets``).
"""

from __future__ import annotations

import pytest

from dinov2_heads.dense import (
    ADE20K,
    LABEL_SETS,
    SEGMENTATION_PRESETS,
    VOC2012,
    LabelSet,
    get_preset,
)

# ---------------------------------------------------------------------- label sets


@pytest.mark.parametrize("labels", [ADE20K, VOC2012], ids=lambda labels: labels.name)
def test_names_are_distinct_clean_and_coloured(labels: LabelSet) -> None:
    names = labels.class_names
    assert len(set(names)) == len(names)
    # mmsegmentation writes "bed " with a trailing space; names here carry no stray spaces.
    assert all(name == name.strip() and name for name in names)
    assert len(labels.palette) == labels.num_classes
    assert all(
        len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        for colour in labels.palette
    )


def test_ade20k_is_mmsegmentations_150_classes_without_other() -> None:
    names = ADE20K.class_names
    assert ADE20K.num_classes == 150
    # Output k is ADE20K label k + 1: the first and last of objectInfo150, no "other".
    assert (names[0], names[-1]) == ("wall", "flag")
    assert "other" not in names
    assert "background" not in names
    pinned = {7: "bed", 12: "person", 20: "car", 44: "chest of drawers", 89: "television receiver"}
    assert {k: names[k] for k in pinned} == pinned
    assert ADE20K.palette[0] == (120, 120, 120)
    assert ADE20K.palette[-1] == (92, 0, 255)
    assert (0, 0, 0) not in ADE20K.palette  # DINOv2's colour for label 0 is left out


def test_ade20k_palette_keeps_the_official_duplicate_grey() -> None:
    grey = (140, 140, 140)
    shared = [ADE20K.class_names[k] for k, colour in enumerate(ADE20K.palette) if colour == grey]
    assert shared == ["road", "skyscraper"]
    assert len(set(ADE20K.palette)) == 149


def _voc_devkit_colour(label: int) -> tuple[int, int, int]:
    """The PASCAL VOC devkit's colour map: the label's bits spread over R, G, B, high first."""
    red = green = blue = 0
    for bit in range(8):
        red |= ((label >> (3 * bit)) & 1) << (7 - bit)
        green |= ((label >> (3 * bit + 1)) & 1) << (7 - bit)
        blue |= ((label >> (3 * bit + 2)) & 1) << (7 - bit)
    return red, green, blue


def test_voc2012_is_the_devkits_21_classes_and_colours() -> None:
    names = VOC2012.class_names
    assert VOC2012.num_classes == 21
    assert (names[0], names[15], names[-1]) == ("background", "person", "tvmonitor")
    assert VOC2012.palette == tuple(_voc_devkit_colour(k) for k in range(21))


def test_label_set_refuses_names_and_colours_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="2 class names but 1 colours"):
        LabelSet("two", ("a", "b"), ((0, 0, 0),))
    assert LABEL_SETS == {"ade20k": ADE20K, "voc2012": VOC2012}


# ---------------------------------------------------------------------- presets


@pytest.mark.parametrize("dataset", ["ade20k", "voc2012"])
def test_linear_presets_carry_the_released_settings(dataset: str) -> None:
    preset = get_preset(f"{dataset}_linear")
    settings = preset.settings()
    assert (settings.mode, settings.crop_size, settings.stride) == ("slide", (512, 512), (341, 341))
    assert (settings.scales, settings.flip) == ((1.0,), False)
    assert preset.layers == 1
    assert preset.labels is LABEL_SETS[dataset]


@pytest.mark.parametrize("dataset", ["ade20k", "voc2012"])
def test_ms_presets_carry_the_released_settings(dataset: str) -> None:
    preset = get_preset(f"{dataset}_ms")
    settings = preset.settings()
    assert (settings.mode, settings.crop_size, settings.stride) == ("slide", (640, 640), (320, 320))
    assert settings.scales == (1.0, 1.32, 1.73, 2.28, 3.0)
    assert settings.flip
    assert preset.layers == 4
    assert preset.settings(scales=(1.0,)).scales == (1.0,)


def test_preset_heads_are_the_released_bnhead_without_dropout() -> None:
    head = get_preset("voc2012_ms").head(384)
    assert (head.num_classes, head.layers, head.dropout_p) == (21, 4, 0.0)
    assert head.class_names is not None
    assert head.class_names[15] == "person"
    assert get_preset("ade20k_linear").head(384, dropout=0.1).dropout_p == 0.1
    assert set(SEGMENTATION_PRESETS) == {
        "ade20k_linear",
        "ade20k_ms",
        "voc2012_linear",
        "voc2012_ms",
    }
    with pytest.raises(ValueError, match="unknown segmentation preset 'cityscapes'"):
        get_preset("cityscapes")


def test_test_sizes_follow_mmcv_rescale() -> None:
    ade, voc = get_preset("ade20k_linear"), get_preset("voc2012_linear")
    assert ade.test_size(512, 683) == (512, 683)
    assert ade.test_size(375, 500) == (512, 683)  # short side to 512
    # ADE20K's released config fits the short side only; VOC2012's caps the long side at 2048.
    assert ade.test_size(300, 2000) == (512, 3413)
    assert voc.test_size(300, 2000) == (307, 2048)
    assert voc.test_size(375, 500) == (512, 683)
    for name in ("ade20k_ms", "voc2012_ms"):
        ms = get_preset(name)
        assert ms.test_size(375, 500) == (640, 853)
        assert ms.test_size(375, 500, ratio=1.32) == (844, 1125)  # 640 * 1.32, truncated
        assert ms.test_size(300, 4000) == (640, 8533)
