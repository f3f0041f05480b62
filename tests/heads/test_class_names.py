from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from dinov2_heads.heads import LinearHead, MultiHead
from dinov2_heads.heads.class_names import decode_class_names, encode_class_names

NAMES = ("audi", "bmw", "byd", "tesla")


def released_file(head: nn.Module, tmp_path: Path) -> Path:
    """A weights-only file like the released *_linear_head.pth: a bare nn.Linear state dict."""
    path = tmp_path / "linear_head.pth"
    torch.save(head.state_dict(), path)
    return path


def test_names_are_stored_only_when_set() -> None:
    assert set(LinearHead(8, 4).state_dict()) == {"weight", "bias"}
    state_dict = LinearHead(8, 4, class_names=NAMES).state_dict()
    assert set(state_dict) == {"weight", "bias", "_extra_state"}
    assert decode_class_names(state_dict["_extra_state"]) == NAMES


def test_official_file_loads_strictly_with_or_without_names(tmp_path: Path) -> None:
    official = nn.Linear(16, 4)
    sd = torch.load(released_file(official, tmp_path), weights_only=True)
    plain = LinearHead(8, 4)
    plain.load_state_dict(sd, strict=True)
    assert plain.class_names is None
    named = LinearHead(8, 4, class_names=NAMES)
    named.load_state_dict(sd, strict=True)
    assert named.class_names == NAMES  # a file without names keeps the head's
    assert torch.equal(named.weight, official.weight)


def test_names_in_the_file_are_adopted_and_survive_weights_only_load() -> None:
    buffer = io.BytesIO()
    torch.save(LinearHead(8, 4, class_names=NAMES).state_dict(), buffer)
    buffer.seek(0)
    sd = torch.load(buffer, weights_only=True)
    head = LinearHead(8, 4)
    head.load_state_dict(sd, strict=True)
    assert head.class_names == NAMES
    same = LinearHead(8, 4, class_names=NAMES)
    same.load_state_dict(sd, strict=True)
    assert same.class_names == NAMES


def test_different_names_are_refused_and_nothing_changes() -> None:
    sd = LinearHead(8, 4, class_names=NAMES).state_dict()
    head = LinearHead(8, 4, class_names=("audi", "bmw", "nio", "tesla"))
    before = head.weight.clone()
    with pytest.raises(ValueError, match=r"class 2 is 'byd' in the state dict but 'nio' here"):
        head.load_state_dict(sd)
    assert head.class_names == ("audi", "bmw", "nio", "tesla")
    assert torch.equal(head.weight, before)


def test_a_named_state_dict_does_not_fit_a_bare_linear() -> None:
    sd = LinearHead(8, 4, class_names=NAMES).state_dict()
    with pytest.raises(RuntimeError, match="_extra_state"):
        nn.Linear(16, 4).load_state_dict(sd, strict=True)
    nn.Linear(16, 4).load_state_dict(LinearHead(8, 4).state_dict(), strict=True)


def test_names_are_not_adopted_when_the_weights_fail() -> None:
    sd = LinearHead(8, 4, class_names=NAMES).state_dict()
    sd["weight"] = torch.zeros(4, 3)
    head = LinearHead(8, 4)
    with pytest.raises(RuntimeError, match="size mismatch"):
        head.load_state_dict(sd)
    assert head.class_names is None


def test_nested_names_keep_their_prefix() -> None:
    model = nn.ModuleDict({"brand": LinearHead(8, 4, class_names=NAMES)})
    sd = model.state_dict()
    assert "brand._extra_state" in sd
    fresh = nn.ModuleDict({"brand": LinearHead(8, 4)})
    fresh.load_state_dict(sd, strict=True)
    assert fresh["brand"].class_names == NAMES


def test_bad_names() -> None:
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        LinearHead(8, 4, class_names=NAMES[:3])
    with pytest.raises(ValueError, match="'bmw' appears twice"):
        LinearHead(8, 4, class_names=("audi", "bmw", "bmw", "tesla"))
    with pytest.raises(TypeError, match="strings"):
        LinearHead(8, 4, class_names=("a", "b", "c", 4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the string"):
        LinearHead(8, 4, class_names="abcd")
    head = LinearHead(8, 4)
    with pytest.raises(ValueError, match="5 class names"):
        head.load_state_dict({**head.state_dict(), "_extra_state": encode_class_names("abcde")})
    with pytest.raises(ValueError, match="not a list of class names"):
        head.load_state_dict({**head.state_dict(), "_extra_state": torch.zeros(3)})


def test_unicode_names_round_trip() -> None:
    names = ("大众", "丰田", "Škoda", "Citroën")
    assert decode_class_names(encode_class_names(names)) == names


def test_a_multi_head_checks_every_head_s_names_before_loading_any() -> None:
    def heads(colours: list[str]) -> MultiHead:
        return MultiHead(
            {
                "type": LinearHead(8, 2, class_names=["car", "van"]),
                "colour": LinearHead(8, 2, class_names=colours),
            }
        )

    source = heads(["red", "blue"])
    target = heads(["red", "green"])
    before = {k: v.clone() for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match="class 1 is 'blue' in the state dict but 'green' here"):
        target.load_state_dict(source.state_dict())
    # Before, the "type" head had already taken the source's weights when "colour" failed.
    after = target.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
