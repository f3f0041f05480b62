"""Every registered head type exports and matches PyTorch on odd and even patch grids.

A head whose forward branches on tensor sizes (the DPT fusion once resized its skip map only
when the two maps differed, which they do for odd grid sides) is exported with the traced
size's branch only; its graph fails, or differs, at grids of the other parity. The export's
own check runs a second size of the other parity on both sides, so such a graph is refused
when it is written; the tests below hold every head type to odd and even sides in both
directions, in every combination.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor, nn

from dinov2_heads import create_backbone
from dinov2_heads.dense import Depther
from dinov2_heads.export import dense_onnx as dense_module
from dinov2_heads.export import export_dense_onnx, export_onnx, verify_onnx
from dinov2_heads.export import onnx as onnx_module
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import (
    HEAD_TYPES,
    Conv1dNeck,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
)
from tests.helpers import randomize

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4
WIDTH = 32
#: Patch grids (h, w) of every parity combination: odd x even, even x odd, odd x odd, even x
#: even.
GRIDS = [(3, 2), (2, 5), (5, 3), (4, 4)]

#: A small head of each registered type, built for a WIDTH-wide backbone of four blocks.
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "LinearHead": lambda: LinearHead(WIDTH, 3, n_blocks=2),
    "Conv1dNeck": lambda: Conv1dNeck((3, 4), WIDTH, 3),
    "LinearDepthHead": lambda: LinearDepthHead(WIDTH, layers=4, n_bins=8, max_depth=10.0),
    "DPTDepthHead": lambda: DPTDepthHead(WIDTH, channels=8),
    "LinearSegmentationHead": lambda: LinearSegmentationHead(WIDTH, 4, layers=2),
}
#: The types built for one patch grid, exported with a fixed size.
FIXED_GRID = {"Conv1dNeck"}


def trained_looking(head: nn.Module, seed: int = 0) -> nn.Module:
    """``head`` with random weights, biases and norm statistics (a fresh head's zero biases and
    identity BatchNorm would hide a misplaced one), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.parameters():
            noise = torch.randn(param.shape, generator=generator)
            # Weights of a unit gain (outputs of order one, so atol means what it says).
            fan_in = param[0].numel() if param.ndim > 1 else 10
            param.copy_(noise / fan_in**0.5)
        for module in head.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                assert module.running_mean is not None
                assert module.running_var is not None
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return head.eval()


