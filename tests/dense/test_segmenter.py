"""``Segmenter`` against mmsegmentation's ``EncoderDecoder`` written out (tests/dense/official.py).

A tiny random backbone and head; sizes that are not multiples of 14, sliding windows, flips and
scales, which the official fixtures do not cover.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer
from dinov2_heads.dense import Segmenter
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearSegmentationHead
from tests.dense.conftest import tiny_backbone
from tests.dense.official import OfficialSegmentor, official_aug_test


def trained_head(dim: int = 32, classes: int = 5, layers: int = 2) -> LinearSegmentationHead:
    """A head with non-default batch-norm statistics and visible weights, as after training."""
    torch.manual_seed(3)
    head = LinearSegmentationHead(dim, classes, layers=layers)
    with torch.no_grad():
        head.bn.weight.uniform_(0.5, 1.5)
        head.bn.bias.normal_(std=0.2)
        head.bn.running_mean.normal_(std=0.2)
        head.bn.running_var.uniform_(0.5, 2.0)
        head.conv_seg.weight.normal_(std=0.5)
        head.conv_seg.bias.normal_(std=0.5)
    return head.eval()


def images(batch: int = 2, height: int = 37, width: int = 53, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def reference(
    backbone: DinoVisionTransformer,
    head: LinearSegmentationHead,
    out_indices: list[int],
    in_index: list[int],
) -> OfficialSegmentor:
    return OfficialSegmentor(backbone, head.bn, head.conv_seg, out_indices, in_index)


SETTINGS = [
    ("whole", None, (1.0,), False),
    ("whole", None, (1.0,), True),
    ("whole", None, (0.75, 1.3), True),
    ("slide", ((30, 40), (20, 25)), (1.0,), False),
    ("slide", ((30, 40), (20, 25)), (1.0, 1.5), True),
    ("slide", ((28, 28), (14, 14)), (0.8,), False),
]


@pytest.mark.parametrize(("mode", "slide", "scales", "flip"), SETTINGS)
@pytest.mark.parametrize(("height", "width"), [(37, 53), (28, 42), (20, 31)])
def test_equals_the_official_encoder_decoder(
    mode: str,
    slide: tuple[tuple[int, int], tuple[int, int]] | None,
    scales: tuple[float, ...],
    flip: bool,
    height: int,
    width: int,
) -> None:
    backbone, head = tiny_backbone(depth=3), trained_head(layers=2)
    segmenter = Segmenter(
        backbone,
        head,
        mode=mode,  # type: ignore[arg-type]
        crop_size=slide[0] if slide else None,
        stride=slide[1] if slide else None,
        flip=flip,
        scales=scales,
    ).eval()
    # The released configs: the hook returns the last blocks, the head reads some of them.
    official = reference(backbone, head, out_indices=[0, 1, 2], in_index=[1, 2])
    x = images(height=height, width=width)
    with torch.no_grad():
        got = segmenter(x)
        expected = official_aug_test(official.encode_decode, x, list(scales), flip, slide)
    assert got.shape == (2, 5, height, width)
    assert (got - expected).abs().max() < 1e-5


def test_linear_head_reads_the_last_block_as_in_index_3() -> None:
    backbone, head = tiny_backbone(depth=4, registers=4), trained_head(layers=1)
    official = reference(backbone, head, out_indices=[0, 1, 2, 3], in_index=[3])
    x = images(height=45, width=30)
    with torch.no_grad():
        got = Segmenter(backbone, head).eval().logits(x)
        expected = official.encode_decode(x)
    assert (got - expected).abs().max() < 1e-5


def test_crops_are_batched_through_the_backbone() -> None:
    backbone, head = tiny_backbone(depth=2), trained_head(layers=1)
    calls = [0]
    backbone.blocks[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    x = images(height=40, width=60)
    batched = Segmenter(backbone, head, mode="slide", crop_size=28, stride=14, flip=True).eval()
    one_by_one = Segmenter(
        backbone, head, mode="slide", crop_size=28, stride=14, flip=True, crops_per_call=1
    ).eval()
    with torch.no_grad():
        a = batched(x)
        assert calls == [1]
        b = one_by_one(x)
    assert calls == [1 + 2 * 4]  # 2 x 4 windows, the image and its mirror together
    assert (a - b).abs().max() < 1e-5


def test_predict_and_probabilities() -> None:
    segmenter = Segmenter(tiny_backbone(), trained_head(layers=1)).eval()
    x = images()
    with torch.no_grad():
        probabilities = segmenter(x)
        labels = segmenter.predict(x)
    assert probabilities.dtype == torch.float32
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2, 37, 53))
    assert labels.shape == (2, 37, 53)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, probabilities.argmax(dim=1))


def test_a_frozen_backbone_is_used_as_is_and_checked() -> None:
    backbone, head = tiny_backbone(depth=3), trained_head(layers=2)
    frozen = FrozenBackbone.for_heads(backbone, head)
    assert Segmenter(frozen, head).frozen is frozen
    with pytest.raises(ValueError, match=r"does not extract the blocks \[\(1, True\)\]") as info:
        Segmenter(FrozenBackbone(backbone), head)
    assert "FrozenBackbone.for_heads(backbone, head)" in str(info.value)
    # n_last_blocks covers the head too.
    assert Segmenter(FrozenBackbone(backbone, n_last_blocks=2), head).head is head


def test_head_trains_through_the_segmenter_and_the_backbone_does_not() -> None:
    backbone, head = tiny_backbone(depth=2), LinearSegmentationHead(32, 4)
    segmenter = Segmenter(backbone, head).train()
    assert not segmenter.frozen.training
    logits = segmenter.logits(images(height=30, width=30))
    assert logits.shape == (2, 4, 30, 30)
    loss = nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 30, 30)))
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in backbone.parameters())


def test_bad_input() -> None:
    segmenter = Segmenter(tiny_backbone(), trained_head(layers=1)).eval()
    with pytest.raises(ValueError, match=r"images\.unsqueeze\(0\)"):
        segmenter(torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(1, 1, 28, 28\)"):
        segmenter(torch.randn(1, 1, 28, 28))
    with pytest.raises(TypeError, match=r"Segmenter takes .* got torch\.int16; pass pixels as"):
        segmenter(torch.zeros(1, 3, 28, 28, dtype=torch.int16))

    class Classifier(nn.Module):
        def forward(self, features: Features) -> Tensor:
            return features.class_token

    with pytest.raises(ValueError, match=r"logits \(B, K, h, w\)"):
        Segmenter(tiny_backbone(), Classifier())(images())
    with pytest.raises(TypeError, match=r"head must be an nn\.Module"):
        Segmenter(tiny_backbone(), "head")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs crop_size and stride"):
        Segmenter(tiny_backbone(), trained_head(layers=1), mode="slide")
    with pytest.raises(ValueError, match="reads the last 4 blocks but the backbone has 3"):
        Segmenter(tiny_backbone(depth=3), LinearSegmentationHead(32, 2, layers=4))


# ---------------------------------------------------------------------- presets


def test_from_preset_with_overrides() -> None:
    backbone, head = tiny_backbone(depth=4), LinearSegmentationHead(32, 21, layers=4)
    segmenter = Segmenter.from_preset(backbone, head, "voc2012_ms", scales=(1.0,))
    assert segmenter.settings.crop_size == (640, 640)
    assert segmenter.settings.flip
    assert segmenter.settings.scales == (1.0,)
    assert "mode='slide'" in repr(segmenter)
