"""``dinov2-heads inspect`` on checkpoint files and model folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dinov2_heads.cli import main
from dinov2_heads.export import save_heads
from dinov2_heads.heads import LinearDepthHead, LinearHead, MultiHead

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


def test_a_head_checkpoint_points_to_predict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = save_heads(tmp_path / "heads.pt", MultiHead({"colour": LinearHead(64, 3)}))
    with caplog.at_level("INFO", logger="dinov2_heads"):
        assert main(["inspect", str(path)]) == 1
    error = capsys.readouterr().err
    assert f"{path} is a heads file written by save_heads (heads: colour), not a backbone" in error
    assert f"--heads {path}, with the backbone as --checkpoint" in error
    # Tried as a backbone and then as a released head file, the file is unwrapped once in the log.
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unwrapped:")]
    assert logged == [
        "unwrapped: took 'state_dict' out of its container (also held: format, metadata)"
    ]
    garbage = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, garbage)
    assert main(["inspect", str(garbage)]) == 1
    assert "not a DINOv2 backbone in a known layout" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["inspect", "depth"])
def test_a_released_depth_head_in_a_backbones_place_is_named_with_its_load_call(
    command: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = LinearDepthHead(384, layers=4, n_bins=4)
    path = tmp_path / "dinov2_vits14_nyu_linear4_head.pth"
    state = {f"decode_head.{key}": value for key, value in head.state_dict().items()}
    torch.save({"meta": {}, "state_dict": state}, path)
    if command == "inspect":
        argv = ["inspect", str(path)]
    else:  # the head given as --checkpoint, the backbone as --head
        out = tmp_path / "out"
        argv = ["depth", str(files.images[0]), "--checkpoint", str(path)]
        argv += ["--head", str(files.checkpoint), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dinov2-heads {command}: error: {path} is a released DINOv2 depth head (the official "
        "linear4 depth head, 4 blocks, D = 384), not a backbone checkpoint: pass the DINOv2 "
        "backbone checkpoint (dinov2_vits14_pretrain.pth for D = 384) instead, and load this "
        'file with load_partial(LinearDepthHead(384, layers=4, n_bins=4), path, rename={"'
        f'decode_head.": ""}}) (on the command line: dinov2-heads depth --head {path})'
    ]
