"""Bad inputs are clear ValueErrors, not deep stack traces."""

from __future__ import annotations

import pytest
import torch

from dinov2_heads import DinoVisionTransformer


def test_integer_images_are_refused(tiny: DinoVisionTransformer) -> None:
    pixels = torch.zeros(1, 3, 28, 28, dtype=torch.uint8)
    for call in (tiny.forward_features, tiny.get_intermediate_layers, tiny):
        with pytest.raises(TypeError, match=r"got torch\.uint8; normalise them first"):
            call(pixels)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 224, 224), "expected images of shape \\(B, 3, H, W\\), got a 3-D tensor"),
        ((2, 1, 224, 224), "expected 3 colour channels, got 1"),
        ((2, 4, 224, 224), "expected 3 colour channels, got 4"),
        ((0, 3, 224, 224), "empty batch"),
        ((1, 3, 125, 250), "125x250 is not a multiple of patch size 14; resize to 126x252"),
        ((1, 3, 224, 230), "resize to 224x224"),
        ((1, 3, 5, 14), "resize to 14x14"),
    ],
)
def test_bad_images(tiny: DinoVisionTransformer, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny.forward_features(torch.zeros(shape))
    with pytest.raises(ValueError, match=message):
        tiny.get_intermediate_layers(torch.zeros(shape))


@pytest.mark.parametrize(
    ("n", "error", "message"),
    [
        (0, ValueError, "between 1 and the depth 2"),
        (3, ValueError, "between 1 and the depth 2"),
        ([5], ValueError, "out of range"),
        ([], ValueError, "empty"),
        (1.5, TypeError, "int or a sequence"),
        (True, TypeError, "int or a sequence"),
        ("01", TypeError, "int or a sequence"),
        ([1.0], TypeError, "block indices must be ints, got 1.0"),
        ([True], TypeError, "block indices must be ints, got True"),
        # The official code returns one output per index asked for; a repeat cannot be honoured.
        ([1, 1], ValueError, "block 1 is asked for twice"),
        ([-1, 1], ValueError, "block 1 is asked for twice"),
    ],
)
def test_bad_block_selection(
    tiny: DinoVisionTransformer, n: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        tiny.get_intermediate_layers(torch.zeros(1, 3, 28, 28), n=n)  # type: ignore[arg-type]


def test_bad_mask_shape(tiny: DinoVisionTransformer) -> None:
    with pytest.raises(ValueError, match="masks must have shape"):
        tiny.forward_features(torch.zeros(1, 3, 28, 28), masks=torch.zeros(1, 5, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int64])
def test_masks_that_are_not_bool(tiny: DinoVisionTransformer, dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=f"masks must be a bool tensor, got {dtype}"):
        tiny.forward_features(torch.zeros(1, 3, 28, 28), masks=torch.zeros(1, 4, dtype=dtype))
