"""The demo's segmentation part on tiny settings: it learns, reports and writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.cli import main
from dinov2_heads.data import load_image, load_mask, pil_to_tensor
from dinov2_heads.demo import PARTS
from dinov2_heads.demo.segmentation import run_parts_demo
from dinov2_heads.dense import Segmenter
from dinov2_heads.export import load_heads
from dinov2_heads.heads import LinearSegmentationHead


def test_parts_head_beats_chance_and_writes_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    lines: list[str] = []
    results = run_parts_demo(
        backbone,
        tmp_path,
        num_train=24,
        num_heldout=4,
        epochs=6,
        progress=False,
        echo=lines.append,
    )
    assert results.scores.miou > results.chance_miou
    assert 0 < results.chance_miou < results.majority_miou < 1
    assert len(results.scores.iou) == len(PARTS)
    assert results.scores.pixels == 4 * 126 * 252
    saved = json.loads((tmp_path / "parts_results.json").read_text())
    assert saved["miou"] == pytest.approx(results.scores.miou)
    assert set(saved["iou"]) == set(PARTS)
    assert (tmp_path / "parts_overlay.png").stat().st_size > 0
    assert "mIoU" in results.table()
    assert "chance" in results.table()
    assert lines
    assert "part masks" in lines[0]


def test_the_heads_file_labels_a_sample_as_the_trained_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    checkpoint = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), checkpoint)
    settings = {"num_train": 8, "num_heldout": 3, "epochs": 2, "num_samples": 2}
    results = run_parts_demo(backbone, tmp_path / "demo", progress=False, **settings)
    samples = sorted(results.files["samples"].iterdir())
    assert [path.name for path in samples] == ["000008.png", "000009.png"]  # held out
    saved = load_heads(results.files["heads"])
    # What train writes for a store of masks: the head alone, with its class names.
    assert isinstance(saved.heads, LinearSegmentationHead)
    assert tuple(saved.heads.class_names or ()) == PARTS
    assert saved.input_size == results.image_size == (126, 252)
    assert saved.extra["heldout_metrics"]["miou"] == pytest.approx(results.scores.miou)

    out = tmp_path / "labels"
    argv = ["segment", "--heads", str(results.files["heads"]), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--size", "126", "252", "--out", str(out), str(samples[0])]) == 0
    assert "000008.png" in capsys.readouterr().out
    image = pil_to_tensor(load_image(samples[0]))
    assert results.head is not None
    with torch.no_grad():
        expected = Segmenter(backbone, results.head).eval()(image[None])[0].argmax(dim=0)
    assert torch.equal(load_mask(out / "000008.png"), expected)


def test_demo_command_reports_the_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--out", str(tmp_path), "--num-train", "8", "--num-heldout", "4"]
    assert main([*argv, "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "vehicle parts, held out (1 images): mIoU" in printed
    assert "parts_overlay.png" in printed
    assert main([*argv, "--epochs", "1", "--quiet", "--no-parts"]) == 0
    assert "vehicle parts" not in capsys.readouterr().out
