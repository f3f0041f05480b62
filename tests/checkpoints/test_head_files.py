"""``describe_checkpoint`` describes the released head files: ImageNet linear, segmentation and
depth, each with the call that loads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dinov2_heads.checkpoints import (
    HeadFileSummary,
    UnknownFormatError,
    describe_checkpoint,
    identify_head_file,
    load_partial,
)
from dinov2_heads.heads import DPTDepthHead, LinearDepthHead, LinearHead, LinearSegmentationHead
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


def run_load_line(line: str, path: Path) -> torch.nn.Module:
    """The head that the summary's load line, run as printed, loads ``path`` into; every
    ``load_partial`` in it must load everything."""
    loaded: list[torch.nn.Module] = []

    def checked_load_partial(head: torch.nn.Module, file: Path, **options: object) -> object:
        report = load_partial(head, file, **options)  # type: ignore[arg-type]
        assert report.complete, report
        loaded.append(head)
        return report

    namespace: dict[str, object] = {
        "torch": torch,
        "path": path,
        "load_partial": checked_load_partial,
        "LinearHead": LinearHead,
        "LinearSegmentationHead": LinearSegmentationHead,
        "LinearDepthHead": LinearDepthHead,
        "DPTDepthHead": DPTDepthHead,
    }
    exec(line, namespace)  # the advice, literally
    head = loaded[0] if loaded else namespace["head"]
    assert isinstance(head, torch.nn.Module)
    return head


def same_weights(loaded: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = loaded.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in state)


@pytest.mark.parametrize(
    ("name", "dim", "parts", "blocks", "classes", "dataset"),
    [
        ("dinov2_vits14_linear_head.pth", 384, 2, 1, 1000, "ImageNet-1k"),
        ("dinov2_vitb14_linear4_head.pth", 768, 5, 4, 7, None),
    ],
)
def test_released_linear_heads_are_described(
    tmp_path: Path, name: str, dim: int, parts: int, blocks: int, classes: int, dataset: str | None
) -> None:
    state = {
        "weight": torch.randn(classes, parts * dim).half(),
        "bias": torch.randn(classes).half(),
    }
    path = tmp_path / name
    torch.save(state, path)
    summary = describe_checkpoint(path)
    assert isinstance(summary, HeadFileSummary)
    assert (summary.head_type, summary.task) == ("LinearHead", "classification")
    assert (summary.embed_dim, summary.layers, summary.num_classes) == (dim, blocks, classes)
    assert (summary.n_bins, summary.depth_range) == (None, None)
    assert summary.dataset == dataset
    assert (summary.num_tensors, summary.dtypes) == (2, {"float16": 2})
    assert ("n_last_blocks=4" in summary.description) == (blocks == 4)
    assert summary.load == (
        f"head = LinearHead({dim}, {classes}, n_blocks={blocks}); "
        "head.load_state_dict(torch.load(path))"
    )
    assert f"load with   {summary.load}" in str(summary)
    head = run_load_line(summary.load, path)
    assert same_weights(head, {k: v.float() for k, v in state.items()})
    # In memory too.
    assert describe_checkpoint(state).to_dict()["source"] == "<state dict>"  # type: ignore[union-attr]


#: Small heads in the released depth layout: the file name, the head, its bins, its range and
#: the data set the name gives.
DEPTH_HEADS: dict[str, tuple[str, Callable[[], torch.nn.Module], int | None, float, str | None]] = {
    "linear": (
        "dinov2_vits14_nyu_linear_head.pth",
        lambda: LinearDepthHead(384, n_bins=4),
        4,
        80.0,
        "NYU Depth V2",
    ),
    "linear4": (
        "dinov2_vitb14_kitti_linear4_head.pth",
        lambda: LinearDepthHead(768, layers=4, n_bins=6),
        6,
        80.0,
        "KITTI",
    ),
    "dpt_kitti": (
        "dinov2_vits14_kitti_dpt_head.pth",
        lambda: DPTDepthHead(384, channels=8, max_depth=80.0),
        None,
        80.0,
        "KITTI",
    ),
    "dpt_nyu": (
        "dinov2_vits14_nyu_dpt_head.pth",
        lambda: DPTDepthHead(384, channels=8),
        None,
        10.0,
        "NYU Depth V2",
    ),
    "dpt_unnamed": ("depth_head.pth", lambda: DPTDepthHead(384, channels=8), None, 10.0, None),
}


@pytest.mark.parametrize("kind", DEPTH_HEADS)
def test_released_depth_heads_are_described(tmp_path: Path, kind: str) -> None:
    name, make, n_bins, max_depth, dataset = DEPTH_HEADS[kind]
    torch.manual_seed(0)
    head = make()
    state = {f"decode_head.{k}": v for k, v in head.state_dict().items()}
    path = tmp_path / name
    torch.save({"meta": {}, "state_dict": state}, path)
    summary = describe_checkpoint(path)
    assert isinstance(summary, HeadFileSummary)
    assert (summary.head_type, summary.task) == (type(head).__name__, "depth")
    layers = getattr(head, "layers", 4)  # a DPT head reads 4 blocks
    assert (summary.embed_dim, summary.layers) == (head.embed_dim, layers)
    assert summary.num_classes is None
    assert (summary.n_bins, summary.depth_range) == (n_bins, (0.001, max_depth))
    assert summary.dataset == dataset
    assert (summary.num_tensors, summary.dtypes) == (len(state), {"float32": len(state)})
    assert summary.load.startswith(f"load_partial({type(head).__name__}(")
    assert summary.load.endswith(', path, rename={"decode_head.": ""})')
    data = summary.to_dict()
    assert (data["task"], data["n_bins"], data["depth_range"]) == (
        "depth",
        n_bins,
        [0.001, max_depth],
    )
    loaded = run_load_line(summary.load, path)
    assert loaded.config() == head.config()  # type: ignore[operator]
    assert same_weights(loaded, head.state_dict())


def test_a_released_segmentation_head_load_line_runs(tmp_path: Path) -> None:
    path = tmp_path / "dinov2_vits14_voc2012_ms_head.pth"
    content = released(1536, 21)
    torch.save(content, path)
    summary = describe_checkpoint(path)
    assert isinstance(summary, HeadFileSummary)
    assert (summary.task, summary.n_bins, summary.depth_range) == ("segmentation", None, None)
    state = {k.removeprefix("decode_head."): v for k, v in content["state_dict"].items()}  # type: ignore[attr-defined]
    assert same_weights(
        run_load_line(summary.load, path),
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
    )
