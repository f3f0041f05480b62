"""``FrozenBackbone`` on ``uint8`` pixels: normalised on its device, the features of the float path.

``Preprocess(..., normalize=False)`` hands on the resized ``uint8`` pixels; the frozen backbone
converts and normalises them with the same function, so the features equal those of
``Preprocess()`` + float images bit for bit on the CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess, pil_to_tensor
from dinov2_heads.features import Features, FrozenBackbone, class_attention
from tests.data.conftest import noise_image


def photos(count: int = 3) -> list[Any]:
    return [noise_image(40 + 7 * i, 70 - 5 * i, seed=i) for i in range(count)]


def both_ways(preprocess: Preprocess, images: list[Any]) -> tuple[Tensor, Tensor]:
    """The batch (B, 3, H, W) as normalised floats, and as the uint8 pixels it came from."""
    floats = torch.stack([preprocess(image) for image in images])
    pixels = torch.stack([preprocess.replace(normalize=False)(image) for image in images])
    return floats, pixels


def assert_same_features(a: Features, b: Features) -> None:
    assert a.grid == b.grid
    pairs = [*zip(a.class_tokens, b.class_tokens, strict=True)]
    assert a.patch_tokens is not None
    assert b.patch_tokens is not None
    pairs += [*zip(a.patch_tokens, b.patch_tokens, strict=True)]
    pairs.append((a.patch_mean, b.patch_mean))
    if a.register_tokens is not None or b.register_tokens is not None:
        assert a.register_tokens is not None
        assert b.register_tokens is not None
        pairs.append((a.register_tokens, b.register_tokens))
    assert a.blocks.keys() == b.blocks.keys()
    for key in a.blocks:
        pairs += [*zip(a.blocks[key], b.blocks[key], strict=True)]
    for x, y in pairs:
        assert x.dtype == y.dtype == torch.float32
        assert torch.equal(x, y)


@pytest.mark.parametrize("registers", [0, 4])
def test_uint8_pixels_give_the_features_of_the_float_path_bit_for_bit(
    tiny: DinoVisionTransformer, tiny_reg: DinoVisionTransformer, registers: int
) -> None:
    backbone = tiny_reg if registers else tiny
    # Two last blocks and an unnormed block: every output of the pass is compared.
    frozen = FrozenBackbone(backbone, n_last_blocks=2, blocks=[(0, False)], compile=False)
    for preprocess in (Preprocess(resize=(28, 42)), Preprocess(resize=28, crop=(28, 28))):
        floats, pixels = both_ways(preprocess, photos())
        assert pixels.dtype == torch.uint8
        assert_same_features(frozen(pixels), frozen(floats))


def test_the_mean_and_std_given_are_the_ones_used(tiny: DinoVisionTransformer) -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    preprocess = Preprocess(resize=(28, 42), mean=mean, std=std)
    floats, pixels = both_ways(preprocess, photos())
    frozen = FrozenBackbone(tiny, mean=mean, std=std)
    assert (frozen.mean, frozen.std) == (mean, std)
    assert "mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)" in repr(frozen)
    assert_same_features(frozen(pixels), frozen(floats))
    # ImageNet's by default, which give other features for these pixels.
    default = FrozenBackbone(tiny)
    assert (default.mean, default.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert not torch.equal(default(pixels).class_token, frozen(pixels).class_token)
    # for_heads passes them on.
    assert FrozenBackbone.for_heads(tiny, [], mean=mean, std=std).mean == mean


def test_low_precision_weights_normalise_in_float32_then_cast(
    tiny: DinoVisionTransformer,
) -> None:
    frozen = FrozenBackbone(tiny, n_last_blocks=2, dtype=torch.bfloat16)
    floats, pixels = both_ways(Preprocess(resize=(28, 42)), photos())
    from_pixels = frozen(pixels)
    assert from_pixels.class_token.dtype == torch.float32
    # The same float32 values cast to bfloat16 either way: the same features.
    assert_same_features(from_pixels, frozen(floats))


def test_pixels_are_moved_as_uint8_then_converted_on_the_device() -> None:
    # A backbone on the meta device stands for a GPU: every operation is recorded.
    model = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, device="meta")
    frozen = FrozenBackbone(model)
    pixels = torch.randint(0, 256, (2, 3, 28, 42), dtype=torch.uint8)
    with _Recorder() as recorded:
        features = frozen(pixels)
    assert features.class_token.device.type == "meta"
    first = recorded.calls[0]
    assert first == ("aten._to_copy.default", ("cpu", torch.uint8), ("meta", torch.uint8))
    # Nothing is computed on the CPU: the conversion to float happens after the copy.
    assert all(inputs[0] == "meta" for _, inputs, _ in recorded.calls[1:] if inputs)


class _Recorder(TorchDispatchMode):
    """(operation, (device, dtype) of its first tensor input, (device, dtype) of its output)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any, Any]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in args if isinstance(a, Tensor)]
        first = (tensors[0].device.type, tensors[0].dtype) if tensors else None
        result = (out.device.type, out.dtype) if isinstance(out, Tensor) else None
        self.calls.append((str(func), first, result))
        return out


