"""``dinov2-heads inspect`` on checkpoint files, model folders and heads files."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import UnknownFormatError, load_backbone, load_partial
from dinov2_heads.cli import main
from dinov2_heads.export import save_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.fingerprint import weights_fingerprint
from dinov2_heads.heads import (
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
)

from .conftest import Files


def sharded(checkpoint: Path, folder: Path) -> Path:
    """The checkpoint split in two ``pytorch_model-0000k-of-00002.bin`` shards with an index."""
    folder.mkdir()
    state = torch.load(checkpoint, weights_only=True)
    names = list(state)
    weight_map = {}
    for number, part in enumerate((names[::2], names[1::2]), start=1):
        shard = f"pytorch_model-{number:05d}-of-00002.bin"
        torch.save({name: state[name] for name in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder


def test_file(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(files.checkpoint)]) == 0
    out = capsys.readouterr().out
    labels = [line.split()[0] for line in out.splitlines()]
    assert labels[:2] == ["checkpoint", "format"]
    assert "architecture   D=64, depth=1, heads=1, mlp FFN, 0 registers" in out


def test_sharded_folder(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = sharded(files.checkpoint, tmp_path / "model")
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"checkpoint     {folder}"
    assert out[1] == "files          pytorch_model.bin.index.json (2 shards)"
    assert out[2] == "format         official"
    assert out[3].startswith("variant        custom")

    assert main(["inspect", str(folder / "pytorch_model.bin.index.json"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["files"] == [
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ]
    assert data["config"]["depth"] == 1
    assert data["num_tensors"] == len(torch.load(files.checkpoint, weights_only=True))


def test_folder_with_one_file(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(files.checkpoint, tmp_path / "dinov2_tiny_pretrain.pth")
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == ["dinov2_tiny_pretrain.pth"]


def test_folder_with_two_models_is_one_line_exit_1(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(files.checkpoint, tmp_path / "a.pth")
    shutil.copy(files.other_checkpoint, tmp_path / "b.pth")
    assert main(["inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("dinov2-heads inspect: error: ")
    assert "2 checkpoints that are not one model: a.pth, b.pth" in err[0]


def test_missing_shard_is_one_line_exit_1(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = sharded(files.checkpoint, tmp_path / "model")
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    assert main(["inspect", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pytorch_model-00002-of-00002.bin" in err[0]
    assert "download is incomplete" in err[0]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_heads_file_is_described_with_the_commands_that_use_it(
    suffix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=2, embed_dim=64, num_heads=1, img_size=56)
    frozen = FrozenBackbone(backbone, n_last_blocks=2)
    heads = MultiHead(
        {
            "colour": LinearHead(64, 3, n_blocks=2, class_names=["red", "green", "blue"]),
            "brand": LinearHead(64, 10, class_names=[f"brand{k}" for k in range(10)]),
        }
    )
    extra = {"made_by": "dinov2-heads train", "val_accuracy": {"colour": 0.75, "brand": 0.5}}
    path = save_heads(
        tmp_path / f"heads{suffix}", heads, backbone=frozen, input_size=56, extra=extra
    )
    with caplog.at_level("INFO", logger="dinov2_heads"):
        assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"heads file   {path}"
    kind = suffix if suffix == ".safetensors" else ".pt"
    assert (
        lines[1]
        == f"format       {kind} ({path.stat().st_size / 1024:.1f} KiB), heads file version 2"
    )
    assert "heads        colour, brand" in lines
    assert "backbone     custom (D = 64, 2 blocks, float32)" in lines
    assert f"fingerprint  {weights_fingerprint(frozen)[:12]}..." in lines
    assert "input size   56x56" in lines
    colour = lines.index("head colour")
    assert lines[colour + 1 : colour + 5] == [
        "  type     LinearHead",
        "  task     classification",
        "  classes  3: red, green, blue",
        "  input    class tokens of the last 2 blocks and mean patch token of the last block",
    ]
    assert (
        "  classes  10: brand0, brand1, brand2, brand3, brand4, brand5, brand6, brand7, ..."
        in lines
    )
    assert "  val_accuracy: colour 0.75, brand 0.5" in lines
    assert lines[-2:] == [
        f"  dinov2-heads predict --heads {path} --checkpoint BACKBONE IMAGES",
        f"  dinov2-heads export --heads {path} --checkpoint BACKBONE --out "
        f"{path.with_suffix('.onnx')}",
    ]
    # Recognised by its marks before any backbone reading: nothing is unwrapped in the log.
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unwrapped:")]
    assert logged == []
    # The Python API still refuses it as a backbone, with where it goes instead.
    with pytest.raises(UnknownFormatError, match="is a heads file written by save_heads"):
        load_backbone(path)

    garbage = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, garbage)
    assert main(["inspect", str(garbage)]) == 1
    assert "not a DINOv2 backbone in a known layout" in capsys.readouterr().err


def test_a_dense_heads_file_is_described_with_segment_and_depth(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frozen = FrozenBackbone(load_backbone(files.checkpoint))
    heads = MultiHead(
        {
            "parts": LinearSegmentationHead(64, 4, class_names=["bg", "body", "wheel", "glass"]),
            "near": LinearDepthHead(64, n_bins=4, min_depth=0.5, max_depth=20.0),
            "far": LinearDepthHead(64, n_bins=4),
        }
    )
    path = save_heads(tmp_path / "dense heads.pt", heads, backbone=frozen, input_size=(28, 56))
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    parts = lines.index("head parts")
    assert lines[parts + 1 : parts + 5] == [
        "  type     LinearSegmentationHead",
        "  task     segmentation",
        "  classes  4: bg, body, wheel, glass",
        "  input    tokens of block 0 of 1 (final norm applied)",
    ]
    near = lines.index("head near")
    assert lines[near + 1 : near + 5] == [
        "  type   LinearDepthHead",
        "  task   depth",
        "  depth  0.5 to 20 m",
        "  input  tokens of block 0 of 1 (before the final norm)",
    ]
    quoted, folder = shlex.quote(str(path)), path.parent
    # Two depth heads: each is picked by name; the one segmentation head needs no name.
    assert lines[-3:] == [
        f"  dinov2-heads segment --heads {quoted} --checkpoint BACKBONE --size 28 56 "
        f"--out {folder / 'parts'} IMAGES",
        f"  dinov2-heads depth --heads {quoted} --head-name near --checkpoint BACKBONE "
        f"--size 28 56 --out {folder / 'near'} IMAGES",
        f"  dinov2-heads depth --heads {quoted} --head-name far --checkpoint BACKBONE "
        f"--size 28 56 --out {folder / 'far'} IMAGES",
    ]
    assert not any("predict" in line for line in lines)


def test_a_heads_file_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = LinearDepthHead(64, n_bins=4, min_depth=0.001, max_depth=20.0)
    metrics = {"abs_rel": 0.25, "rmse": 1.5, "delta1": None}
    path = save_heads(tmp_path / "depth.safetensors", head, extra={"heldout_metrics": metrics})
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "heads"
    assert (data["format"], data["size"], data["multi_head"]) == (
        ".safetensors",
        path.stat().st_size,
        False,
    )
    assert data["heads"] == [
        {
            "name": "head",
            "type": "LinearDepthHead",
            "task": "depth",
            "num_classes": None,
            "class_names": None,
            "depth_range": [0.001, 20.0],
            "input": {
                "tokens": None,
                "last_blocks": None,
                "blocks": None,
                "description": "tokens of chosen blocks (the file records no backbone depth "
                "to place them)",
            },
        }
    ]
    # Saved without a backbone: only the width the head was built for is known.
    assert data["backbone"] == {
        "variant": None,
        "embed_dim": 64,
        "depth": None,
        "fingerprint": None,
        "dtype": None,
        "n_last_blocks": None,
    }
    assert data["metrics"] == {"heldout_metrics": metrics}
    assert data["commands"] == [
        f"dinov2-heads depth --heads {path} --checkpoint BACKBONE --out {tmp_path / 'depth'} "
        "IMAGES",
        f"dinov2-heads export --heads {path} --checkpoint BACKBONE --whole-image --out "
        f"{tmp_path / 'depth.onnx'}",
    ]


def test_a_damaged_heads_file_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_heads(tmp_path / "heads.pt", MultiHead({"colour": LinearHead(64, 3)}))
    content = torch.load(path, weights_only=True)
    content["state_dict"]["colour.weight"] += 1
    torch.save(content, path)
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dinov2-heads inspect: error: {path}: the head weights do not match the fingerprint "
        "stored with them; the file is damaged or was edited"
    ]


def test_a_released_depth_head_in_a_backbones_place_is_named_with_its_load_call(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = LinearDepthHead(384, layers=4, n_bins=4)
    path = tmp_path / "dinov2_vits14_nyu_linear4_head.pth"
    state = {f"decode_head.{key}": value for key, value in head.state_dict().items()}
    torch.save({"meta": {}, "state_dict": state}, path)
    # The head given as --checkpoint, the backbone as --head.
    out = tmp_path / "out"
    argv = ["depth", str(files.images[0]), "--checkpoint", str(path)]
    argv += ["--head", str(files.checkpoint), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dinov2-heads depth: error: {path} is a released DINOv2 depth head (the official "
        "linear4 depth head, 4 blocks, D = 384), not a backbone checkpoint: pass the DINOv2 "
        "backbone checkpoint (dinov2_vits14_pretrain.pth for D = 384) instead, and load this "
        'file with load_partial(LinearDepthHead(384, layers=4, n_bins=4), path, rename={"'
        f'decode_head.": ""}}) (on the command line: dinov2-heads depth --head {path})'
    ]


def released_head_file(folder: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    """A small head saved in the key layout and under the name of a released file."""
    torch.manual_seed(0)
    if kind == "linear":
        head: torch.nn.Module = LinearHead(384, 7, n_blocks=4)
        path = folder / "dinov2_vits14_linear4_head.pth"
        torch.save(head.state_dict(), path)  # bare weight and bias
        return path, head
    head, name = {
        "segmentation": (LinearSegmentationHead(384, 21), "dinov2_vits14_voc2012_linear_head.pth"),
        "depth": (LinearDepthHead(384, layers=4, n_bins=4), "dinov2_vits14_nyu_linear4_head.pth"),
        "dpt": (DPTDepthHead(384, channels=8, max_depth=80.0), "dinov2_vits14_kitti_dpt_head.pth"),
    }[kind]
    state = {f"decode_head.{key}": value for key, value in head.state_dict().items()}
    torch.save({"meta": {}, "state_dict": state}, folder / name)
    return folder / name, head


@pytest.mark.parametrize(
    ("kind", "head_type", "amount"),
    [
        ("linear", "LinearHead", "classes     7"),
        ("segmentation", "LinearSegmentationHead", "classes     21 (VOC2012)"),
        ("depth", "LinearDepthHead", "depth       4 bins, 0.001 to 80 m (NYU Depth V2)"),
        ("dpt", "DPTDepthHead", "depth       regression, 0.001 to 80 m (KITTI)"),
    ],
)
def test_a_released_head_file_is_described_with_the_line_that_loads_it(
    kind: str, head_type: str, amount: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, head = released_head_file(tmp_path, kind)
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"checkpoint  {path}"
    assert lines[1].startswith(f"head        {head_type}: the official ")
    assert amount in lines
    assert "embed_dim   384" in lines
    load = [line.removeprefix("load with   ") for line in lines if line.startswith("load with")]
    assert len(load) == 1
    # The line, run as printed, loads every tensor of the file.
    loaded: list[torch.nn.Module] = []

    def checked_load_partial(module: torch.nn.Module, file: Path, **options: object) -> object:
        report = load_partial(module, file, **options)  # type: ignore[arg-type]
        assert report.complete, report
        loaded.append(module)
        return report

    namespace: dict[str, object] = {"torch": torch, "path": path}
    namespace.update(load_partial=checked_load_partial, LinearHead=LinearHead)
    namespace.update(LinearSegmentationHead=LinearSegmentationHead)
    namespace.update(LinearDepthHead=LinearDepthHead, DPTDepthHead=DPTDepthHead)
    exec(load[0], namespace)
    result = loaded[0] if loaded else namespace["head"]
    assert isinstance(result, torch.nn.Module)
    assert type(result) is type(head)
    expected = head.state_dict()
    assert result.state_dict().keys() == expected.keys()
    assert all(torch.equal(result.state_dict()[k], v) for k, v in expected.items())

    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["source"], data["head_type"], data["embed_dim"]) == (str(path), head_type, 384)
    assert data["load"] == load[0]
    assert (
        data["task"]
        == {
            "linear": "classification",
            "segmentation": "segmentation",
            "depth": "depth",
            "dpt": "depth",
        }[kind]
    )
    assert data["num_tensors"] == len(expected)


@pytest.mark.parametrize("kind", ["linear", "segmentation", "depth", "dpt"])
def test_a_released_head_file_is_still_refused_as_a_backbone(
    kind: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = released_head_file(tmp_path, kind)
    with pytest.raises(UnknownFormatError, match="not a backbone checkpoint"):
        load_backbone(path)
    assert (
        main(
            [
                "extract",
                str(files.images[0]),
                "--checkpoint",
                str(path),
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 1
    )
    assert "not a backbone checkpoint" in capsys.readouterr().err
