from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import atomic as atomic_module
from dinov2_heads.checkpoints import (
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)
from dinov2_heads.export import load_heads, save_heads
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.fingerprint import weights_fingerprint
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead
from tests.export.conftest import tiny_frozen


def random_features(batch: int = 3, grid: tuple[int, int] = (2, 3), n_blocks: int = 2) -> Features:
    gen = torch.Generator().manual_seed(0)
    n = grid[0] * grid[1]
    classes = [torch.randn(batch, 64, generator=gen) for _ in range(n_blocks)]
    patches = [torch.randn(batch, n, 64, generator=gen) for _ in range(n_blocks)]
    return Features.from_tokens(classes, patches, grid)


def trained_heads() -> MultiHead:
    torch.manual_seed(0)
    heads = MultiHead(
        {
            "brand": LinearHead(64, 3, n_blocks=2, class_names=["audi", "byd", "ford"]),
            "colour": Conv1dNeck((2, 3), 64, 2, dropout=0.2, class_names=["red", "blue"]),
            "kind": LinearHead(64, 4, avgpool=False),
        }
    )
    # Move every weight and BatchNorm statistic away from its initial value (upwards, so that
    # the running variances stay positive).
    with torch.no_grad():
        for value in heads.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand_like(value))
    return heads


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_rebuilds_the_heads(tmp_path: Path, suffix: str) -> None:
    heads = trained_heads()
    frozen = tiny_frozen(depth=2, n_last_blocks=2)
    path = tmp_path / f"heads{suffix}"

    written = save_heads(path, heads, backbone=frozen, input_size=(28, 42), extra={"acc": 0.9})
    checkpoint = load_heads(written)

    assert isinstance(checkpoint.heads, MultiHead)
    assert checkpoint.head_names == ("brand", "colour", "kind")
    assert checkpoint.class_names == {
        "brand": ("audi", "byd", "ford"),
        "colour": ("red", "blue"),
        "kind": None,
    }
    assert checkpoint.heads["brand"].class_names == ("audi", "byd", "ford")
    assert checkpoint.heads["colour"].grid == (2, 3)
    assert checkpoint.heads["colour"].drop.p == 0.2
    assert checkpoint.input_size == (28, 42)
    assert checkpoint.n_last_blocks == 2
    assert checkpoint.backbone_variant is None  # 64 wide: a custom architecture
    assert checkpoint.backbone_config == frozen.backbone.config.to_dict()
    assert checkpoint.backbone_fingerprint == weights_fingerprint(frozen.backbone)
    assert checkpoint.extra == {"acc": 0.9}
    assert not checkpoint.heads.training
    features = random_features()
    expected = heads.eval()(features)
    got = checkpoint.heads(features)
    for name in expected:
        assert torch.equal(got[name], expected[name])
    assert weights_fingerprint(checkpoint.heads) == weights_fingerprint(heads)


def test_the_pt_file_loads_with_weights_only(tmp_path: Path) -> None:
    path = save_heads(tmp_path / "heads.pt", trained_heads())
    payload = torch.load(path, weights_only=True)
    metadata = json.loads(payload["metadata"])
    assert metadata["format"] == "dinov2-heads/heads"
    assert set(payload["state_dict"]) == set(trained_heads().state_dict())


def test_a_single_head_with_an_official_backbone(tmp_path: Path) -> None:
    from dinov2_heads import create_backbone

    backbone = create_backbone("dinov2_vits14")
    head = LinearHead(384, 2, class_names=["no", "yes"])
    checkpoint = load_heads(save_heads(tmp_path / "h.pt", head, backbone=backbone, input_size=224))
    assert isinstance(checkpoint.heads, LinearHead)
    assert checkpoint.head_names == ("head",)
    assert checkpoint.heads.class_names == ("no", "yes")
    assert checkpoint.input_size == (224, 224)
    assert checkpoint.backbone_variant == "dinov2_vits14"
    assert checkpoint.n_last_blocks is None  # a bare backbone, not a FrozenBackbone


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 2)

    def forward(self, features: Features) -> Tensor:
        return self.proj(features.class_token)


def test_a_custom_head_is_loaded_into_your_module(tmp_path: Path) -> None:
    heads = MultiHead({"custom": Custom(), "brand": LinearHead(64, 3)})
    checkpoint = load_heads(save_heads(tmp_path / "h.pt", heads))
    assert checkpoint.heads is None
    assert checkpoint.metadata["heads"]["custom"]["type"].endswith("Custom")
    fresh = MultiHead({"custom": Custom(), "brand": LinearHead(64, 3)})
    checkpoint.load_into(fresh)
    assert weights_fingerprint(fresh) == weights_fingerprint(heads)


