"""A released DINOv2 ImageNet linear head given where a heads file belongs: the error says how to
load it, and following the advice works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dinov2_heads.checkpoints.errors import CheckpointError
from dinov2_heads.export import load_heads, save_heads
from dinov2_heads.heads import LinearHead


@pytest.mark.parametrize(("dim", "parts", "blocks"), [(384, 2, 1), (768, 5, 4), (1536, 2, 1)])
def test_released_linear_head_gets_the_recipe(
    tmp_path: Path, dim: int, parts: int, blocks: int
) -> None:
    released = {"weight": torch.randn(7, parts * dim), "bias": torch.randn(7)}
    path = tmp_path / "released_linear_head.pth"
    torch.save(released, path)
    with pytest.raises(CheckpointError) as caught:
        load_heads(path)
    message = str(caught.value)
    assert f"LinearHead({dim}, 7, n_blocks={blocks})" in message
    assert ("n_last_blocks=4" in message) == (blocks == 4)

    # The advice, followed literally, gives a heads file that loads back to the same weights.
    match = re.search(r"LinearHead\((\d+), (\d+), n_blocks=(\d+)\)", message)
    assert match is not None
    d, k, n = (int(g) for g in match.groups())
    head = LinearHead(d, k, n_blocks=n)
    head.load_state_dict(torch.load(path, weights_only=True), strict=True)
    save_heads(tmp_path / "heads.pt", head)
    loaded = load_heads(tmp_path / "heads.pt").heads
    assert loaded is not None
    assert torch.equal(loaded.state_dict()["weight"], released["weight"])


def test_other_torch_files_get_no_recipe(tmp_path: Path) -> None:
    for name, content in {
        "odd_width.pth": {"weight": torch.randn(7, 1000), "bias": torch.randn(7)},
        "more_keys.pth": {
            "weight": torch.randn(7, 768),
            "bias": torch.randn(7),
            "x": torch.ones(1),
        },
    }.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError) as caught:
            load_heads(tmp_path / name)
        assert "not a head checkpoint written by save_heads" in str(caught.value)
        assert "LinearHead(" not in str(caught.value)
