"""``describe_heads``: what a heads file holds, read without the backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from dinov2_heads.checkpoints import CheckpointError
from dinov2_heads.export import describe_heads, save_heads
from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead


class Mine(nn.Module):
    """A head outside the registry: stored by its weights alone."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)


def test_a_single_neck_reads_patch_tokens(tmp_path: Path) -> None:
    path = save_heads(tmp_path / "neck.pt", Conv1dNeck((2, 4), 64, 5))
    summary = describe_heads(path)
    (head,) = summary.heads
    assert (head.name, head.type, head.task, head.num_classes) == (
        "head",
        "Conv1dNeck",
        "classification",
        5,
    )
    assert head.input is not None
    assert head.input.tokens == ("class_tokens", "patch_tokens")
    assert head.input.description == "class token and patch tokens of the last block"
    assert "head (the file's one head)" in str(summary).splitlines()
    assert json.loads(json.dumps(summary.to_dict())) == summary.to_dict()


def test_a_head_outside_the_registry_is_named_without_a_task(tmp_path: Path) -> None:
    heads = MultiHead({"mine": Mine(), "colour": LinearHead(64, 2, avgpool=False)})
    summary = describe_heads(save_heads(tmp_path / "heads.safetensors", heads))
    mine, colour = summary.heads
    assert mine.type == f"{Mine.__module__}.Mine"
    assert (mine.task, mine.input) == (None, None)
    # Without a rebuilt MultiHead no head's input is known, but the registry gives the task.
    assert (colour.task, colour.input) == ("classification", None)
    lines = str(summary).splitlines()
    assert "  task   unknown (not a registered head)" in lines
    assert summary.commands() == ()
    assert lines[-1].startswith("use it in Python: load_heads(path).load_into(module)")


def test_a_linear_head_without_avgpool_reads_class_tokens_only(tmp_path: Path) -> None:
    summary = describe_heads(save_heads(tmp_path / "h.pt", LinearHead(64, 2, avgpool=False)))
    assert summary.heads[0].input is not None
    assert summary.heads[0].input.description == "class token of the last block"


def test_a_file_that_is_not_a_heads_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a PyTorch or safetensors checkpoint"):
        describe_heads(path)
