"""Whole-image and sliding-window inference with flips and scales, for any per-pixel model.

The official dense evaluations (mmsegmentation 0.x ``EncoderDecoder`` for segmentation, the
hub's ``DepthEncoderDecoder`` for depth) share one test-time procedure, written here once:

- ``whole``: the model sees the image as it is;
- ``slide``: crops of ``crop_size`` every ``stride`` pixels, the last crop of a row or column
  shifted back inside the image; crop outputs are summed and divided by how many crops cover
  each pixel. Unlike the official loop, which runs one crop at a time, the crops go through
  the model in batches;
- ``scales``: the image is resized by each ratio, inferred, and the output resized back;
- ``flip``: the horizontal mirror is inferred too and its output mirrored back;
- the ``activation`` (softmax for segmentation) is applied to each view's output, and the
  views (scales x flips, scale-major) are averaged.

The model is a callable ``images (B, 3, H, W) -> output (B, C, H, W)`` at the size of the
images it is given (``Segmenter`` and ``Depther`` pad, run the backbone and head, and resize).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads.dense.shapes import known_equal

#: images (B, 3, H, W) -> per-pixel output (B, C, H, W) at the same H, W.
DenseForward = Callable[[Tensor], Tensor]
#: A crop's place in the image: (top, bottom, left, right), bottom and right exclusive.
Window = tuple[int, int, int, int]

MODES = ("whole", "slide")


@dataclass(frozen=True)
class InferenceSettings:
    """How an image is run through a dense model at test time; checked on creation.

    Attributes:
        mode: ``"whole"`` or ``"slide"``.
        crop_size: (height, width) of the sliding window (``slide`` only; an int means square).
        stride: (height, width) step between windows (``slide`` only), at most ``crop_size``.
        flip: Also infer the horizontal mirror and average.
        scales: Resize ratios, each inferred and averaged (``(1.0,)``: the image as given).
        crops_per_call: How many windows go through the model together (``None``: all of
            them). ``1`` is the official one-crop-at-a-time loop.
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    crops_per_call: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'whole' or 'slide', got {self.mode!r}")
        crop = _pair(self.crop_size, "crop_size")
        stride = _pair(self.stride, "stride")
        if self.mode == "slide":
            if crop is None or stride is None:
                raise ValueError(
                    "mode='slide' needs crop_size and stride, for example crop_size=(512, 512), "
                    "stride=(341, 341) as the official ADE20K and VOC2012 linear heads use"
                )
            if stride[0] > crop[0] or stride[1] > crop[1]:
                raise ValueError(
                    f"stride {stride} is larger than crop_size {crop}, which would leave pixels "
                    "that no crop covers; use a stride at most the crop size"
                )
        elif crop is not None or stride is not None:
            raise ValueError(
                f"crop_size and stride are used only by mode='slide', got mode={self.mode!r} "
                f"with crop_size={self.crop_size!r}, stride={self.stride!r}; pass "
                "mode='slide' or leave them out"
            )
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip must be True or False, got {self.flip!r}")
        scales: object = self.scales
        if isinstance(scales, int | float) or not isinstance(scales, Sequence) or not scales:
            raise ValueError(f"scales must be a non-empty sequence of ratios, got {scales!r}")
        for scale in scales:
            if (
                isinstance(scale, bool)
                or not isinstance(scale, int | float)
                or not math.isfinite(scale)
                or scale <= 0
            ):
                raise ValueError(f"each scale must be a positive number, got {scale!r}")
        per_call = self.crops_per_call
        if per_call is not None and (
            isinstance(per_call, bool) or not isinstance(per_call, int) or per_call < 1
        ):
            raise ValueError(f"crops_per_call must be a positive int or None, got {per_call!r}")
        object.__setattr__(self, "crop_size", crop)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))

    @property
    def num_views(self) -> int:
        """How many views are averaged: scales x (2 with flip, else 1)."""
        return len(self.scales) * (2 if self.flip else 1)


