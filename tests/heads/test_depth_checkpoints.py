"""Depth heads travel like the other heads: the registry, head files and ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.export import export_onnx, load_heads, save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import (
    HEAD_TYPES,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    MultiHead,
    build_head,
    head_spec,
)
from tests.helpers import randomize


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(
        create_backbone("dinov2_vits14", depth=4, embed_dim=16, num_heads=1, img_size=56)
    )


def heads() -> MultiHead:
    torch.manual_seed(1)
    multi = MultiHead(
        {
            "kind": LinearHead(16, 3),
            "depth": LinearDepthHead(16, layers=4, n_bins=32, max_depth=20.0),
            "dpt": DPTDepthHead(16, channels=8, max_depth=80.0),
        }
    )
    with torch.no_grad():
        for param in multi.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return multi.eval()


def test_registered_and_rebuilt_from_their_spec() -> None:
    assert HEAD_TYPES["LinearDepthHead"] is LinearDepthHead
    assert HEAD_TYPES["DPTDepthHead"] is DPTDepthHead
    for head in heads().values():
        spec = head_spec(head)
        rebuilt = build_head(spec["type"], spec["config"])
        assert type(rebuilt) is type(head)
        assert rebuilt.config() == head.config()


def test_head_file_round_trip(tmp_path: Path) -> None:
    backbone = tiny()
    multi = heads()
    frozen = FrozenBackbone.for_heads(backbone, multi)
    path = save_heads(tmp_path / "heads.pt", multi, backbone=frozen)
    loaded = load_heads(path).heads
    assert isinstance(loaded, MultiHead)
    assert loaded["depth"].max_depth == 20.0
    assert loaded["dpt"].max_depth == 80.0
    images = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        expected = multi(frozen(images))
        got = loaded(FrozenBackbone.for_heads(backbone, loaded)(images))
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_onnx_graph_with_depth_heads_serves_other_sizes(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    backbone = tiny()
    multi = MultiHead({name: head for name, head in heads().items() if name != "dpt"})
    frozen = FrozenBackbone.for_heads(backbone, multi)
    export = export_onnx(frozen, multi, tmp_path / "depth.onnx", input_size=(28, 42))
    assert export.max_abs_diff is not None
    # Depths up to 80 m in float32: a few 1e-5 m apart at most.
    assert max(export.max_abs_diff.values()) < 1e-3
    # The traced 2x3 grid and a 3x2 one: each side at an even and an odd number of patches.
    assert {shape[2:] for shape in export.checked_shapes} == {(28, 42), (42, 28)}
