"""Hugging Face Dinov2Model / Dinov2WithRegistersModel weights give Hugging Face's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import (
    CheckpointError,
    convert_huggingface,
    describe_checkpoint,
    detect_format,
    load_backbone,
)

from .conftest import hf_model, hf_tokens, images, official_to_huggingface, tiny_backbone, tokens

transformers = pytest.importorskip("transformers")

TOL = 1e-5
SMALL = 70


def assert_close(ours: Tensor, theirs: Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize(
    ("registers", "swiglu"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_live_state_dict_gives_huggingface_outputs(registers: bool, swiglu: bool) -> None:
    # One case at the released 518 px table, the others at a small table for speed.
    size = 518 if registers and swiglu else SMALL
    theirs = hf_model(registers=registers, swiglu=swiglu, size=size)
    state = theirs.state_dict()
    assert detect_format(state) == "huggingface"
    # A state dict carries no config.json: the head count is given.
    ours = load_backbone(state, num_heads=2)
    assert ours.num_register_tokens == (4 if registers else 0)
    assert ours.config.ffn_layer == ("swiglufused" if swiglu else "mlp")
    assert ours.config.img_size == size
    x = images((size, size), batch=1)
    assert_close(tokens(ours, x), hf_tokens(theirs, x))


@pytest.mark.parametrize("registers", [False, True])
def test_saved_model_file_gives_huggingface_outputs(tmp_path: Path, registers: bool) -> None:
    pytest.importorskip("safetensors")
    theirs = hf_model(registers=registers, swiglu=True, seed=3)
    theirs.save_pretrained(tmp_path)
    # The folder: its config.json gives the head count.
    ours = load_backbone(tmp_path)
    x = images((SMALL, SMALL))
    assert_close(tokens(ours, x), hf_tokens(theirs, x))
    summary = describe_checkpoint(tmp_path)
    assert summary.format == "huggingface"
    assert summary.unexpected == ()


def test_register_models_match_at_other_sizes() -> None:
    # Both resize the position table to the exact grid, bicubic with antialias.
    theirs = hf_model(registers=True)
    ours = load_backbone(theirs.state_dict(), num_heads=2)
    x = images((98, 126))
    assert_close(tokens(ours, x), hf_tokens(theirs, x))


def test_plain_models_interpolate_differently_at_other_sizes() -> None:
    """Official plain models resize with a +0.1 offset; transformers resizes to the exact grid.

    With ``interpolate_offset=0`` our backbone resizes as transformers does.
    """
    theirs = hf_model(registers=False)
    x = images((112, 112))
    official = load_backbone(theirs.state_dict(), num_heads=2)
    assert (tokens(official, x) - hf_tokens(theirs, x)).abs().max().item() > 1e-3
    like_hf = load_backbone(theirs.state_dict(), num_heads=2, interpolate_offset=0.0)
    assert_close(tokens(like_hf, x), hf_tokens(theirs, x))


@pytest.mark.parametrize("live", [False, True])
def test_official_weights_in_huggingface_layout_round_trip(live: bool) -> None:
    ours = tiny_backbone(registers=True, swiglu=True)
    state = ours.state_dict()
    converted = convert_huggingface(official_to_huggingface(state, live=live))
    assert converted.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(converted[key], tensor), key


def test_official_weights_loaded_into_transformers_agree(fixtures_dir: Path) -> None:
    """The official fixture, written in the Hugging Face layout, runs the same in transformers."""
    official = torch.load(fixtures_dir / "vits14_reg4_d2.pth", weights_only=True)
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=384, num_hidden_layers=2, num_attention_heads=6, image_size=518, patch_size=14
    )
    theirs = transformers.Dinov2WithRegistersModel(config).eval()
    theirs.load_state_dict(official_to_huggingface(official, live=True), strict=True)
    ours = create_backbone(
        "dinov2_vits14_reg", depth=2, checkpoint=fixtures_dir / "vits14_reg4_d2.pth"
    )
    x = images((518, 518), batch=1)
    assert_close(tokens(ours, x), hf_tokens(theirs, x))


def test_task_model_prefix_and_classifier_are_set_aside() -> None:
    config = transformers.Dinov2Config(
        hidden_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=56, num_labels=3
    )
    classifier = transformers.Dinov2ForImageClassification(config)
    summary = describe_checkpoint(classifier.state_dict(), num_heads=2)
    assert summary.format == "huggingface"
    assert summary.set_aside == ("classifier.weight", "classifier.bias")
    assert summary.config["img_size"] == 56
    model = load_backbone(classifier.state_dict(), num_heads=2)
    assert model.config.depth == 1


def test_incomplete_attention_is_an_error() -> None:
    state = official_to_huggingface(tiny_backbone().state_dict())
    del state["encoder.layer.1.attention.attention.key.weight"]
    with pytest.raises(
        CheckpointError, match=r"block 1 has .* but not \['attention.attention.key'\]"
    ):
        convert_huggingface(state)
