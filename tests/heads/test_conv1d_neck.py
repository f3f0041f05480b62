from __future__ import annotations

import pytest
import torch
from torch import nn

from dinov2_heads.features import Features
from dinov2_heads.heads import Conv1dNeck
from tests.heads.conftest import random_features, trained_blog_neck


def test_blog_neck_loads_unchanged_and_matches_in_eval() -> None:
    grid, dim, classes = (2, 3), 16, 5
    blog = trained_blog_neck(6, dim, classes).eval()
    neck = Conv1dNeck(grid, dim, classes)
    assert set(neck.state_dict()) == set(blog.state_dict())
    neck.load_state_dict(blog.state_dict(), strict=True)
    neck.eval()

    features = random_features(batch=3, dim=dim, grid=grid)
    assert features.patch_tokens is not None
    official_tuple = ((features.patch_tokens[-1], features.class_token),)
    with torch.no_grad():
        expected = blog(official_tuple)
    got = neck(features)
    assert got.shape == (3, classes)
    assert torch.allclose(got, expected, atol=1e-6)


def test_state_dict_keys() -> None:
    keys = set(Conv1dNeck(6, 8, 3).state_dict())
    bn = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    expected = {"conv1.conv.weight", "conv2.conv.weight", "linear.weight", "linear.bias"}
    expected |= {f"conv{i}.bn.{k}" for i in (1, 2) for k in bn}
    assert keys == expected


def test_mean_first_then_class_token() -> None:
    torch.manual_seed(0)
    neck = Conv1dNeck(6, 4, 2, dropout=0.0).eval()
    features = random_features(batch=2, dim=4, grid=(2, 3))
    with torch.no_grad():
        mixed = neck.conv2(neck.conv1(features.require_patch_tokens("test")[-1]))
        pooled = torch.cat([mixed.mean(dim=1), features.class_token], -1)
        assert torch.allclose(neck(features), neck.linear(pooled))
        swapped = torch.cat([features.class_token, mixed.mean(dim=1)], -1)
        assert not torch.allclose(neck(features), neck.linear(swapped))


def test_initialisation() -> None:
    torch.manual_seed(0)
    neck = Conv1dNeck(6, 200, 300)
    assert torch.equal(neck.linear.bias, torch.zeros(300))
    assert abs(neck.linear.weight.std().item() - 0.01) < 5e-4
    assert torch.equal(neck.conv1.bn.weight, torch.ones(6))


def test_training_mode_dropout_and_gradients() -> None:
    torch.manual_seed(0)
    neck = Conv1dNeck((2, 3), 8, 3)
    features = random_features(batch=4, dim=8, grid=(2, 3), requires_grad=True)
    neck.train()
    first, second = neck(features), neck(features)
    assert not torch.allclose(first, second)  # dropout is on while training
    nn.functional.cross_entropy(first, torch.tensor([0, 1, 2, 0])).backward()
    for name, param in neck.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    neck.eval()
    assert torch.equal(neck(features), neck(features))


def test_uses_the_last_block() -> None:
    neck = Conv1dNeck(6, 8, 3).eval()
    deep = random_features(dim=8, n_blocks=3)
    assert deep.patch_tokens is not None
    last = Features.from_tokens([deep.class_token], [deep.patch_tokens[-1]], deep.grid)
    assert torch.equal(neck(deep), neck(last))


def test_state_dict_round_trip_with_names() -> None:
    neck = Conv1dNeck(6, 8, 3, class_names=["a", "b", "c"])
    with torch.no_grad():
        neck.conv1.bn.running_mean.normal_()
    other = Conv1dNeck(6, 8, 3)
    other.load_state_dict(neck.state_dict(), strict=True)
    assert other.class_names == ("a", "b", "c")
    features = random_features(dim=8)
    assert torch.equal(other.eval()(features), neck.eval()(features))


def test_other_grid_is_an_error_naming_both() -> None:
    neck = Conv1dNeck((9, 18), 8, 3)
    with pytest.raises(ValueError, match=r"9x18 grid \(162 patch tokens\).*16x16 grid \(256"):
        neck(random_features(dim=8, grid=(16, 16)))
    with pytest.raises(ValueError, match=r"9x18 grid .* 18x9 grid"):
        neck(random_features(dim=8, grid=(18, 9)))
    with pytest.raises(ValueError, match=r"built for 6 patch tokens .* 4x4 grid"):
        Conv1dNeck(6, 8, 3)(random_features(dim=8, grid=(4, 4)))
    with pytest.raises(ValueError, match="D = 8 but the features have D = 16"):
        Conv1dNeck(6, 8, 3)(random_features(dim=16))


def test_pooled_features_are_refused() -> None:
    features = random_features(dim=8)
    pooled = Features(features.class_tokens, None, features.patch_mean, None, features.grid)
    with pytest.raises(ValueError, match="Conv1dNeck needs every patch token"):
        Conv1dNeck(6, 8, 3)(pooled)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_patches"):
        Conv1dNeck(0, 8, 3)
    with pytest.raises(ValueError, match="grid"):
        Conv1dNeck((3, 0), 8, 3)
    with pytest.raises(ValueError, match="dropout"):
        Conv1dNeck(6, 8, 3, dropout=1.0)


def test_a_plain_tensor_is_a_type_error_saying_what_the_neck_reads() -> None:
    neck = Conv1dNeck((2, 3), 8, 3)
    with pytest.raises(TypeError, match=r"Conv1dNeck reads Features .* got a tensor of shape"):
        neck(torch.randn(4, 16))