def backbone(depth: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = create_backbone("dinov2_vits14", depth=depth, embed_dim=WIDTH, num_heads=2)
    return randomize(model)


def assert_matches_on(path: Path, frozen: FrozenBackbone, heads: nn.Module, grid: tuple) -> None:
    """The graph's outputs equal PyTorch's on a batch of two images of ``grid`` patches."""
    generator = torch.Generator().manual_seed(grid[0] * 100 + grid[1])
    images = torch.randn(2, 3, 14 * grid[0], 14 * grid[1], generator=generator)
    diffs = verify_onnx(path, frozen, heads, images)
    assert max(diffs.values()) <= ATOL, (grid, diffs)
    with torch.no_grad():
        outputs = heads(frozen(images))
    for name, output in outputs.items() if isinstance(outputs, dict) else [("out", outputs)]:
        assert output.std() > 1e-3, (name, grid)  # not a constant: the comparison says something


def covers_both_parities(shapes: list[tuple[int, int, int, int]], patch: int = 14) -> bool:
    grids = {(-(-s[2] // patch), -(-s[3] // patch)) for s in shapes}
    return all({side[i] % 2 for side in grids} == {0, 1} for i in (0, 1))


def test_every_registered_head_type_is_held_to_both_parities() -> None:
    # A new head type in the registry needs a small instance here, and so these tests.
    assert set(BUILDERS) == set(HEAD_TYPES)
    for name, build in BUILDERS.items():
        assert type(build()) is HEAD_TYPES[name]


@pytest.mark.slow
@pytest.mark.parametrize("type_name", sorted(set(BUILDERS) - FIXED_GRID - {"DPTDepthHead"}))
def test_each_head_type_exports_with_a_dynamic_size_and_matches_on_every_parity(
    tmp_path: Path, type_name: str
) -> None:
    # The DPT head, whose export takes longest by far, is held to the same in the MultiHead
    # below (and alone, padding included, in test_dense_onnx).
    head = trained_looking(BUILDERS[type_name]())
    frozen = FrozenBackbone.for_heads(backbone(), head, n_last_blocks=2)
    path = tmp_path / f"{type_name}.onnx"
    # Traced at an odd x odd grid; the MultiHead below is traced at an even x even one.
    result = export_onnx(frozen, head, path, input_size=(42, 70))
    assert result.dynamic_size
    assert result.max_abs_diff is not None
    assert max(result.max_abs_diff.values()) <= ATOL
    assert covers_both_parities(result.checked_shapes)
    for grid in GRIDS:
        assert_matches_on(path, frozen, head, grid)


@pytest.mark.slow
def test_a_multihead_of_every_dynamic_type_matches_on_every_parity(tmp_path: Path) -> None:
    heads = MultiHead(
        {
            name: trained_looking(build(), seed)
            for seed, (name, build) in enumerate(BUILDERS.items())
            if name not in FIXED_GRID
        }
    )
    frozen = FrozenBackbone.for_heads(backbone(), heads, n_last_blocks=2)
    path = tmp_path / "every.onnx"
    # Traced at an even x even grid, the parity whose branch a "resize when the sizes differ"
    # would keep (as the DPT fusion once did).
    result = export_onnx(frozen, heads, path, input_size=(56, 84))
    assert result.output_names == tuple(name for name in BUILDERS if name not in FIXED_GRID)
    assert result.max_abs_diff is not None
    assert max(result.max_abs_diff.values()) <= ATOL
    assert covers_both_parities(result.checked_shapes)
    for grid in GRIDS:
        assert_matches_on(path, frozen, heads, grid)


@pytest.mark.slow
def test_a_fixed_grid_head_with_a_dense_head_on_an_odd_by_even_grid(tmp_path: Path) -> None:
    # Conv1dNeck works for one grid only, so its graph has a fixed size: here odd one way and
    # even the other, with a segmentation head on the same grid beside it.
    heads = MultiHead(
        {
            "Conv1dNeck": trained_looking(BUILDERS["Conv1dNeck"]()),
            "LinearSegmentationHead": trained_looking(LinearSegmentationHead(WIDTH, 4)),
        }
    )
    frozen = FrozenBackbone.for_heads(backbone(depth=1), heads)
    path = tmp_path / "fixed.onnx"
    result = export_onnx(frozen, heads, path, input_size=(42, 56))
    assert not result.dynamic_size
    assert result.max_abs_diff is not None
    assert max(result.max_abs_diff.values()) <= ATOL
    assert_matches_on(path, frozen, heads, (3, 4))


# ---------------------------------------------------------------------------- the check itself


class SizeBranchHead(nn.Module):
    """The DPT fusion's old mistake: a coarse map brought back up is resized to the patch map
    only when their sizes differ, which they do on odd grid sides."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Conv2d(WIDTH, WIDTH, 3, stride=2, padding=1)
        self.min_depth, self.max_depth = -100.0, 100.0  # so a Depther takes it, unclamped

    def forward(self, features: Features) -> Tensor:
        x = features.patch_map()
        up = F.interpolate(self.down(x), scale_factor=2, mode="bilinear")
        if up.shape != x.shape:
            up = F.interpolate(up, size=x.shape[-2:], mode="bilinear")
        return (x + up)[:, :1]


@pytest.mark.slow
def test_the_export_refuses_a_graph_that_only_serves_the_traced_parity(tmp_path: Path) -> None:
    frozen = FrozenBackbone(backbone(depth=1))
    head = SizeBranchHead().eval()
    # Traced on an even grid the graph never resizes, and fails on odd sides. (Traced on an
    # odd grid it would always resize, a copy at equal sizes, and serve both.)
    with pytest.raises(
        RuntimeError, match=r"images of 70x42 \(a 5x3 patch grid\), which PyTorch runs"
    ) as error:
        export_onnx(frozen, head, tmp_path / "even.onnx", input_size=56)
    assert "the traced size 56x56 matches" in str(error.value)
    assert "do the step unconditionally" in str(error.value)


class ParityScaleHead(nn.Module):
    """Doubles the patch map on grids of odd height: a branch on sizes that changes values
    without changing shapes."""

    min_depth, max_depth = -100.0, 100.0  # so a Depther takes it, unclamped

    def forward(self, features: Features) -> Tensor:
        x = features.patch_map()[:, :1]
        if F.avg_pool2d(x, 2, ceil_mode=True).shape[-2] * 2 != x.shape[-2]:
            return 2 * x
        return x


@pytest.mark.slow
def test_the_dense_export_refuses_a_graph_that_differs_on_the_other_parity(
    tmp_path: Path,
) -> None:
    depther = Depther(backbone(depth=1), ParityScaleHead()).eval()
    # 50x52 pads to a 4x4 grid; the check's second size pads to a 5x3 grid, where PyTorch
    # doubles the depth and the graph, traced on the even grid, does not.
    with pytest.raises(
        RuntimeError, match=r"differs from PyTorch .* \(a 5x3 patch grid\)"
    ) as error:
        export_dense_onnx(depther, tmp_path / "even.onnx", input_size=(50, 52))
    assert "the traced size 50x52 matches" in str(error.value)
    assert not (tmp_path / "even.onnx.tmp").exists()


@given(st.integers(2, 200), st.integers(2, 200), st.booleans())
def test_the_checked_sizes_hold_both_parities_on_each_side(
    grid_h: int, grid_w: int, dynamic_batch: bool
) -> None:
    traced = (14 * grid_h, 14 * grid_w)
    shapes = onnx_module._check_shapes(traced, 14, dynamic_batch, dynamic_size=True)
    assert len(shapes) == (4 if dynamic_batch else 2)  # no more runs than before
    assert covers_both_parities(shapes)
    (_, _, height, width) = shapes[1]
    for side in (height, width):
        assert side % 14 == 0
        assert 2 <= side // 14 <= onnx_module.MAX_GRID
    assert height * traced[1] != width * traced[0]  # another aspect ratio
    assert onnx_module._check_shapes(traced, 14, dynamic_batch, dynamic_size=False) == [
        (b, 3, *traced) for b in ([1, 3] if dynamic_batch else [1])
    ]


@given(st.integers(15, 400), st.integers(15, 400), st.sampled_from([(15, 15), (29, 29)]))
def test_the_dense_checked_sizes_hold_both_parities_of_grid_and_padding(
    height: int, width: int, least: tuple[int, int]
) -> None:
    assume(min(height, width) >= least[0])
    shapes = dense_module._check_shapes((height, width), 14, False, least)
    assert shapes[0][2:] == (height, width)
    assert covers_both_parities(shapes)
    second = shapes[1][2:]
    assert all(side >= low for side, low in zip(second, least, strict=True))
    for i in (0, 1):
        paddings = {-shape[2 + i] % 14 for shape in shapes}
        assert {padding % 2 for padding in paddings} == {0, 1}
        assert -second[i] % 14 != 0  # the second size always pads
    assert second[0] * width != second[1] * height
