"""The demo's depth part: a linear depth head learns real depth, reports it and draws it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2_heads import create_backbone, load_backbone
from dinov2_heads.cli import main
from dinov2_heads.data import load_image, pil_to_tensor
from dinov2_heads.demo import RANDOM_BACKBONE, SyntheticDepthPairs, SyntheticVehicles
from dinov2_heads.demo.depth import DepthResults, head_inputs, patch_depths, run_depth_demo
from dinov2_heads.demo.fog import FOG_DISTANCE
from dinov2_heads.demo.street_depth import FAR_DEPTH
from dinov2_heads.dense import Depther
from dinov2_heads.export import load_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import LinearDepthHead
from dinov2_heads.training import DEPTH_METRICS


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DepthResults, list[str], Path]:
    # The demo's own random backbone and settings: what `dinov2-heads demo` runs.
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", **RANDOM_BACKBONE)
    folder = tmp_path_factory.mktemp("depth")
    # The backbone's weights, for the depth command to run the saved head on.
    torch.save(backbone.state_dict(), folder / "backbone.pth")
    lines: list[str] = []
    results = run_depth_demo(backbone, folder, progress=False, echo=lines.append)
    return results, lines, folder


def test_the_depth_head_beats_a_constant_clearly(
    demo: tuple[DepthResults, list[str], Path],
) -> None:
    results, _, _ = demo
    head, constant = results.metrics, results.baseline
    assert set(head) == set(constant) == set(DEPTH_METRICS)
    # Lower errors, far more pixels within 25% of the truth: depth, not a lucky constant.
    assert head["abs_rel"] < 0.9 * constant["abs_rel"]
    assert head["rmse"] < 0.8 * constant["rmse"]
    assert head["delta1"] > constant["delta1"] + 0.15
    assert head["rmse_log"] < constant["rmse_log"]


def test_the_constant_is_the_training_median(demo: tuple[DepthResults, list[str], Path]) -> None:
    results, _, _ = demo
    pairs = SyntheticDepthPairs(SyntheticVehicles(240, seed=0, size=(126, 252)))
    depths = torch.cat([pairs.raw(i)[1] for i in range(results.num_train)])
    assert results.baseline_depth == pytest.approx(float(depths[depths > 0].median()))
    assert 1.0 < results.baseline_depth < 5.0  # the vehicles stand a few metres away


def test_report_and_files(demo: tuple[DepthResults, list[str], Path]) -> None:
    results, lines, folder = demo
    assert results.num_train == 200
    assert results.num_heldout == 40
    assert results.fog == FOG_DISTANCE
    assert "street scenes in fog" in lines[0]
    table = results.table().splitlines()
    assert table[0].split() == ["metric", "head", "constant", "better"]
    assert [line.split()[0] for line in table[1:4]] == ["AbsRel", "RMSE", "delta<1.25"]
    assert f"{results.metrics['abs_rel']:.3f}" in table[1]
    assert f"{100 * results.baseline['delta1']:.1f}%" in table[3]
    assert table[4].endswith(f"median depth, {results.baseline_depth:.2f} m")
    assert set(results.files) == {"prediction", "truth", "results", "heads", "samples"}
    saved = json.loads((folder / "depth_results.json").read_text())
    assert saved["metrics"] == pytest.approx(results.metrics)
    assert saved["baseline_depth"] == pytest.approx(results.baseline_depth)
    pil = pytest.importorskip("PIL.Image")
    for name in ("depth.png", "depth_truth.png"):
        with pil.open(folder / name) as picture:
            # The scene, its depth and the colour bar with its labels side by side.
            assert picture.height == 126 + 8
            assert picture.width > 2 * 252


def test_the_heads_file_gives_the_depth_of_the_trained_head(
    demo: tuple[DepthResults, list[str], Path], tmp_path: Path
) -> None:
    results, _, folder = demo
    samples = sorted(results.files["samples"].iterdir())
    assert [path.name for path in samples] == [f"{200 + i:06d}.png" for i in range(4)]  # held out
    saved = load_heads(results.files["heads"])
    # What train writes for a store of depth maps: the head alone, with its depth range.
    assert isinstance(saved.heads, LinearDepthHead)
    assert (saved.heads.min_depth, saved.heads.max_depth) == (0.001, FAR_DEPTH)
    assert saved.input_size == results.image_size == (126, 252)
    assert saved.extra["heldout_metrics"]["abs_rel"] == pytest.approx(results.metrics["abs_rel"])

    argv = ["depth", "--heads", str(results.files["heads"]), "--checkpoint"]
    argv += [str(folder / "backbone.pth"), "--size", "126", "252", "--save-npy"]
    assert main([*argv, "--out", str(tmp_path), str(samples[0])]) == 0
    got = torch.from_numpy(np.load(tmp_path / f"{samples[0].stem}.npy"))
    image = pil_to_tensor(load_image(samples[0]))
    backbone = load_backbone(folder / "backbone.pth")
    assert results.head is not None
    with torch.no_grad():
        expected = Depther(backbone, results.head).eval()(image[None])[0, 0]
    torch.testing.assert_close(got, expected)


def test_patch_depths_is_the_geometric_mean_of_valid_pixels() -> None:
    depths = torch.zeros(1, 1, 4, 4)
    depths[0, 0, :2, :2] = torch.tensor([[1.0, 4.0], [0.0, 0.0]])  # half sky
    depths[0, 0, 2:, 2:] = 3.0
    patches = patch_depths(depths, (2, 2))
    assert patches[0, 0, 0, 0] == pytest.approx(2.0)  # sqrt(1 * 4), the sky left out
    assert patches[0, 0, 1, 1] == pytest.approx(3.0)
    assert patches[0, 0, 0, 1] == 0  # nothing but sky: no target
    assert patches[0, 0, 1, 0] == 0


def test_head_inputs_are_what_the_head_reads() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=2, embed_dim=32, num_heads=1)
    head = LinearDepthHead(32, n_bins=8, max_depth=20.0).eval()
    features = FrozenBackbone.for_heads(backbone, head)(torch.randn(2, 3, 28, 42))
    inputs = head_inputs(head, features)
    assert inputs.shape == (2, 64, 2, 3)
    grid = head.depth_from_logits(
        torch.nn.functional.interpolate(
            head.conv_depth(inputs), size=(8, 12), mode="bilinear", align_corners=False
        )
    )
    with torch.no_grad():
        # The 1x1 convolution commutes with the bilinear resize: the head's own output.
        assert torch.allclose(grid, head(features), atol=1e-5)


def test_bad_settings_are_refused() -> None:
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=1)
    for name in ("num_train", "num_heldout", "epochs"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            run_depth_demo(backbone, **{name: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_samples must be an int >= 0, got -1"):
        run_depth_demo(backbone, num_samples=-1)


def test_the_command_reports_depth_and_lists_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--out", str(tmp_path), "--num-train", "8", "--num-heldout", "4"]
    assert main([*argv, "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "depth, held out (1 scenes, metres):" in printed
    assert "AbsRel" in printed
    listing = printed.split("files in ")[1].split("\n\n")[0].splitlines()[1:]
    names = [line.split()[0] for line in listing]
    assert names[-9:] == [
        "parts_overlay.png",
        "parts_results.json",
        "parts_head.pt",
        "parts_samples/",
        "depth.png",
        "depth_truth.png",
        "depth_results.json",
        "depth_head.pt",
        "depth_samples/",
    ]
    # One column for the descriptions, however long the names.
    starts = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in listing}
    assert len(starts) == 1
    assert all((tmp_path / name.rstrip("/")).exists() for name in names)
    assert math.isfinite(json.loads((tmp_path / "depth_results.json").read_text())["fog"])

    assert main([*argv, "--epochs", "1", "--quiet", "--no-depth", "--no-parts"]) == 0
    printed = capsys.readouterr().out
    assert "depth, held out" not in printed
    assert "depth.png" not in printed
    # No heads files to run: no segment or depth line to try.
    assert "dinov2-heads segment" not in printed
    assert "dinov2-heads depth" not in printed
    listing = printed.split("files in ")[1].split("\n\n")[0].splitlines()[1:]
    starts = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in listing}
    assert len(starts) == 1
