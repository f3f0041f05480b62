from __future__ import annotations

import pytest
import torch
from torch import nn

from dinov2_heads.heads import Conv1dNeck, LinearHead, MultiHead
from tests.heads.conftest import random_features


def make_multi() -> MultiHead:
    torch.manual_seed(0)
    return MultiHead(
        {
            "brand": LinearHead(8, 5, n_blocks=2, class_names=list("abcde")),
            "colour": Conv1dNeck((2, 3), 8, 3),
        }
    )


def test_returns_each_heads_logits_in_order() -> None:
    multi = make_multi().eval()
    features = random_features(dim=8, n_blocks=2)
    out = multi(features)
    assert list(out) == ["brand", "colour"]
    assert out["brand"].shape == (4, 5)
    assert out["colour"].shape == (4, 3)
    assert torch.equal(out["brand"], multi["brand"](features))
    assert torch.equal(out["colour"], multi["colour"](features))
    assert multi.names == ("brand", "colour")
    assert len(multi) == 2


def test_state_dict_keys_are_name_dot_key() -> None:
    keys = set(make_multi().state_dict())
    assert {"brand.weight", "brand.bias", "colour.conv1.conv.weight", "colour.linear.bias"} <= keys
    assert all(key.split(".")[0] in {"brand", "colour"} for key in keys)


def test_state_dict_round_trip() -> None:
    multi = make_multi()
    with torch.no_grad():
        for param in multi.parameters():
            param.normal_()
    fresh = make_multi()
    fresh.load_state_dict(multi.state_dict(), strict=True)
    features = random_features(dim=8, n_blocks=2)
    a, b = fresh.eval()(features), multi.eval()(features)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_class_names_per_head() -> None:
    multi = MultiHead({"a": LinearHead(8, 2, class_names=["x", "y"]), "b": LinearHead(8, 3)})
    assert multi.class_names == {"a": ("x", "y"), "b": None}
    fresh = MultiHead({"a": LinearHead(8, 2), "b": LinearHead(8, 3)})
    fresh.load_state_dict(multi.state_dict(), strict=True)
    assert fresh.class_names == {"a": ("x", "y"), "b": None}


def test_gradients_reach_every_head_parameter() -> None:
    multi = make_multi().train()
    out = multi(random_features(dim=8, n_blocks=2))
    (out["brand"].logsumexp(-1).mean() + out["colour"].logsumexp(-1).mean()).backward()
    for name, param in multi.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_bad_names() -> None:
    with pytest.raises(ValueError, match="non-empty mapping"):
        MultiHead({})
    with pytest.raises(ValueError, match="without dots"):
        MultiHead({"vehicle.type": LinearHead(8, 2)})
    with pytest.raises(ValueError, match="without dots"):
        MultiHead({"": LinearHead(8, 2)})
    with pytest.raises(TypeError, match=r"nn\.Module"):
        MultiHead({"a": torch.zeros(2)})  # type: ignore[dict-item]
    assert isinstance(MultiHead({"a": nn.Identity()})["a"], nn.Identity)


def attribute_named_heads() -> MultiHead:
    heads = {"type": LinearHead(8, 3), "keys": LinearHead(8, 2), "brand": LinearHead(8, 4)}
    return MultiHead(heads)


def test_names_that_are_module_attributes() -> None:
    multi = attribute_named_heads()
    assert multi.names == ("type", "keys", "brand")
    assert isinstance(multi["type"], LinearHead)
    assert callable(multi.type)  # still nn.Module.type
    assert {"type.weight", "keys.bias", "brand.weight"} <= set(multi.state_dict())
    out = multi(random_features(dim=8))
    assert out["type"].shape == (4, 3)
    assert out["keys"].shape == (4, 2)
    assert len(list(multi.parameters())) == 6
    fresh = attribute_named_heads()
    fresh.load_state_dict(multi.state_dict(), strict=True)
    assert torch.equal(fresh["type"].weight, multi["type"].weight)


def test_names_that_are_module_state_are_refused() -> None:
    # train()/eval() assign self.training, which would fail on a head registered under it.
    for name in ("training", "_modules", "_parameters"):
        with pytest.raises(ValueError, match=rf"head name {name!r} .*nn\.Module"):
            MultiHead({name: LinearHead(8, 2)})


def test_a_plain_tensor_reaches_every_head() -> None:
    linear = MultiHead({"a": LinearHead(8, 2), "b": LinearHead(8, 3)})
    out = linear(torch.randn(4, 16))
    assert out["a"].shape == (4, 2)
    assert out["b"].shape == (4, 3)
    with pytest.raises(TypeError, match="Conv1dNeck reads Features"):
        make_multi()(torch.randn(4, 24))  # the linear head takes it, the neck cannot
