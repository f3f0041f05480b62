from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import UnknownFormatError, load_backbone
from dinov2_heads.cli import main
from dinov2_heads.commands.depth import load_depth_head
from dinov2_heads.data import load_image, normalize, pil_to_tensor
from dinov2_heads.demo import SyntheticVehicles
from dinov2_heads.dense import Depther
from dinov2_heads.export import save_heads
from dinov2_heads.heads import DPTDepthHead, LinearDepthHead
from tests.commands.conftest import DenseFiles, Files
from tests.helpers import DENSE_FIXTURES, randomize


def released_file(path: Path, head: torch.nn.Module) -> Path:
    """A head in the layout of the released files: meta and decode_head.* tensors."""
    state = {f"decode_head.{k}": v.half() for k, v in head.state_dict().items()}
    torch.save({"meta": {"note": "test"}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("depth_cli")
    torch.manual_seed(0)
    backbone = randomize(
        create_backbone("dinov2_vits14", depth=4, embed_dim=64, num_heads=1, img_size=56)
    )
    torch.save(backbone.state_dict(), root / "backbone.pth")
    torch.manual_seed(1)
    head = LinearDepthHead(64, layers=4)
    with torch.no_grad():
        head.conv_depth.weight.normal_()
    vehicles = SyntheticVehicles(3, size=(30, 50))
    images = root / "images"
    images.mkdir()
    for index in range(3):
        vehicles.render(index).save(images / f"car{index}.png")
    return {
        "root": root,
        "backbone": root / "backbone.pth",
        "linear4": released_file(root / "dinov2_vits14_nyu_linear4_head.pth", head),
        "dpt_kitti": released_file(root / "x_kitti_dpt_head.pth", DPTDepthHead(64, channels=8)),
        "dpt_nyu": released_file(root / "x_nyu_dpt_head.pth", DPTDepthHead(64, channels=8)),
        "images": images,
    }


def test_pictures_and_arrays_equal_the_depther(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "depth",
            str(setup["images"]),
            "--checkpoint",
            str(setup["backbone"]),
            "--head",
            str(setup["linear4"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--save-npy",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [Path(row["path"]).name for row in report["depth"]] == [
        "car0.png",
        "car1.png",
        "car2.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "car0.npy",
        "car0.png",
        "car1.npy",
        "car1.png",
        "car2.npy",
        "car2.png",
    ]
    depth = np.load(out / "car1.npy")
    assert depth.shape == (30, 50)
    # The same numbers as the library, with the head read from the released layout.
    backbone = create_backbone("dinov2_vits14", depth=4, embed_dim=64, num_heads=1, img_size=56)
    backbone.load_state_dict(torch.load(setup["backbone"], weights_only=True))
    head = load_depth_head(setup["linear4"], 64)
    image = normalize(pil_to_tensor(load_image(setup["images"] / "car1.png")))[None]
    with torch.no_grad():
        expected = Depther(backbone, head)(image)[0, 0].numpy()
    np.testing.assert_allclose(depth, expected, rtol=1e-5)
    assert report["depth"][1]["median"] == pytest.approx(float(np.median(depth)), rel=1e-3)
    picture = Image.open(out / "car1.png")
    assert picture.size[1] == 30 + 8  # the image height plus padding

    # Again into the same folder: refused without --overwrite; slide, flip and a size work.
    assert (
        main(
            [
                "depth",
                str(setup["images"]),
                "--checkpoint",
                str(setup["backbone"]),
                "--head",
                str(setup["linear4"]),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "already exists" in capsys.readouterr().err
    code = main(
        [
            "depth",
            str(setup["images"] / "car0.png"),
            "--checkpoint",
            str(setup["backbone"]),
            "--head",
            str(setup["linear4"]),
            "--out",
            str(out),
            "--overwrite",
            "--mode",
            "slide",
            "--crop-size",
            "28",
            "28",
            "--stride",
            "14",
            "14",
            "--flip",
            "--size",
            "42",
            "56",
        ]
    )
    assert code == 0
    assert "car0.png" in capsys.readouterr().out
    assert Image.open(out / "car0.png").size[1] == 42 + 8


def test_head_kinds_and_depth_ranges_follow_the_file(setup: dict[str, Path]) -> None:
    linear = load_depth_head(setup["linear4"], 64)
    assert isinstance(linear, LinearDepthHead)
    assert (linear.layers, linear.max_depth) == (4, 80.0)
    kitti = load_depth_head(setup["dpt_kitti"], 64)
    assert isinstance(kitti, DPTDepthHead)
    assert kitti.max_depth == 80.0
    assert load_depth_head(setup["dpt_nyu"], 64).max_depth == 10.0
    assert load_depth_head(setup["dpt_nyu"], 64, max_depth=5.0).max_depth == 5.0


def test_heads_saved_by_save_heads_load_as_they_were(tmp_path: Path) -> None:
    head = LinearDepthHead(64, layers=4, n_bins=16, max_depth=12.0)
    loaded = load_depth_head(save_heads(tmp_path / "mine.pt", head), 64)
    assert isinstance(loaded, LinearDepthHead)
    assert loaded.config() == head.config()
    assert torch.equal(loaded.conv_depth.weight, head.conv_depth.weight)


def test_bad_head_files_are_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither 2 x 32"):
        load_depth_head(setup["linear4"], 32)
    torch.save(
        {"state_dict": {"decode_head.conv_seg.weight": torch.zeros(2, 2, 1, 1)}},
        tmp_path / "seg.pth",
    )
    with pytest.raises(ValueError, match="is not a DINOv2 depth head"):
        load_depth_head(tmp_path / "seg.pth", 64)


def test_errors_are_one_line(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "depth",
            str(tmp_path / "missing.png"),
            "--checkpoint",
            str(setup["backbone"]),
            "--head",
            str(setup["linear4"]),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("dinov2-heads depth: error: no such file or folder")
    code = main(
        [
            "depth",
            str(setup["images"]),
            "--checkpoint",
            str(setup["backbone"]),
            "--head",
            str(setup["linear4"]),
            "--out",
            str(tmp_path / "o"),
            "--mode",
            "slide",
        ]
    )
    assert code == 1
    assert "needs crop_size and stride" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["depth", "mixed"])
def test_a_head_trained_on_other_weights_is_refused_as_predict_refuses(
    which: str,
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heads = str(getattr(dense_files, which))
    out = tmp_path / "depth"
    argv = ["depth", str(files.images[0]), "--heads", heads, "--out", str(out)]
    assert main([*argv, "--checkpoint", str(files.other_checkpoint)]) == 1
    refused = capsys.readouterr().err
    assert len(refused.strip().splitlines()) == 1
    assert "trained on backbone weights with fingerprint" in refused
    assert not out.exists()
    predict = ["predict", "--heads", str(dense_files.mixed), str(files.images[0])]
    assert main([*predict, "--checkpoint", str(files.other_checkpoint)]) == 1
    said = capsys.readouterr().err
    assert refused.removeprefix("dinov2-heads depth: ") == said.removeprefix(
        "dinov2-heads predict: "
    )
    assert main([*argv, "--checkpoint", str(files.other_checkpoint), "--no-backbone-check"]) == 0
    assert (out / f"{files.images[0].stem}.png").is_file()
    assert main([*argv, "--checkpoint", str(files.checkpoint), "--overwrite"]) == 0


def test_a_head_file_read_once_loads_as_its_path_does(
    setup: dict[str, Path], dense_files: DenseFiles
) -> None:
    from dinov2_heads.commands.depth import saved_heads

    saved = saved_heads(dense_files.mixed)
    assert saved is not None
    by_path = load_depth_head(dense_files.mixed, 64)
    read = load_depth_head(saved, 64)
    assert type(read) is type(by_path) is LinearDepthHead
    assert all(
        torch.equal(a, b)
        for a, b in zip(read.state_dict().values(), by_path.state_dict().values(), strict=True)
    )
    assert saved_heads(setup["linear4"]) is None  # a released head: no save_heads metadata


def advised_head(path: Path) -> torch.nn.Module:
    """The head that the message for ``path`` given as a backbone says to build."""
    with pytest.raises(UnknownFormatError) as caught:
        load_backbone(path)
    call = re.search(r"load this file with load_partial\((\w+\(.*?\)), path", str(caught.value))
    assert call is not None, str(caught.value)
    return eval(call[1], {"LinearDepthHead": LinearDepthHead, "DPTDepthHead": DPTDepthHead})


@pytest.mark.parametrize("kind", ["linear", "linear4", "dpt"])
def test_the_official_heads_load_as_the_backbone_message_names_them(
    kind: str, tmp_path: Path
) -> None:
    fixture = DENSE_FIXTURES / f"vits14_depth_{ {'linear': 'linear1'}.get(kind, kind) }_head.pth"
    if not fixture.is_file():
        pytest.skip(f"dense reference fixtures not found at {DENSE_FIXTURES.resolve()}")
    path = tmp_path / f"dinov2_vits14_nyu_{kind}_head.pth"
    path.write_bytes(fixture.read_bytes())
    head = load_depth_head(path, 384)
    advised = advised_head(path)
    assert type(head) is type(advised)
    assert head.config() == advised.config()


def test_the_file_says_what_it_is_and_the_backbone_only_what_the_file_cannot(
    tmp_path: Path,
) -> None:
    # 3072 input channels: a ViT-g linear head by its name, whatever the backbone's width.
    torch.manual_seed(0)
    giant = released_file(
        tmp_path / "dinov2_vitg14_nyu_linear_head.pth", LinearDepthHead(1536, n_bins=4)
    )
    assert advised_head(giant).config()["embed_dim"] == 1536
    loaded = load_depth_head(giant, 1536)
    assert isinstance(loaded, LinearDepthHead)
    assert loaded.config() == advised_head(giant).config()
    # On a ViT-S these channels would read as linear4: the file's name says otherwise.
    with pytest.raises(
        ValueError,
        match=r"the official linear depth head, 1 block, D = 1536, "
        r"not a head for this backbone's width D = 384; use the backbone it was "
        r"trained on \(dinov2_vitg14_pretrain.pth\)",
    ):
        load_depth_head(giant, 384)
    # A name that says neither: the backbone settles D and the blocks, as the message allows.
    unnamed = tmp_path / "head.pth"
    unnamed.write_bytes(giant.read_bytes())
    assert load_depth_head(unnamed, 1536).layers == 1
    assert load_depth_head(unnamed, 384).layers == 4
    # A DPT head reads its width from its tensors.
    with pytest.raises(
        ValueError,
        match="DPT depth head, 4 blocks, D = 64, not a head for this backbone's width D = 32",
    ):
        load_depth_head(
            released_file(tmp_path / "x_nyu_dpt_head.pth", DPTDepthHead(64, channels=8)), 32
        )


def test_output_names_are_one_per_file_even_where_case_is_ignored(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    for name in ("a/X.png", "b/x.png", "c/my car.png"):
        (images / name).parent.mkdir(parents=True)
        (images / name).write_bytes((setup["images"] / "car0.png").read_bytes())
    out = tmp_path / "out"
    argv = ["depth", str(images), "--checkpoint", str(setup["backbone"]), "--head"]
    assert main([*argv, str(setup["linear4"]), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["depth"]
    assert [Path(row["picture"]).name for row in report] == ["X.png", "x-2.png", "my_car.png"]
    assert sorted(path.name for path in out.iterdir()) == ["X.png", "my_car.png", "x-2.png"]
