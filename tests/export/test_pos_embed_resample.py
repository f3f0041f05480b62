"""The position-embedding resize used under ``torch.export`` equals the official one.

The exported graphs themselves are checked against PyTorch and the official outputs in
``test_onnx.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinov2_heads.backbone.pos_resample import resample_pos_table

GRIDS = [(1, 1), (2, 3), (9, 18), (16, 16), (36, 37), (37, 36), (38, 38), (45, 46), (100, 20)]


@pytest.mark.parametrize("grid", GRIDS)
def test_resampling_matrices_equal_the_official_bicubic_resize(grid: tuple[int, int]) -> None:
    table = torch.randn(1, 8, 37, 37, generator=torch.Generator().manual_seed(0))
    h, w = grid
    plain = F.interpolate(table, scale_factor=((h + 0.1) / 37, (w + 0.1) / 37), mode="bicubic")
    antialiased = F.interpolate(table, size=(h, w), mode="bicubic", antialias=True)

    ours_plain = resample_pos_table(table, h, w, offset=0.1, antialias=False)
    ours_antialiased = resample_pos_table(table, h, w, offset=0.0, antialias=True)

    assert ours_plain.shape == plain.shape == (1, 8, h, w)
    assert ours_antialiased.shape == antialiased.shape
    # Float rounding only (a wrong weight would show at 1e-2 of the values): PyTorch's own
    # float32 result differs from its float64 one by up to ~4e-6 of the largest value.
    tolerance = 5e-6 * table.abs().max()
    assert (ours_plain - plain).abs().max() < tolerance
    assert (ours_antialiased - antialiased).abs().max() < tolerance


def test_the_table_size_is_kept_unchanged() -> None:
    table = torch.randn(1, 8, 37, 37)
    for antialias, offset in ((False, 0.1), (True, 0.0)):
        same = resample_pos_table(table, 37, 37, offset=offset, antialias=antialias)
        assert torch.allclose(same, table, atol=1e-6, rtol=0)
    # Only both sides equal to the table's count: one side alone is still resized (plain).
    resized = resample_pos_table(table, 37, 36, offset=0.1, antialias=False)
    official = F.interpolate(table, scale_factor=(37.1 / 37, 36.1 / 37), mode="bicubic")
    assert (resized - official).abs().max() < 5e-6 * table.abs().max()
