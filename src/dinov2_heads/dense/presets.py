"""Test settings of the released DINOv2 segmentation heads, one preset per head file family.

The values are those of the configuration files released with the heads
(``dinov2_{arch}_{ade20k,voc2012}_{linear,ms}_config.py``, the files the official notebook
loads): test images resized to fit ``image_scale`` (mmsegmentation's ``Resize`` with
``keep_ratio``), then sliding windows; the "ms" heads add the ratios and the flip of
``MultiScaleFlipAug``.

Checked against copies of the released configuration files (their ``test`` pipeline and
``test_cfg``): ``ade20k_linear`` (vits14, vitb14, vitg14), ``voc2012_linear`` (vitl14) and
``voc2012_ms`` (vits14). Each "linear" config reads ``in_index=[3]`` of four blocks (the last
one) and each "ms" config all four; every config sets ``dropout_ratio=0``. The
``ade20k_ms`` values were not seen in a released file: they are the ``voc2012_ms`` ones, which
match the paper's description of "+ms" (the last four blocks, resolution 640, multi-scale
test-time augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dinov2_heads.dense.inference import InferenceSettings
from dinov2_heads.dense.label_sets import ADE20K, VOC2012, LabelSet
from dinov2_heads.heads.linear_segmentation import LinearSegmentationHead


@dataclass(frozen=True)
class SegmentationPreset:
    """How a family of released segmentation heads is built and tested.

    Attributes:
        name: ``"{dataset}_{linear|ms}"``, as in the released file names.
        labels: Class names and palette of the K outputs.
        layers: Blocks the head reads (1 for "linear", 4 for "ms").
        crop_size: Sliding-window size (height, width).
        stride: Sliding-window step (height, width).
        scales: Test-time resize ratios.
        flip: Test-time horizontal flip.
        image_scale: mmsegmentation's ``img_scale`` (long edge, short edge) that a test image is
            fitted into at ratio 1.0 before inference.
    """

    name: str
    labels: LabelSet
    layers: int
    crop_size: tuple[int, int]
    stride: tuple[int, int]
    scales: tuple[float, ...]
    flip: bool
    image_scale: tuple[int, int]

    @property
    def num_classes(self) -> int:
        """K."""
        return self.labels.num_classes

    def settings(self, **overrides: Any) -> InferenceSettings:
        """The :class:`InferenceSettings` of this preset; keyword arguments replace fields."""
        values: dict[str, Any] = {
            "mode": "slide",
            "crop_size": self.crop_size,
            "stride": self.stride,
            "flip": self.flip,
            "scales": self.scales,
        }
        values.update(overrides)
        return InferenceSettings(**values)

    def head(self, embed_dim: int, **kwargs: Any) -> LinearSegmentationHead:
        """A fresh head of this family for a backbone of width D, with the class names.

        Dropout is off, as in the released configs (``dropout_ratio=0``); pass ``dropout`` to
        train with it.
        """
        kwargs.setdefault("class_names", self.labels.class_names)
        kwargs.setdefault("dropout", 0.0)
        return LinearSegmentationHead(embed_dim, self.num_classes, layers=self.layers, **kwargs)

    def test_size(self, height: int, width: int, ratio: float = 1.0) -> tuple[int, int]:
        """The size (H, W) the official pipeline resizes an H x W image to, at ``ratio``.

        mmsegmentation multiplies ``image_scale`` by the ratio (truncating), then mmcv fits the
        image inside it keeping the aspect ratio, rounding half up.
        """
        long_edge, short_edge = (int(side * ratio) for side in self.image_scale)
        factor = min(
            max(long_edge, short_edge) / max(height, width),
            min(long_edge, short_edge) / min(height, width),
        )
        return int(height * factor + 0.5), int(width * factor + 0.5)


#: The "ms" test ratios, as the released configs list them.
_MS_RATIOS = (1.0, 1.32, 1.73, 2.28, 3.0)
#: mmsegmentation's way of fitting the short side only: a long edge no image reaches.
_NO_LONG_EDGE_LIMIT = 99999999


def _linear(name: str, labels: LabelSet, image_scale: tuple[int, int]) -> SegmentationPreset:
    return SegmentationPreset(
        name=name,
        labels=labels,
        layers=1,
        crop_size=(512, 512),
        stride=(341, 341),
        scales=(1.0,),
        flip=False,
        image_scale=image_scale,
    )


def _ms(name: str, labels: LabelSet) -> SegmentationPreset:
    return SegmentationPreset(
        name=name,
        labels=labels,
        layers=4,
        crop_size=(640, 640),
        stride=(320, 320),
        scales=_MS_RATIOS,
        flip=True,
        image_scale=(_NO_LONG_EDGE_LIMIT, 640),
    )


#: Preset name -> preset, for the released ``*_{ade20k,voc2012}_{linear,ms}_head.pth`` files.
SEGMENTATION_PRESETS: dict[str, SegmentationPreset] = {
    # ADE20K linear: short side to 512, the long side unbounded.
    "ade20k_linear": _linear("ade20k_linear", ADE20K, (_NO_LONG_EDGE_LIMIT, 512)),
    "ade20k_ms": _ms("ade20k_ms", ADE20K),
    # VOC2012 linear: fit inside 2048 x 512, as mmsegmentation's own PASCAL VOC config.
    "voc2012_linear": _linear("voc2012_linear", VOC2012, (2048, 512)),
    "voc2012_ms": _ms("voc2012_ms", VOC2012),
}


def get_preset(name: str) -> SegmentationPreset:
    """The preset called ``name`` (``ValueError`` listing the known ones otherwise)."""
    if name not in SEGMENTATION_PRESETS:
        raise ValueError(
            f"unknown segmentation preset {name!r}; the presets are "
            f"{', '.join(SEGMENTATION_PRESETS)}"
        )
    return SEGMENTATION_PRESETS[name]
