"""Images the backbone cannot use are refused up front: non-finite, empty, or on another device.

The checks are shared: ``DinoVisionTransformer`` makes the ones that read no pixel,
``FrozenBackbone`` and ``predict`` also refuse NaN and infinity (one reduction per batch), with
``check_finite=False`` to let them through.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.backbone.vision_transformer import (
    NonFiniteInputError,
    check_finite_images,
    check_float_images,
)
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import LinearHead, predict


def poisoned(value: float, batch: int = 3, row: int = 1) -> torch.Tensor:
    x = torch.randn(batch, 3, 28, 28)
    x[row, 1, 5, 7] = value
    return x


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_frozen_backbone_refuses_non_finite_pixels(
    tiny: DinoVisionTransformer, value: float
) -> None:
    frozen = FrozenBackbone(tiny)
    with pytest.raises(ValueError, match=r"hold .* values \(samples 1 of the batch\)"):
        frozen(poisoned(value))
    # The opt-out lets them through, and the features are then not finite.
    features = FrozenBackbone(tiny, check_finite=False)(poisoned(value))
    assert not bool(torch.isfinite(features.class_tokens[0][1]).all())
    assert bool(torch.isfinite(features.class_tokens[0][0]).all())


def test_predict_refuses_non_finite_images_instead_of_naming_a_class(
    tiny: DinoVisionTransformer,
) -> None:
    model = nn.Sequential(FrozenBackbone(tiny, check_finite=False), LinearHead(64, 3))
    with pytest.raises(ValueError, match=r"the inputs hold 1 NaN and 0 infinite values"):
        predict(model, poisoned(float("nan")), class_names=["a", "b", "c"])
    # Let through, the probabilities of the poisoned sample are NaN, as they are.
    pred = predict(model, poisoned(float("nan")), check_finite=False)
    assert not isinstance(pred, dict)
    assert bool(pred.probabilities[1].isnan().all())


def test_the_message_counts_and_lists_samples() -> None:
    x = torch.zeros(12, 3, 14, 14)
    x[[0, 2, 3, 4, 5, 6, 7, 8, 9], 0, 0, 0] = float("nan")
    x[11, 2, 3, 3] = float("inf")
    with pytest.raises(
        NonFiniteInputError, match=r"9 NaN and 1 infinite values \(samples 0, 2, 3, 4"
    ) as caught:
        check_finite_images(x)
    assert caught.value.samples == [0, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert isinstance(caught.value, ValueError)
    check_finite_images(torch.zeros(2, 3, 14, 14))
    check_finite_images(torch.full((2, 3, 14, 14), float("nan"), device="meta"))


@pytest.mark.parametrize("size", [(0, 0), (0, 14), (14, 0)])
def test_zero_sized_images_are_refused_before_the_convolution(
    tiny: DinoVisionTransformer, size: tuple[int, int]
) -> None:
    x = torch.zeros(1, 3, *size)
    message = rf"images of {size[0]}x{size[1]} pixels .* have no pixels"
    for call in (tiny, tiny.forward_features, FrozenBackbone(tiny)):
        with pytest.raises(ValueError, match=message):
            call(x)


def test_meta_images_on_a_real_backbone_are_refused(tiny: DinoVisionTransformer) -> None:
    x = torch.zeros(1, 3, 28, 28, device="meta")
    for call in (tiny, FrozenBackbone(tiny)):
        with pytest.raises(ValueError, match=r"meta device, which holds shapes but no values"):
            call(x)


def test_meta_images_on_a_meta_backbone_give_shapes() -> None:
    model = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, device="meta")
    features = FrozenBackbone(model)(torch.zeros(2, 3, 28, 42, device="meta"))
    assert features.class_tokens[0].shape == (2, 64)
    assert features.grid == (2, 3)


def test_images_on_another_device_than_the_weights() -> None:
    weights = torch.zeros(1, device="meta")
    with pytest.raises(ValueError, match=r"images are on cpu but the backbone's weights are on"):
        check_float_images(torch.zeros(1, 3, 14, 14), weights=weights)
