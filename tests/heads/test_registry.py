"""Heads describe themselves (``config``/``from_config``) and the registry builds them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from typing_extensions import Self

from dinov2_heads.features import Features
from dinov2_heads.heads import (
    HEAD_TYPES,
    Conv1dNeck,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
    build_head,
    head_spec,
    head_type_name,
    registered_type_name,
)
from dinov2_heads.heads.config import config_arguments
from tests.heads.conftest import random_features

#: One instance of each registered type with non-default arguments; a new type adds one here.
EXAMPLES: dict[str, nn.Module] = {
    "LinearHead": LinearHead(8, 3, n_blocks=2, avgpool=False, class_names=["a", "b", "c"]),
    "Conv1dNeck": Conv1dNeck((2, 3), 8, 2, dropout=0.25, class_names=["x", "y"]),
    "LinearDepthHead": LinearDepthHead(8, layers=2, n_bins=16, min_depth=0.5, max_depth=20.0),
    "DPTDepthHead": DPTDepthHead(8, channels=4, min_depth=0.1, max_depth=80.0),
    "LinearSegmentationHead": LinearSegmentationHead(8, 3, layers=2, dropout=0.0),
}


def example_features() -> Features:
    """Two normed last blocks for the classifiers, and every block unnormed for dense heads."""
    features = random_features(dim=8, n_blocks=2)
    gen = torch.Generator().manual_seed(1)
    blocks = {
        (index, False): (torch.randn(4, 8, generator=gen), torch.randn(4, 6, 8, generator=gen))
        for index in range(4)
    }
    patches = features.patch_tokens
    assert patches is not None
    return Features.from_tokens(
        features.class_tokens, patches, features.grid, blocks=blocks, depth=4
    )


def test_every_registered_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(HEAD_TYPES), "add an example of each new head type to EXAMPLES"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_config_round_trips_through_json(name: str) -> None:
    head = EXAMPLES[name]
    config = json.loads(json.dumps(head.config()))  # type: ignore[operator]

    rebuilt = build_head(name, config)

    assert type(rebuilt) is HEAD_TYPES[name]
    assert rebuilt.config() == head.config()  # type: ignore[operator]
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in head.state_dict().items()
    }
    assert getattr(rebuilt, "class_names", None) == getattr(head, "class_names", None)
    assert head_type_name(head) == name
    assert head_spec(head) == {"type": name, "config": head.config()}  # type: ignore[operator]
    rebuilt.load_state_dict(head.state_dict(), strict=True)
    features = example_features()
    assert torch.equal(rebuilt.eval()(features), head.eval()(features))


def test_class_names_travel_in_the_config() -> None:
    head = LinearHead.from_config({"embed_dim": 8, "num_classes": 2, "class_names": ["no", "yes"]})
    assert head.class_names == ("no", "yes")
    assert head.config()["class_names"] == ["no", "yes"]
    assert LinearHead(8, 2).config()["class_names"] is None


def test_a_neck_built_with_a_patch_count_keeps_it() -> None:
    neck = Conv1dNeck(6, 8, 2)
    assert neck.config()["num_patches"] == 6
    assert Conv1dNeck.from_config(neck.config()).grid is None
    assert Conv1dNeck.from_config(
        {"num_patches": [2, 3], "embed_dim": 8, "num_classes": 2}
    ).grid == (
        2,
        3,
    )


def test_an_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown head type 'Linear'.*Conv1dNeck, DPTDepthHead, LinearDepthHead, LinearHead",
    ):
        build_head("Linear", {"embed_dim": 8, "num_classes": 2})


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ([8, 2], TypeError, "a LinearHead config must be a mapping"),
        ({"embed_dim": 8}, ValueError, r"lacks the required key\(s\) \['num_classes'\]"),
        ({"embed_dim": 8, "num_classes": 2, "bias": 1}, ValueError, r"unknown key\(s\) \['bias'\]"),
        ({"embed_dim": 8, "num_classes": 0}, ValueError, "num_classes must be a positive int"),
        ({"embed_dim": 8, "num_classes": 2, "avgpool": "yes"}, TypeError, "avgpool must be True"),
    ],
)
def test_a_bad_config_names_the_head_and_its_keys(
    config: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build_head("LinearHead", config)


def test_config_arguments_lists_the_parameters() -> None:
    with pytest.raises(ValueError, match="its keys are num_patches, embed_dim, num_classes"):
        config_arguments(Conv1dNeck, {"num_patches": 6})
    with pytest.raises(ValueError, match="Conv1dNeck: dropout must be in"):
        build_head("Conv1dNeck", {"num_patches": 6, "embed_dim": 8, "num_classes": 2, "dropout": 1})


class Subclassed(LinearHead):
    """A subclass may compute something else: it is not the registered ``LinearHead``."""


def test_only_the_exact_registered_type_has_a_name() -> None:
    head = Subclassed(8, 2)
    assert registered_type_name(head) is None
    with pytest.raises(ValueError, match=r"Subclassed is not a registered head type.*HEAD_TYPES"):
        head_type_name(head)
    assert registered_type_name(LinearHead(8, 2)) == "LinearHead"


class ScaledClassToken(nn.Module):
    """A user's head: its own file, ``config``/``from_config``, and one registry line."""

    def __init__(self, embed_dim: int, num_classes: int, *, scale: float = 2.0) -> None:
        super().__init__()
        self.embed_dim, self.num_classes, self.scale = embed_dim, num_classes, scale
        self.proj = nn.Linear(embed_dim, num_classes)

    def config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "num_classes": self.num_classes, "scale": self.scale}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(**config_arguments(cls, config))

    def forward(self, features: Features) -> Tensor:
        return self.proj(features.class_token * self.scale)


