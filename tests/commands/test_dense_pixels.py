"""``segment`` and ``depth`` hand uint8 pixels to the predictor: the files of before, byte for byte.

``depth`` always hands the (resized) ``uint8`` pixels to the ``Depther``; ``segment`` hands them
over when an image runs at its own size (a ``--size`` or preset test size is a bilinear resize of
the float image, which stays float). Each command's files are compared with files written here
the way the command wrote them before: images normalised on the CPU first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads import create_backbone
from dinov2_heads.cli import main
from dinov2_heads.commands.depth import load_depth_head
from dinov2_heads.data import load_image, normalize, pil_to_tensor, to_float
from dinov2_heads.data.functional import resize
from dinov2_heads.demo import SyntheticVehicles
from dinov2_heads.dense import VOC2012, Depther, Segmenter
from dinov2_heads.heads import LinearDepthHead, LinearSegmentationHead
from dinov2_heads.viz import save_depth_picture
from dinov2_heads.viz.segmentation import label_image, overlay_labels, save_image
from tests.helpers import randomize

WINDOWS = ["--mode", "slide", "--crop-size", "28", "28", "--stride", "14", "20", "--flip"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-block backbone, a released-layout segmentation head and depth head, odd-size images."""
    root = tmp_path_factory.mktemp("dense-pixels-cli")
    torch.manual_seed(0)
    backbone = randomize(
        create_backbone("dinov2_vits14", depth=4, embed_dim=64, num_heads=1, img_size=56)
    )
    torch.save(backbone.state_dict(), root / "backbone.pth")
    torch.manual_seed(1)
    segmentation = LinearSegmentationHead(64, 21)
    depth = LinearDepthHead(64, layers=4)
    with torch.no_grad():
        segmentation.conv_seg.weight.normal_()
        segmentation.bn.running_mean.normal_(std=0.5)
        depth.conv_depth.weight.normal_()
    for name, head in (("seg.pth", segmentation), ("x_nyu_linear4_head.pth", depth)):
        state = {f"decode_head.{k}": v for k, v in head.state_dict().items()}
        torch.save({"meta": {}, "state_dict": state}, root / name)
    images = root / "images"
    images.mkdir()
    vehicles = SyntheticVehicles(2, seed=3, size=(31, 47))
    for index in range(2):
        vehicles.render(index).save(images / f"car{index}.png")
    return {
        "backbone": root / "backbone.pth",
        "segmentation": root / "seg.pth",
        "depth": root / "x_nyu_linear4_head.pth",
        "images": images,
    }


def backbone(setup: dict[str, Path]) -> torch.nn.Module:
    model = create_backbone("dinov2_vits14", depth=4, embed_dim=64, num_heads=1, img_size=56)
    model.load_state_dict(torch.load(setup["backbone"], weights_only=True))
    return model


def spy(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[torch.dtype]:
    """The dtype of every batch the command hands to ``cls.forward``."""
    seen: list[torch.dtype] = []
    forward = cls.forward

    def recording(self: Any, images: Tensor) -> Tensor:
        seen.append(images.dtype)
        return forward(self, images)  # type: ignore[no-any-return]

    monkeypatch.setattr(cls, "forward", recording)
    return seen


@pytest.mark.parametrize("size", [None, (42, 70)])
@pytest.mark.parametrize("windows", [[], WINDOWS])
def test_segment_writes_the_files_of_normalised_images(
    setup: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int] | None,
    windows: list[str],
) -> None:
    out = tmp_path / "out"
    sized = ["--size", *map(str, size)] if size else []
    seen = spy(monkeypatch, Segmenter)
    argv = ["--quiet", "segment", str(setup["images"]), "--heads", str(setup["segmentation"])]
    argv += ["--checkpoint", str(setup["backbone"]), "--out", str(out), *sized, *windows]
    assert main(argv) == 0
    # Pixels at the image's own size; a resize stays float, as before.
    assert seen == [torch.float32 if size else torch.uint8] * 2

    # The files as the command wrote them before, from images normalised first.
    head = LinearSegmentationHead(64, 21)
    state = torch.load(setup["segmentation"], weights_only=True)["state_dict"]
    head.load_state_dict({k.removeprefix("decode_head."): v for k, v in state.items()})
    settings: dict[str, Any] = {}
    if windows:
        settings = {"mode": "slide", "crop_size": (28, 28), "stride": (14, 20), "flip": True}
    monkeypatch.undo()
    segmenter = Segmenter(backbone(setup), head.eval(), **settings).eval()
    palette = VOC2012.palette  # what a 21-class released head is shown with
    for path in sorted(setup["images"].iterdir()):
        pixels = pil_to_tensor(load_image(path))
        height, width = pixels.shape[-2:]
        x = to_float(pixels)[None]
        if size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            probabilities = segmenter(normalize(x))
            if size:
                probabilities = F.interpolate(
                    probabilities, size=(height, width), mode="bilinear", align_corners=False
                )
        labels = probabilities[0].argmax(dim=0)
        save_image(label_image(labels, palette), tmp_path / "label.png")
        save_image(overlay_labels(pixels, labels, palette), tmp_path / "overlay.png")
        assert (out / f"{path.stem}.png").read_bytes() == (tmp_path / "label.png").read_bytes()
        overlay = (out / f"{path.stem}_overlay.png").read_bytes()
        assert overlay == (tmp_path / "overlay.png").read_bytes()


@pytest.mark.parametrize("size", [None, (42, 70)])
@pytest.mark.parametrize("windows", [[], WINDOWS])
def test_depth_writes_the_files_of_normalised_images(
    setup: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int] | None,
    windows: list[str],
) -> None:
    out = tmp_path / "out"
    sized = ["--size", *map(str, size)] if size else []
    seen = spy(monkeypatch, Depther)
    argv = ["--quiet", "depth", str(setup["images"]), "--head", str(setup["depth"])]
    argv += ["--checkpoint", str(setup["backbone"]), "--out", str(out), "--save-npy"]
    assert main([*argv, *sized, *windows]) == 0
    assert seen == [torch.uint8] * 2

    monkeypatch.undo()
    settings: dict[str, Any] = {}
    if windows:
        settings = {"mode": "slide", "crop_size": (28, 28), "stride": (14, 20), "flip": True}
    depther = Depther(backbone(setup), load_depth_head(setup["depth"], 64), **settings).eval()
    for path in sorted(setup["images"].iterdir()):
        image = pil_to_tensor(load_image(path))
        if size:
            image = resize(image, size)
        images = normalize(image)[None]
        with torch.no_grad():
            depth = depther(images)[0]
        assert np.array_equal(np.load(out / f"{path.stem}.npy"), depth[0].numpy())
        save_depth_picture(tmp_path / "picture.png", depth, images[0])
        assert (out / f"{path.stem}.png").read_bytes() == (tmp_path / "picture.png").read_bytes()
