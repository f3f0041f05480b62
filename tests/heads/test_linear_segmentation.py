"""``LinearSegmentationHead``: the official BNHead's keys, definition, training and errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearSegmentationHead, MultiHead
from tests.features.conftest import tiny_backbone

OFFICIAL_KEYS = {
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
    "conv_seg.weight",
    "conv_seg.bias",
}


def features(
    layers: int = 2,
    batch: int = 3,
    dim: int = 16,
    depth: int = 4,
    seed: int = 0,
    requires_grad: bool = False,
) -> Features:
    """Features of a depth-4 backbone holding the last ``layers`` normed blocks."""
    gen = torch.Generator().manual_seed(seed)
    classes = [torch.randn(batch, dim, generator=gen) for _ in range(layers)]
    patches = [torch.randn(batch, 6, dim, generator=gen) for _ in range(layers)]
    if requires_grad:
        for tensor in patches:
            tensor.requires_grad_(True)
    return Features.from_tokens(classes, patches, (2, 3), depth=depth)


def test_state_dict_keys_are_the_official_ones() -> None:
    head = LinearSegmentationHead(16, 5, layers=4)
    assert set(head.state_dict()) == OFFICIAL_KEYS
    assert head.bn.num_features == 64
    assert head.conv_seg.weight.shape == (5, 64, 1, 1)
    named = LinearSegmentationHead(16, 2, class_names=["road", "car"])
    assert set(named.state_dict()) == OFFICIAL_KEYS | {"_extra_state"}


def test_initialisation_is_the_official_one() -> None:
    torch.manual_seed(0)
    head = LinearSegmentationHead(384, 150, layers=4)
    assert torch.equal(head.conv_seg.bias, torch.zeros(150))
    assert abs(head.conv_seg.weight.std().item() - 0.01) < 1e-3
    assert torch.equal(head.bn.weight, torch.ones(1536))


@pytest.mark.parametrize("layers", [1, 2])
def test_forward_is_resize_concat_bn_dropout_conv(layers: int) -> None:
    head = LinearSegmentationHead(16, 5, layers=layers).eval()
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2)
    feats = features(layers=2)
    logits = head(feats)
    assert logits.shape == (3, 5, 2, 3)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    maps = [feats.patch_map(i) for i in range(2 - layers, 2)]
    expected = head.conv_seg(
        F.batch_norm(
            torch.cat(maps, dim=1),
            head.bn.running_mean,
            head.bn.running_var,
            head.bn.weight,
            head.bn.bias,
            eps=1e-5,
        )
    )
    torch.testing.assert_close(logits, expected)


def test_training_mode_updates_batch_norm_and_drops_channels() -> None:
    head = LinearSegmentationHead(16, 5, layers=2, dropout=0.5).train()
    feats = features()
    torch.manual_seed(0)
    a = head(feats)
    torch.manual_seed(1)
    b = head(feats)
    assert not torch.allclose(a, b)
    assert head.bn.num_batches_tracked.item() == 2
    head.eval()
    assert torch.equal(head(feats), head(feats))


def test_gradients_reach_every_parameter_and_not_the_backbone() -> None:
    backbone = tiny_backbone(depth=2)
    head = LinearSegmentationHead(64, 3, layers=2).train()
    frozen = FrozenBackbone.for_heads(backbone, head)
    logits = head(frozen(torch.randn(2, 3, 28, 42)))
    loss = F.cross_entropy(logits, torch.randint(0, 3, (2, 2, 3)))
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in backbone.parameters())


def test_state_dict_round_trip_with_class_names() -> None:
    head = LinearSegmentationHead(16, 2, layers=2, class_names=["road", "car"])
    with torch.no_grad():
        for param in head.parameters():
            param.normal_()
    fresh = LinearSegmentationHead(16, 2, layers=2)
    fresh.load_state_dict(head.state_dict(), strict=True)
    assert fresh.class_names == ("road", "car")
    feats = features()
    assert torch.equal(fresh.eval()(feats), head.eval()(feats))


def test_config_round_trip() -> None:
    head = LinearSegmentationHead(16, 2, layers=4, dropout=0.0, class_names=["a", "b"])
    config = json.loads(json.dumps(head.config()))
    rebuilt = LinearSegmentationHead.from_config(config)
    assert rebuilt.config() == head.config()
    assert (rebuilt.layers, rebuilt.dropout_p, rebuilt.class_names) == (4, 0.0, ("a", "b"))


def test_required_blocks() -> None:
    assert LinearSegmentationHead(384, 21).required_blocks(12) == ((11, True),)
    assert LinearSegmentationHead(384, 21, layers=4).required_blocks(12) == (
        (8, True),
        (9, True),
        (10, True),
        (11, True),
    )
    multi = MultiHead({"seg": LinearSegmentationHead(384, 21, layers=4)})
    assert multi.required_blocks(40) == ((36, True), (37, True), (38, True), (39, True))


def test_errors() -> None:
    with pytest.raises(ValueError, match="reads the last 5 blocks but the backbone has 4"):
        LinearSegmentationHead(16, 2, layers=5)(features(depth=4))
    with pytest.raises(ValueError, match="reads the last 5 blocks but the backbone has 4"):
        LinearSegmentationHead(16, 2, layers=5).required_blocks(4)
    with pytest.raises(ValueError, match="built for D = 8 but the features have D = 16"):
        LinearSegmentationHead(8, 2)(features())
    with pytest.raises(ValueError, match="do not hold block -3 with norm=True") as info:
        LinearSegmentationHead(16, 2, layers=3)(features(layers=2))
    assert "FrozenBackbone.for_heads" in str(info.value)
    for kwargs in ({"layers": 0}, {"layers": True}, {"dropout": 1.0}, {"dropout": -0.1}):
        with pytest.raises(ValueError, match="LinearSegmentationHead"):
            LinearSegmentationHead(16, 2, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        LinearSegmentationHead(16, 0)
    with pytest.raises(ValueError, match="class names for 2 classes"):
        LinearSegmentationHead(16, 2, class_names=["a"])
    with pytest.raises(TypeError, match="config must be a mapping"):
        LinearSegmentationHead.from_config([16, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown key"):
        LinearSegmentationHead.from_config({"embed_dim": 16, "num_classes": 2, "depth": 3})
    with pytest.raises(TypeError, match="reads Features"):
        LinearSegmentationHead(16, 2)(torch.randn(2, 16))  # type: ignore[arg-type]


def test_is_a_module_with_a_readable_repr() -> None:
    head = LinearSegmentationHead(384, 150, layers=4)
    assert isinstance(head, nn.Module)
    assert "layers=4" in repr(head)
