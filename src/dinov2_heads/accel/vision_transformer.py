"""The vision transformer with its position table resized by matrix products."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dinov2_heads.accel.conditions import runs_fast
from dinov2_heads.accel.fallback import failures_summarised
from dinov2_heads.backbone import DinoVisionTransformer
from dinov2_heads.backbone.pos_resample import resample_pos_table
from dinov2_heads.backbone.vision_transformer import BlockSelection


class FastVisionTransformer(DinoVisionTransformer):
    """:class:`~dinov2_heads.DinoVisionTransformer` with a faster position-table resize on a GPU.

    On CUDA the bicubic kernel is slow for a table this small (one thread per output pixel:
    0.9 ms of ViT-S's and 2.6 ms of ViT-L's forward pass at 224x224). The same resize as two
    small resampling matrices (:func:`~dinov2_heads.backbone.pos_resample.resample_pos_table`)
    runs here in float64, so that TF32 matrix products cannot round it: exact to 1e-7. Off the
    GPU, and while tracing, this is the plain model.

    Kernels that fail in its modules during one forward pass are logged as one warning per
    cause (:func:`~dinov2_heads.accel.fallback.failures_summarised`), not one per module.
    """

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Any]:
        if not runs_fast(x):
            return super().forward_features(x, masks)
        with failures_summarised():
            return super().forward_features(x, masks)

    def get_intermediate_tokens(
        self, x: Tensor, n: BlockSelection = 1, *, norm: bool = True
    ) -> tuple[Tensor, ...]:
        if not runs_fast(x):
            return super().get_intermediate_tokens(x, n, norm=norm)
        with failures_summarised():
            return super().get_intermediate_tokens(x, n, norm=norm)

    def _resize_pos_table(self, table: Tensor, grid_h: int, grid_w: int) -> Tensor:
        if not runs_fast(table):
            return super()._resize_pos_table(table, grid_h, grid_w)
        resized = resample_pos_table(
            table.to(torch.float64),
            grid_h,
            grid_w,
            offset=self.interpolate_offset,
            antialias=self.interpolate_antialias,
        )
        return resized.float()