def _pair(value: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def sliding_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> tuple[Window, ...]:
    """mmsegmentation's crop grid over an H x W image, row by row.

    ``max(H - crop + stride - 1, 0) // stride + 1`` windows per column (likewise per row);
    each starts at ``i * stride``, and one that would pass the edge is shifted back to end at
    it. A crop larger than the image is clipped to the image.
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            bottom = min(row * stride_h + crop_h, height)
            right = min(col * stride_w + crop_w, width)
            windows.append((max(bottom - crop_h, 0), bottom, max(right - crop_w, 0), right))
    return tuple(windows)


def coverage(height: int, width: int, windows: Sequence[Window], device: torch.device) -> Tensor:
    """(1, 1, H, W) count of the windows that cover each pixel."""
    count = torch.zeros(1, 1, height, width, device=device)
    for top, bottom, left, right in windows:
        count[:, :, top:bottom, left:right] += 1
    return count


def slide_inference(
    forward: DenseForward,
    images: Tensor,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
    *,
    crops_per_call: int | None = None,
) -> Tensor:
    """Sliding-window output (B, C, H, W): crop outputs summed, divided by the coverage.

    Args:
        forward: The model, ``(n, 3, h, w) -> (n, C, h, w)``.
        images: (B, 3, H, W).
        crop_size: (height, width) of a window.
        stride: (height, width) between windows.
        crops_per_call: Windows per model call, each carrying the B images (``None``: all).
    """
    height, width = images.shape[-2:]
    windows = sliding_windows(height, width, crop_size, stride)
    per_call = crops_per_call or len(windows)
    batch = images.shape[0]
    total: Tensor | None = None
    for start in range(0, len(windows), per_call):
        chunk = windows[start : start + per_call]
        # Every window has the same size, so the crops stack along the batch: (k * B, 3, h, w).
        crops = torch.cat(
            [images[:, :, top:bottom, left:right] for top, bottom, left, right in chunk]
        )
        outputs = forward(crops)
        if total is None:
            total = outputs.new_zeros(batch, outputs.shape[1], height, width)
        for i, (top, bottom, left, right) in enumerate(chunk):
            total[:, :, top:bottom, left:right] += outputs[i * batch : (i + 1) * batch]
    assert total is not None  # there is always at least one window
    return total / coverage(height, width, windows, total.device).to(total.dtype)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """H x W resized by ``scale``, rounded half up as mmcv's ``imrescale`` rounds."""
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with ``align_corners=False`` (mmseg's ``resize``); a no-op at the size.

    Under ``torch.export`` the resize stays in the graph unless the sizes are equal for every
    input size (see :func:`~dinov2_heads.dense.shapes.known_equal`).
    """
    if known_equal(x.shape[-2:], size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def dense_inference(
    forward: DenseForward,
    images: Tensor,
    settings: InferenceSettings,
    *,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The official test-time procedure around ``forward``: (B, 3, H, W) -> (B, C, H, W).

    For each scale (then each flip), the images are resized (bilinear), mirrored, run whole or
    by sliding windows, resized back to H x W, passed through ``activation``, mirrored back,
    and all views are averaged. The original and the mirror go through the model together.

    Args:
        forward: The model, ``(n, 3, h, w) -> (n, C, h, w)`` at the size it is given.
        images: (B, 3, H, W).
        settings: Mode, windows, flip and scales.
        activation: Applied to each view's output before averaging (``softmax`` over classes
            for segmentation); ``None`` averages the raw outputs.
    """
    height, width = images.shape[-2:]
    batch = images.shape[0]
    total: Tensor | None = None
    for scale in settings.scales:
        size = scaled_size(height, width, scale) if scale != 1.0 else (height, width)
        view = resize(images, size)
        if settings.flip:
            view = torch.cat([view, view.flip(-1)])
        if settings.mode == "slide":
            assert settings.crop_size is not None
            assert settings.stride is not None
            out = slide_inference(
                forward,
                view,
                settings.crop_size,
                settings.stride,
                crops_per_call=settings.crops_per_call,
            )
        else:
            out = forward(view)
        out = resize(out, (height, width))
        if activation is not None:
            out = activation(out)
        parts = [out[:batch]]
        if settings.flip:
            parts.append(out[batch:].flip(-1))
        for part in parts:
            total = part if total is None else total + part
    assert total is not None  # scales is never empty
    return total / settings.num_views