def test_a_new_head_type_is_one_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HEAD_TYPES, "ScaledClassToken", ScaledClassToken)
    spec = {
        "heads": {
            "brand": {"type": "ScaledClassToken", "config": {"embed_dim": 8, "num_classes": 3}},
            "kind": {"type": "LinearHead", "config": {"embed_dim": 8, "num_classes": 2}},
        }
    }
    multi = MultiHead.from_config(spec)
    assert isinstance(multi["brand"], ScaledClassToken)
    assert multi.config()["heads"]["brand"]["config"] == {
        "embed_dim": 8,
        "num_classes": 3,
        "scale": 2.0,
    }


def test_multi_head_builds_its_heads_through_the_registry() -> None:
    spec = {
        "heads": {
            "brand": {
                "type": "Conv1dNeck",
                "config": {"num_patches": [2, 3], "embed_dim": 8, "num_classes": 5},
            },
            "colour": {"type": "LinearHead", "config": {"embed_dim": 8, "num_classes": 3}},
        }
    }
    multi = MultiHead.from_config(json.loads(json.dumps(spec)))
    assert multi.names == ("brand", "colour")
    assert isinstance(multi["brand"], Conv1dNeck)
    assert multi["brand"].grid == (2, 3)
    assert MultiHead.from_config(json.loads(json.dumps(multi.config()))).config() == multi.config()
    out = multi(random_features(dim=8))
    assert out["brand"].shape == (4, 5)
    assert out["colour"].shape == (4, 3)


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ("brand", TypeError, "a MultiHead config must be a mapping"),
        ({"brand": {}}, ValueError, "one key, 'heads'"),
        ({"heads": {}}, ValueError, "non-empty mapping"),
        ({"heads": {"brand": "LinearHead"}}, TypeError, "head 'brand' must be a mapping"),
        ({"heads": {"brand": {"type": "LinearHead"}}}, ValueError, "head 'brand' needs exactly"),
        (
            {"heads": {"brand": {"type": "Nope", "config": {}}}},
            ValueError,
            "head 'brand': unknown head type 'Nope'",
        ),
        (
            {"heads": {"brand": {"type": "LinearHead", "config": {"embed_dim": 8}}}},
            ValueError,
            "head 'brand': the LinearHead config lacks",
        ),
        (
            {
                "heads": {
                    "a.b": {"type": "LinearHead", "config": {"embed_dim": 8, "num_classes": 2}}
                }
            },
            ValueError,
            "not usable as a state dict prefix",
        ),
    ],
)
def test_multi_head_config_errors_name_the_head(
    config: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        MultiHead.from_config(config)


def test_a_multi_head_with_an_unregistered_head_cannot_describe_itself() -> None:
    multi = MultiHead({"custom": nn.Linear(8, 2), "brand": LinearHead(8, 2)})
    with pytest.raises(ValueError, match=r"torch\.nn\.modules\.linear\.Linear is not a registered"):
        multi.config()
