"""``describe_checkpoint`` names the released segmentation head files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.checkpoints import (
    HeadFileSummary,
    UnknownFormatError,
    describe_checkpoint,
    identify_head_file,
)
from dinov2_heads.heads import LinearSegmentationHead
from tests.helpers import DENSE_FIXTURES


def released(channels: int, classes: int) -> dict[str, object]:
    head = LinearSegmentationHead(channels, classes)
    state = {
        f"decode_head.{k}": v.half() if v.is_floating_point() else v
        for k, v in head.state_dict().items()
    }
    return {"meta": {"note": "layout of the released files"}, "state_dict": state}


@pytest.mark.parametrize(
    ("name", "channels", "dim", "layers"),
    [
        ("dinov2_vits14_ade20k_linear_head.pth", 384, 384, 1),
        ("dinov2_vitb14_voc2012_ms_head.pth", 3072, 768, 4),
        ("dinov2_vitg14_ade20k_linear_head.pth", 1536, 1536, 1),
        ("dinov2_vits14_ade20k_ms_head.pth", 1536, 384, 4),
        ("head.pth", 4096, 1024, 4),  # only ViT-L "ms" has 4096 channels
        ("head.pth", 1536, None, None),  # ViT-g "linear" or ViT-S "ms": the name must tell
    ],
)
def test_released_files_are_named(
    tmp_path: Path, name: str, channels: int, dim: int | None, layers: int | None
) -> None:
    path = tmp_path / name
    torch.save(released(channels, 150), path)
    summary = describe_checkpoint(path)
    assert isinstance(summary, HeadFileSummary)
    assert summary.head_type == "LinearSegmentationHead"
    assert (summary.embed_dim, summary.layers, summary.num_classes) == (dim, layers, 150)
    assert summary.dataset == "ADE20K"
    assert 'rename={"decode_head.": ""}' in summary.load
    assert summary.to_dict()["layers"] == layers
    assert "LinearSegmentationHead" in str(summary)


def test_the_dense_fixtures(tmp_path: Path) -> None:
    if not DENSE_FIXTURES.is_dir():
        pytest.skip("dense reference fixtures not found")
    summary = describe_checkpoint(DENSE_FIXTURES / "vits14_seg_ms_head.pth")
    assert isinstance(summary, HeadFileSummary)
    assert summary.load == (
        'load_partial(LinearSegmentationHead(384, 21, layers=4), path, rename={"decode_head.": ""})'
    )
    assert summary.dataset == "VOC2012"


def test_other_files_keep_the_backbone_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv_seg.weight": torch.zeros(2, 3, 1, 1), "extra": torch.zeros(1)}, path)
    with pytest.raises(UnknownFormatError):
        describe_checkpoint(path)
    bare = {k.removeprefix("decode_head."): v for k, v in released(384, 21)["state_dict"].items()}  # type: ignore[attr-defined]
    summary = identify_head_file(bare, "x.pth")
    assert summary is not None
    assert "rename" not in summary.load
    assert identify_head_file({"bn.weight": torch.zeros(2)}, "x.pth") is None


def test_a_head_file_logs_each_unwrapping_step_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Read first as a backbone, then as a head file: the container is taken out both times,
    # and said once.
    path = tmp_path / "dinov2_vits14_ade20k_linear_head.pth"
    torch.save(released(384, 150), path)
    with caplog.at_level("INFO", logger="dinov2_heads"):
        summary = describe_checkpoint(path)
    assert isinstance(summary, HeadFileSummary)
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unwrapped:")]
    assert steps == ["unwrapped: took 'state_dict' out of its container (also held: meta)"]