def test_check_backbone(tmp_path: Path) -> None:
    frozen = tiny_frozen()
    checkpoint = load_heads(save_heads(tmp_path / "h.pt", LinearHead(64, 2), backbone=frozen))
    checkpoint.check_backbone(frozen)
    checkpoint.check_backbone(frozen.backbone)
    other = tiny_frozen()
    with torch.no_grad():
        other.backbone.cls_token.add_(1.0)
    with pytest.raises(ValueError, match="fingerprint"):
        checkpoint.check_backbone(other)
    checkpoint.check_backbone(other, fingerprint=False)
    known = weights_fingerprint(other)
    saved = save_heads(tmp_path / "h2.pt", LinearHead(64, 2), backbone_fingerprint=known)
    load_heads(saved).check_backbone(other)  # a fingerprint computed once and passed in
    official = dataclasses.replace(checkpoint, backbone_variant="dinov2_vits14")
    with pytest.raises(ValueError, match="trained on dinov2_vits14 but the backbone is a custom"):
        official.check_backbone(frozen, fingerprint=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_heads_trained_on_reduced_precision_weights_accept_their_checkpoint(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    # Heads trained with FrozenBackbone(dtype=...) are deployed on the float32 checkpoint the
    # backbone came from: its weights, cast the same way, hash the same.
    trained_on = FrozenBackbone(tiny_frozen().backbone, dtype=dtype)
    path = save_heads(tmp_path / "h.safetensors", LinearHead(64, 2), backbone=trained_on)
    checkpoint = load_heads(path)
    assert checkpoint.backbone_dtype == str(dtype).removeprefix("torch.")
    checkpoint.check_backbone(tiny_frozen())
    checkpoint.check_backbone(trained_on)
    other = tiny_frozen()
    with torch.no_grad():
        other.backbone.cls_token.add_(1.0)
    with pytest.raises(ValueError, match="fingerprint"):
        checkpoint.check_backbone(other)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"path": "heads.json"}, ValueError, "a .safetensors or .pt suffix"),
        ({"extra": {"when": object()}}, TypeError, "JSON-serialisable"),
        ({"input_size": (125, 250)}, ValueError, "not a multiple of the backbone's patch size"),
        ({"input_size": (1, 2, 3)}, TypeError, "an int or \\(H, W\\)"),
        ({"heads": "brand"}, TypeError, "must be an nn.Module"),
    ],
)
def test_save_errors(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments: dict[str, Any] = {"path": "heads.pt", "heads": LinearHead(64, 2)}
    arguments.update(kwargs)
    arguments["path"] = tmp_path / arguments["path"]
    with pytest.raises(error, match=match):
        save_heads(
            arguments.pop("path"), arguments.pop("heads"), backbone=tiny_frozen(), **arguments
        )
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        load_heads(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError):
        load_heads(tmp_path)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"not a PyTorch or safetensors checkpoint"):
        load_heads(tmp_path / "text.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a head checkpoint"):
        load_heads(tmp_path / "other.pt")
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a head checkpoint"):
        load_heads(tmp_path / "other.safetensors")


