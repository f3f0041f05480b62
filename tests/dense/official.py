"""Reference definitions written from the official code, one crop and one view at a time.

- ``official_center_padding``: ``CenterPadding`` of the DINOv2 notebook and hub.
- ``official_slide`` / ``official_aug_test``: mmsegmentation 0.x ``EncoderDecoder``
  (``slide_inference``, ``inference``, ``aug_test``): crops one at a time placed with ``F.pad``
  and divided by the count; softmax per view; flipped views mirrored back; views averaged.
- ``OfficialSegmentor``: ``EncoderDecoder`` with the notebook's backbone hook
  (``CenterPadding(14)`` then ``get_intermediate_layers(n=out_indices, reshape=True)``) and the
  official ``BNHead`` (``resize_concat``, ``bn``, ``conv_seg``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def official_center_padding(x: Tensor, multiple: int) -> Tensor:
    """The official module, written out: pads for the last two sides, W first, then H."""

    def get_pad(size: int) -> tuple[int, int]:
        new_size = math.ceil(size / multiple) * multiple
        pad_size = new_size - size
        pad_size_left = pad_size // 2
        return pad_size_left, pad_size - pad_size_left

    pads = list(itertools.chain.from_iterable(get_pad(m) for m in x.shape[:1:-1]))
    return F.pad(x, pads)


def official_slide(
    model: Callable[[Tensor], Tensor], img: Tensor, crop: tuple[int, int], stride: tuple[int, int]
) -> Tensor:
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    batch_size, _, h_img, w_img = img.size()
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds: Tensor | None = None
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_seg_logit = model(img[:, :, y1:y2, x1:x2])
            if preds is None:
                preds = img.new_zeros((batch_size, crop_seg_logit.shape[1], h_img, w_img))
            preds += F.pad(crop_seg_logit, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    assert preds is not None
    return preds / count_mat


def official_aug_test(
    model: Callable[[Tensor], Tensor],
    img: Tensor,
    scales: list[float],
    flip: bool,
    slide: tuple[tuple[int, int], tuple[int, int]] | None,
) -> Tensor:
    """MultiScaleFlipAug views (resize, then flip), each inferred with rescale and softmax."""
    ori_shape = img.shape[-2:]
    outputs = []
    for scale in scales:
        size = (int(img.shape[-2] * scale + 0.5), int(img.shape[-1] * scale + 0.5))
        resized = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        for flipped in [False, True] if flip else [False]:
            view = resized.flip(dims=(3,)) if flipped else resized
            logit = official_slide(model, view, *slide) if slide else model(view)
            logit = F.interpolate(logit, size=ori_shape, mode="bilinear", align_corners=False)
            output = F.softmax(logit, dim=1)
            outputs.append(output.flip(dims=(3,)) if flipped else output)
    seg_logit = outputs[0].clone()
    for output in outputs[1:]:
        seg_logit += output
    return seg_logit / len(outputs)


class OfficialSegmentor:
    """EncoderDecoder + notebook hook + BNHead, on a backbone and a head's parameters.

    Args:
        backbone: A model with the official ``get_intermediate_layers``.
        bn: The head's batch norm (eval mode), ``conv_seg`` its 1x1 convolution.
        out_indices: Blocks the hook returns (the released configs use the last four and
            ``in_index=[3]`` for "linear"); ``in_index`` picks those the head reads.
    """

    def __init__(
        self,
        backbone: nn.Module,
        bn: nn.Module,
        conv_seg: nn.Module,
        out_indices: list[int],
        in_index: list[int],
    ) -> None:
        self.backbone, self.bn, self.conv_seg = backbone, bn, conv_seg
        self.out_indices, self.in_index = out_indices, in_index

    def extract_feat(self, img: Tensor) -> tuple[Tensor, ...]:
        padded = official_center_padding(img, 14)
        return self.backbone.get_intermediate_layers(padded, n=self.out_indices, reshape=True)

    def decode(self, inputs: tuple[Tensor, ...]) -> Tensor:
        chosen = [inputs[i] for i in self.in_index]
        upsampled = [
            F.interpolate(x, size=chosen[0].shape[2:], mode="bilinear", align_corners=False)
            for x in chosen
        ]
        return self.conv_seg(self.bn(torch.cat(upsampled, dim=1)))

    def encode_decode(self, img: Tensor) -> Tensor:
        out = self.decode(self.extract_feat(img))
        return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=False)
