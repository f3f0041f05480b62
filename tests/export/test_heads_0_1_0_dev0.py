"""Head files written by dinov2-heads 0.1.0.dev0 still load, with the same outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from dinov2_heads.export import load_heads, save_heads
from dinov2_heads.export.heads_checkpoint import FORMAT_VERSION
from dinov2_heads.features import Features
from dinov2_heads.fingerprint import weights_fingerprint
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead

OLD = Path(__file__).parent / "fixtures"


def reference_features(reference: dict[str, torch.Tensor]) -> Features:
    classes = [reference[f"class_tokens.{i}"] for i in range(2)]
    patches = [reference[f"patch_tokens.{i}"] for i in range(2)]
    return Features.from_tokens(classes, patches, (2, 3))


def test_a_multi_head_file_of_0_1_0_dev0_loads_with_identical_outputs() -> None:
    reference = torch.load(OLD / "heads_0.1.0.dev0_outputs.pt", weights_only=True)

    checkpoint = load_heads(OLD / "heads_0.1.0.dev0.pth")

    heads = checkpoint.heads
    assert isinstance(heads, MultiHead)
    assert heads.names == ("brand", "colour", "kind")
    assert isinstance(heads["brand"], LinearHead)
    assert isinstance(heads["colour"], Conv1dNeck)
    assert heads["colour"].grid == (2, 3)
    assert heads["colour"].drop.p == 0.2
    assert checkpoint.class_names == {
        "brand": ("audi", "byd", "ford"),
        "colour": ("red", "blue"),
        "kind": None,
    }
    assert checkpoint.input_size == (28, 42)
    assert checkpoint.n_last_blocks == 2
    assert checkpoint.extra == {"note": "written by dinov2-heads 0.1.0.dev0"}
    assert checkpoint.metadata["format_version"] == 1
    assert checkpoint.metadata["heads"]["colour"]["config"] == {
        "num_patches": [2, 3],
        "embed_dim": 16,
        "num_classes": 2,
        "dropout": 0.2,
    }
    outputs = heads(reference_features(reference))
    for name in ("brand", "colour", "kind"):
        assert torch.equal(outputs[name], reference[f"output.{name}"])


def test_a_single_safetensors_head_of_0_1_0_dev0_loads_with_identical_outputs() -> None:
    reference = torch.load(OLD / "heads_0.1.0.dev0_outputs.pt", weights_only=True)
    expected = torch.load(OLD / "head_0.1.0.dev0_outputs.pt", weights_only=True)["output"]

    checkpoint = load_heads(OLD / "head_0.1.0.dev0.safetensors")

    assert isinstance(checkpoint.heads, LinearHead)
    assert checkpoint.heads.class_names == ("no", "yes")
    assert checkpoint.input_size == (28, 28)
    assert torch.equal(checkpoint.heads(reference_features(reference)), expected)


def test_resaving_an_old_file_writes_the_current_format(tmp_path: Path) -> None:
    old = load_heads(OLD / "heads_0.1.0.dev0.pth")
    assert old.heads is not None
    path = save_heads(tmp_path / "heads.pt", old.heads, input_size=old.input_size)

    new = load_heads(path)

    assert new.metadata["format_version"] == FORMAT_VERSION
    assert new.metadata["heads"]["brand"]["config"]["class_names"] == ["audi", "byd", "ford"]
    assert weights_fingerprint(new.state_dict) == weights_fingerprint(old.state_dict)