def test_only_uint8_integers_are_taken(tiny: DinoVisionTransformer) -> None:
    frozen = FrozenBackbone(tiny)
    with pytest.raises(TypeError, match=r"uint8 images \(decoded pixels 0\.\.255, normalised here"):
        frozen(torch.zeros(1, 3, 28, 28, dtype=torch.int64))
    with pytest.raises(ValueError, match="unsqueeze"):
        frozen(torch.zeros(3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of patch size 14"):
        frozen(torch.zeros(1, 3, 30, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="meta device, which holds shapes but no values"):
        frozen(torch.zeros(1, 3, 28, 28, dtype=torch.uint8, device="meta"))
    # Float images on another device are refused as before: only pixels are moved.
    model = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=1, device="meta")
    meta = FrozenBackbone(model)
    with pytest.raises(ValueError, match="images are on cpu but the backbone's weights are on"):
        meta(torch.zeros(1, 3, 28, 28))


def test_bad_mean_and_std_are_refused(tiny: DinoVisionTransformer) -> None:
    with pytest.raises(ValueError, match="one value per RGB channel"):
        FrozenBackbone(tiny, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std values must be positive"):
        FrozenBackbone(tiny, std=(0.2, -0.2, 0.2))
    with pytest.raises(ValueError, match="finite"):
        FrozenBackbone(tiny, std=(0.2, float("inf"), 0.2))
    with pytest.raises(TypeError, match="mean must be three numbers"):
        FrozenBackbone(tiny, mean="imagenet")  # type: ignore[arg-type]


def test_pixels_need_no_finite_check_and_float_images_keep_it(
    tiny: DinoVisionTransformer,
) -> None:
    frozen = FrozenBackbone(tiny)
    pixels = torch.full((1, 3, 28, 28), 255, dtype=torch.uint8)
    assert bool(torch.isfinite(frozen(pixels).class_token).all())
    poisoned = torch.zeros(1, 3, 28, 28)
    poisoned[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        frozen(poisoned)


def test_class_attention_takes_pixels_through_a_frozen_backbone(
    tiny_reg: DinoVisionTransformer,
) -> None:
    image = noise_image(28, 42, seed=5)
    preprocess = Preprocess(resize=(28, 42))
    floats = preprocess(image)[None]
    pixels = pil_to_tensor(image)[None]
    frozen = FrozenBackbone(tiny_reg)
    from_pixels = class_attention(frozen, pixels)
    assert torch.equal(from_pixels.patches, class_attention(frozen, floats).patches)
    assert torch.equal(from_pixels.to_registers, class_attention(tiny_reg, floats).to_registers)
    # A bare backbone has no mean and std: pixels are refused, not cast to float.
    with pytest.raises(TypeError, match=r"got torch\.uint8; normalise them first"):
        class_attention(tiny_reg, pixels)
