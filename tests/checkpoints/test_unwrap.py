"""Unwrapping containers, prefixes and chunked blocks, each step recorded."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor

from dinov2_heads.checkpoints import CheckpointError, unwrap_state_dict


def backbone_state() -> dict[str, Tensor]:
    return {
        "cls_token": torch.zeros(1, 1, 4),
        "blocks.0.norm1.weight": torch.ones(4),
        "blocks.1.norm1.weight": torch.full((4,), 2.0),
        "blocks.2.norm1.weight": torch.full((4,), 3.0),
        "blocks.3.norm1.weight": torch.full((4,), 4.0),
        "norm.weight": torch.ones(4),
    }


def chunked(state: dict[str, Tensor], chunk_size: int = 2) -> dict[str, Tensor]:
    """DINOv2's BlockChunk naming: chunk c holds blocks under their global index."""
    out = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) // chunk_size}.{index}.{rest}"
        out[key] = value
    return out


def test_plain_state_dict_needs_no_steps() -> None:
    result = unwrap_state_dict(backbone_state())
    assert result.steps == ()
    assert result.set_aside == {}
    assert list(result.state_dict) == list(backbone_state())


def test_teacher_checkpoint_with_heads_and_chunks(caplog: pytest.LogCaptureFixture) -> None:
    heads = {
        "dino_head.mlp.0.weight": torch.zeros(3, 4),
        "ibot_head.last_layer.weight": torch.ones(2),
    }
    content = {
        "teacher": {**{f"backbone.{k}": v for k, v in chunked(backbone_state()).items()}, **heads}
    }
    with caplog.at_level(logging.INFO, logger="dinov2_heads.checkpoints.unwrap"):
        result = unwrap_state_dict(content)
    assert result.state_dict.keys() == backbone_state().keys()
    assert torch.equal(result.state_dict["blocks.3.norm1.weight"], torch.full((4,), 4.0))
    assert result.set_aside.keys() == heads.keys()
    assert result.steps == (
        "took 'teacher' out of its container",
        "kept the 6 tensors under 'backbone.', set aside 2 others (dino_head, ibot_head)",
        "flattened 2 block chunks (blocks.{chunk}.{i} -> blocks.{i})",
    )
    assert "unwrapped: flattened 2 block chunks" in caplog.text


def test_training_checkpoint_prefers_the_teacher() -> None:
    state = backbone_state()
    model = {f"teacher.backbone.{k}": v for k, v in state.items()}
    model |= {f"student.backbone.{k}": v + 1 for k, v in state.items()}
    content = {"model": model, "optimizer": {"state": {}}, "iteration": 10}
    result = unwrap_state_dict(content)
    assert torch.equal(result.state_dict["norm.weight"], state["norm.weight"])
    assert result.steps[0] == "took 'model' out of its container (also held: iteration, optimizer)"
    assert result.steps[1].startswith("kept the 6 tensors under 'teacher.', set aside 6 others")
    assert len(result.set_aside) == 6


@pytest.mark.parametrize("container", ["model", "state_dict", "model_state_dict", "student"])
def test_container_keys(container: str) -> None:
    result = unwrap_state_dict({container: backbone_state(), "epoch": 3})
    assert result.state_dict.keys() == backbone_state().keys()


@pytest.mark.parametrize("prefixes", [["module."], ["_orig_mod."], ["module.", "_orig_mod."]])
def test_wrapper_prefixes_are_stripped_not_replaced(prefixes: list[str]) -> None:
    # "module." also occurs inside a name; only the leading one may go.
    state = {**backbone_state(), "blocks.0.module.weight": torch.ones(1)}
    wrapped = {"".join(prefixes) + k: v for k, v in state.items()}
    result = unwrap_state_dict(wrapped, backbone=False)
    assert set(result.state_dict) == set(state)
    assert len(result.steps) == len(prefixes)


def test_partial_prefix_is_kept_without_backbone_selection() -> None:
    content = {"backbone.cls_token": torch.zeros(1), "head.weight": torch.zeros(1)}
    assert unwrap_state_dict(content, backbone=False).state_dict.keys() == content.keys()


def test_mixed_chunked_and_plain_blocks_is_an_error() -> None:
    state = chunked(backbone_state())
    state["blocks.5.norm1.weight"] = torch.ones(4)
    with pytest.raises(CheckpointError, match=r"mixes chunked block names"):
        unwrap_state_dict(state)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({}, r"empty state dict"),
        ({"model": {}}, r"empty state dict"),
        ({"weight": torch.zeros(1), "epoch": 3}, r"'epoch' \(int\)"),
        ({1: torch.zeros(1)}, r"names must be strings"),
        ({"model": {"weight": [1.0, 2.0]}}, r"'weight' \(list\)"),
    ],
)
def test_bad_content(content: dict[object, object], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        unwrap_state_dict(content)  # type: ignore[arg-type]


def test_deep_nesting_is_an_error() -> None:
    content: dict[str, object] = {"weight": torch.zeros(1)}
    for _ in range(10):
        content = {"model": content, "epoch": 1}
    with pytest.raises(CheckpointError, match=r"more than 8 levels"):
        unwrap_state_dict(content)


def test_not_a_mapping() -> None:
    with pytest.raises(CheckpointError, match=r"expected a state dict"):
        unwrap_state_dict([torch.zeros(1)])  # type: ignore[arg-type]