class _Payload:
    """Unpickling this would create ``marker``: a stand-in for code in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_head_file_that_needs_unpickling_is_refused_unrun(tmp_path: Path) -> None:
    path = save_heads(tmp_path / "h.pt", LinearHead(64, 2))
    payload = torch.load(path, weights_only=True)
    marker = tmp_path / "code-ran"
    payload["state_dict"]["bias"] = _Payload(marker)
    torch.save(payload, path)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary unpickling"):
        load_heads(path)
    assert not marker.exists()


def test_loaded_heads_do_not_change_when_the_file_is_rewritten_in_place(tmp_path: Path) -> None:
    head = LinearHead(64, 2)
    path = save_heads(tmp_path / "h.pt", head)
    checkpoint = load_heads(path)
    before = {name: value.clone() for name, value in checkpoint.state_dict.items()}
    other = LinearHead(64, 2)
    with torch.no_grad():
        other.weight.fill_(3.0)
    data = save_heads(tmp_path / "other.pt", other).read_bytes()
    with open(path, "r+b") as file:  # in place, as cp does: the same inode, new bytes
        file.write(data)
        file.truncate()
    for name, value in checkpoint.state_dict.items():
        assert torch.equal(value, before[name])
    assert checkpoint.heads is not None
    assert torch.equal(checkpoint.heads.weight, head.weight)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_damaged_file_is_refused(tmp_path: Path, suffix: str) -> None:
    head = LinearHead(64, 8)
    with torch.no_grad():
        head.weight.fill_(0.5)
    path = save_heads(tmp_path / f"h{suffix}", head)
    data = bytearray(path.read_bytes())
    # Change one byte inside the weights: 0.5 is 00 00 00 3F in little-endian float32.
    index = data.index(bytes([0, 0, 0, 0x3F]) * 8)
    data[index + 3] = 0x3E
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        load_heads(path)


def test_a_failed_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_heads(tmp_path / "h.pt", LinearHead(64, 2), extra={"version": 1})

    def broken_replace(source: Any, target: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_heads(path, LinearHead(64, 2), extra={"version": 2})
    assert load_heads(path).extra == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["h.pt"]  # the temporary file is gone


# ---------------------------------------------------------------------------- kill test

KILLS = 20


def _writer(path: Path, heads: MultiHead, first_version: int, stall_fsync: bool) -> None:
    """Child process: save new versions of ``heads`` to ``path`` until killed."""
    try:
        torch.set_num_threads(1)
        if stall_fsync:
            # Block inside the write, after the temporary file exists and before the rename.
            atomic_module.os.fsync = lambda fd: time.sleep(60)  # type: ignore[attr-defined]
        version = first_version
        while True:
            _save_version(path, heads, version)
            version += 1
    finally:
        os._exit(1)


def _save_version(path: Path, heads: MultiHead, version: int) -> None:
    with torch.no_grad():
        for value in heads.parameters():
            value.fill_(float(version))
    save_heads(path, heads, extra={"version": version})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill writers cheaply")
def test_killed_writers_never_damage_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "heads.pt"
    heads = MultiHead({"a": LinearHead(64, 400), "b": LinearHead(64, 300, n_blocks=2)})
    _save_version(path, heads, 0)
    rng = random.Random(0)
    versions = []
    for kill in range(KILLS):
        # The first writer is stopped inside its write for certain; the others at random points.
        stall = kill == 0
        pid = os.fork()
        if pid == 0:
            _writer(path, heads, first_version=1000 * (kill + 1), stall_fsync=stall)
        if stall:
            deadline = time.monotonic() + 30
            while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
                assert time.monotonic() < deadline, "the writer never started its write"
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        checkpoint = load_heads(path)  # never torn: the fingerprint check would refuse it
        version = checkpoint.extra["version"]
        for value in checkpoint.state_dict.values():
            assert torch.all(value == float(version)), "weights from another save than metadata"
        if stall:
            assert version == 0, "the interrupted write must not be visible"
        versions.append(version)
    assert versions[-1] > 0  # later writers did replace the checkpoint
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "heads.pt"]
    assert leftovers  # at least the stalled write left its temporary file
    assert all(name.startswith(".heads.pt.") and name.endswith(".tmp") for name in leftovers)


def _edit_metadata(path: Path, edit: Any) -> None:
    """Rewrite the JSON metadata of a .pt head checkpoint in place, as a hand edit would."""
    payload = torch.load(path, weights_only=True)
    metadata = json.loads(payload["metadata"])
    edit(metadata)
    payload["metadata"] = json.dumps(metadata)
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("heads_fingerprint"), "heads_fingerprint"),
        (lambda m: m.update(heads=[]), "heads"),
        (lambda m: m.update(multi_head=False), "multi_head"),
        (lambda m: m.update(input_size=[28]), "input_size"),
        (lambda m: m.update(extra=[1]), "extra"),
        (lambda m: m["heads"]["brand"]["config"].pop("n_blocks"), "size mismatch"),
        (lambda m: m["heads"]["brand"]["config"].pop("embed_dim"), "lacks .* embed_dim"),
        (lambda m: m["heads"]["brand"]["config"].update(bias=True), "unknown key"),
        (lambda m: m["heads"]["colour"]["config"].update(num_patches=[2, 5]), "size mismatch"),
        (lambda m: m["heads"]["colour"].update(type="LinearHead"), "do not fit"),
        (lambda m: m["heads"]["brand"]["config"].update(class_names=["x", "y", "z"]), "differ"),
        (lambda m: m["heads"]["brand"].update(config=[]), "not one save_heads writes"),
        (lambda m: m["heads"]["brand"].update(class_names=["x", "y", "z"]), "class names"),
    ],
)
def test_hand_edited_metadata_is_a_clear_error(tmp_path: Path, edit: Any, match: str) -> None:
    path = save_heads(tmp_path / "h.pt", trained_heads())
    _edit_metadata(path, edit)
    with pytest.raises(ValueError, match=match) as caught:
        load_heads(path)
    assert "save_heads" in str(caught.value)
    assert str(path) in str(caught.value)
