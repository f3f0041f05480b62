"""``dinov2-heads segment``: released-layout head files, label PNGs and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads import create_backbone, load_partial
from dinov2_heads.cli import main
from dinov2_heads.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    load_mask,
    normalize,
    to_float,
)
from dinov2_heads.data.functional import pil_to_tensor
from dinov2_heads.dense import Segmenter
from dinov2_heads.heads import LinearSegmentationHead
from tests.commands.conftest import DenseFiles, Files


def released_head(path: Path, classes: int = 21, layers: int = 1) -> Path:
    """A random head for the 64-wide test backbone, in the layout of the released files."""
    torch.manual_seed(0)
    head = LinearSegmentationHead(64, classes, layers=layers)
    with torch.no_grad():
        head.conv_seg.weight.normal_()
        head.bn.running_mean.normal_(std=0.5)
    state = {f"decode_head.{k}": v for k, v in head.state_dict().items()}
    torch.save({"meta": {}, "state_dict": state}, path)
    return path


def test_writes_label_pngs_and_overlays(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = released_head(tmp_path / "dinov2_vits14_voc2012_linear_head.pth")
    out = tmp_path / "labels"
    code = main(
        [
            "segment",
            *map(str, files.images[:2]),
            "--heads",
            str(heads),
            "--checkpoint",
            str(files.checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2
    # The label map equals the Segmenter's prediction at the image's own size.
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, img_size=56)
    backbone.load_state_dict(torch.load(files.checkpoint, weights_only=True))
    head = LinearSegmentationHead(64, 21)
    load_partial(head, heads, rename={"decode_head.": ""}, strict=True)
    segmenter = Segmenter(backbone, head.eval()).eval()
    for path in files.images[:2]:
        pixels = pil_to_tensor(load_image(path))
        x = normalize(to_float(pixels)[None], IMAGENET_MEAN, IMAGENET_STD)
        with torch.no_grad():
            expected = segmenter.predict(x)[0]
        labels = load_mask(out / f"{path.stem}.png")
        assert torch.equal(labels, expected)
        assert Image.open(out / f"{path.stem}.png").mode == "P"
        overlay = np.array(Image.open(out / f"{path.stem}_overlay.png"))
        assert overlay.shape == (*pixels.shape[-2:], 3)
    assert "background" in "\n".join(printed) or "aeroplane" in "\n".join(printed)


def test_preset_runs_at_the_test_size_and_answers_at_the_image_size(
    files: Files, tmp_path: Path
) -> None:
    heads = released_head(tmp_path / "head.pth")
    out = tmp_path / "voc"
    code = main(
        [
            "segment",
            str(files.images[0]),
            "--heads",
            str(heads),
            "--checkpoint",
            str(files.checkpoint),
            "--out",
            str(out),
            "--preset",
            "voc2012_linear",
            "--crop-size",
            "42",
            "42",
            "--stride",
            "28",
            "28",
            "--flip",
        ]
    )
    assert code == 0
    labels = load_mask(out / f"{files.images[0].stem}.png")
    assert labels.shape == pil_to_tensor(load_image(files.images[0])).shape[-2:]


def test_errors(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wide = tmp_path / "dinov2_vitb14_ade20k_linear_head.pth"
    head = LinearSegmentationHead(768, 150)
    torch.save({f"decode_head.{k}": v for k, v in head.state_dict().items()}, wide)
    args = [
        "segment",
        str(files.images[0]),
        "--checkpoint",
        str(files.checkpoint),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--heads", str(wide)]) == 1
    assert "a head for D = 768 but the backbone has D = 64" in capsys.readouterr().err
    assert main([*args, "--heads", str(files.heads)]) == 1
    assert "exactly one segmentation head (found: none" in capsys.readouterr().err


def test_a_head_trained_on_other_weights_is_refused_as_predict_refuses(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "labels"
    argv = ["segment", str(files.images[0]), "--heads", str(dense_files.mixed), "--out", str(out)]
    assert main([*argv, "--checkpoint", str(files.other_checkpoint)]) == 1
    refused = capsys.readouterr().err
    assert len(refused.strip().splitlines()) == 1
    assert "trained on backbone weights with fingerprint" in refused
    assert not out.exists()
    predict = ["predict", "--heads", str(dense_files.mixed), str(files.images[0])]
    assert main([*predict, "--checkpoint", str(files.other_checkpoint)]) == 1
    said = capsys.readouterr().err
    assert refused.removeprefix("dinov2-heads segment: ") == said.removeprefix(
        "dinov2-heads predict: "
    )
    assert main([*argv, "--checkpoint", str(files.other_checkpoint), "--no-backbone-check"]) == 0
    assert (out / f"{files.images[0].stem}.png").is_file()
    # The checkpoint the heads were trained on passes the check (--overwrite: the labels of the
    # run before are in --out).
    assert main([*argv, "--checkpoint", str(files.checkpoint), "--overwrite"]) == 0


def test_output_names_follow_depths_rule_and_never_overwrite(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = released_head(tmp_path / "dinov2_vits14_voc2012_linear_head.pth")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    # Four images whose files would meet: x.png's overlay is x_overlay.png's label map.
    names = ["my car.png", "sub/x.png", "x.png", "x_overlay.png"]
    sources = dict(zip(names, (files.images * 2)[: len(names)], strict=True))
    for name, source in sources.items():
        (images / name).write_bytes(source.read_bytes())
    out = tmp_path / "labels"
    argv = ["segment", str(images), "--heads", str(heads), "--checkpoint", str(files.checkpoint)]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    written = {
        line.split(": ")[0]: Path(line.split(": ")[1].split(" (")[0]).name for line in printed
    }
    assert written == {
        str(images / "my car.png"): "my_car.png",
        str(images / "sub" / "x.png"): "x.png",
        str(images / "x.png"): "x-2.png",
        str(images / "x_overlay.png"): "x_overlay-2.png",
    }
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [
            f"{name}{suffix}"
            for name in ("my_car", "x", "x-2", "x_overlay-2")
            for suffix in (".png", "_overlay.png")
        ]
    )
    # x.png's overlay (colours) was not replaced by x_overlay.png's labels (a palette PNG).
    assert Image.open(out / "x_overlay.png").mode == "RGB"
    assert Image.open(out / "x_overlay-2.png").mode == "P"
    # Again: the same names, so every file is refused until --overwrite.
    assert main([*argv, "--out", str(out)]) == 1
    assert "8 of the files this run writes" in capsys.readouterr().err
