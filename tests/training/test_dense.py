"""``DenseLoss``, ``evaluate_dense`` and the dense task registry: segmentation and depth heads
trained and scored together, on cached features or on images."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads import create_backbone
from dinov2_heads.cache import FeatureStore
from dinov2_heads.dense import SegmentationLoss, SegmentationMetrics, Segmenter
from dinov2_heads.dense.depther import Depther
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import (
    DepthLoss,
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
)
from dinov2_heads.training import (
    DENSE_TASKS,
    DenseLoss,
    DepthMetrics,
    dense_head_loss,
    dense_task,
    evaluate_dense,
    resize_dense_output,
    train_one_epoch,
)

SIZE = (28, 42)


@dataclass(frozen=True)
class Setup:
    backbone: torch.nn.Module
    frozen: FrozenBackbone
    heads: MultiHead
    images: Tensor
    masks: Tensor
    depths: Tensor
    features: Features


@pytest.fixture(scope="module")
def setup() -> Setup:
    """A two-block backbone, a segmentation and a depth head, images, masks and depth maps."""
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=2, embed_dim=32, num_heads=1, img_size=42)
    heads = MultiHead(
        {
            "parts": LinearSegmentationHead(32, 3, class_names=("a", "b", "c")),
            "depth": LinearDepthHead(32, layers=1, max_depth=10.0),
        }
    )
    frozen = FrozenBackbone.for_heads(backbone, heads)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, *SIZE, generator=generator)
    masks = torch.randint(0, 3, (6, *SIZE), generator=generator)
    masks[:, :2] = 255  # a band without labels
    depths = torch.rand(6, 1, *SIZE, generator=generator) * 12  # some beyond 10 m
    depths[:, :, -3:] = 0.0  # no measurement
    with torch.no_grad():
        features = frozen(images)
    return Setup(backbone, frozen, heads, images, masks, depths, features)


def test_the_registry_names_the_task_of_every_dense_head() -> None:
    assert dense_task(LinearSegmentationHead(8, 2)) == "segmentation"
    assert dense_task(LinearDepthHead(8)) == "depth"
    assert dense_task(DPTDepthHead(8, channels=8)) == "depth"
    assert dense_task(LinearHead(8, 2)) is None
    assert set(DENSE_TASKS) == {"LinearSegmentationHead", "LinearDepthHead", "DPTDepthHead"}


def test_dense_loss_is_each_head_s_loss_summed(setup: Setup) -> None:
    heads, features = setup.heads, setup.features
    masks, depths = setup.masks, setup.depths
    heads.eval()
    outputs = heads(features)
    loss_fn = DenseLoss(heads, labels={"parts": "mask"}, weights={"depth": 0.5})
    total, per_head = loss_fn(outputs, {"mask": masks, "depth": depths})
    expected_parts = SegmentationLoss()(outputs["parts"], masks)
    # The depth head's default loss: DepthLoss with its max_depth (targets beyond it left out).
    expected_depth = DepthLoss(max_depth=10.0)(outputs["depth"], depths).total
    assert torch.allclose(per_head["parts"], expected_parts)
    assert torch.allclose(per_head["depth"], expected_depth)
    assert torch.allclose(total, expected_parts + 0.5 * expected_depth)
    total.backward()
    for name, parameter in heads.named_parameters():
        assert parameter.grad is not None, name
        assert bool(parameter.grad.abs().sum() > 0), name


def test_one_head_trains_as_with_its_own_loss(setup: Setup) -> None:
    """DenseLoss around one head gives the same steps as SegmentationLoss itself."""
    features, masks = setup.features, setup.masks
    store = FeatureStore.from_features(features, masks)
    weights = []
    for wrap in (False, True):
        torch.manual_seed(0)
        head = LinearSegmentationHead(32, 3)
        loss_fn = DenseLoss(head) if wrap else SegmentationLoss()
        optimizer = torch.optim.AdamW(head.parameters(), lr=0.01)
        loader = store.dataset(heads=head).loader(2, shuffle=True, seed=0)
        train_one_epoch(head, loader, optimizer, loss_fn)
        weights.append(head.conv_seg.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_loss_options_and_mistakes() -> None:
    depth_loss = dense_head_loss(LinearDepthHead(8, max_depth=7.0), warm_up_steps=0)
    assert isinstance(depth_loss, DepthLoss)
    assert depth_loss.sig.max_depth == 7.0
    assert depth_loss.sig.warm_up_steps == 0
    with pytest.raises(ValueError, match=r"head 'x': the depth loss \(DepthLoss\) takes"):
        dense_head_loss(LinearDepthHead(8), "x", class_weights=[1.0])
    with pytest.raises(ValueError, match="head 'kind' is a LinearHead, not a dense head"):
        DenseLoss(MultiHead({"kind": LinearHead(8, 2)}))
    one = MultiHead({"p": LinearSegmentationHead(8, 2)})
    with pytest.raises(ValueError, match=r"losses for \['other'\] match no head"):
        DenseLoss(one, losses={"other": SegmentationLoss()})
    loss_fn = DenseLoss(one)
    with pytest.raises(ValueError, match=r"head 'p' learns the label 'p', which the targets lack"):
        loss_fn({"p": torch.zeros(1, 2, 2, 2)}, {"mask": torch.zeros(1, 4, 4, dtype=torch.long)})


def test_evaluate_dense_scores_what_segmenter_and_depther_compute(
    setup: Setup,
) -> None:
    heads, frozen, backbone = setup.heads, setup.frozen, setup.backbone
    images, masks, depths = setup.images, setup.masks, setup.depths
    heads.train()
    batches = [
        (images[:4], {"mask": masks[:4], "depth": depths[:4]}),
        (images[4:], {"mask": masks[4:], "depth": depths[4:]}),
    ]
    scores = evaluate_dense(heads, batches, labels={"parts": "mask"}, frozen=frozen)
    assert heads.training  # restored

    segmentation, depth = SegmentationMetrics(3), DepthMetrics(max_depth=10.0)
    with torch.no_grad():
        segmenter = Segmenter(backbone, heads["parts"].eval()).eval()
        depther = Depther(backbone, heads["depth"].eval()).eval()
        segmentation.update(segmenter(images), masks)
        depth.update(depther(images), depths)
    parts = scores["parts"]
    assert not isinstance(parts, dict)
    assert parts.miou == pytest.approx(segmentation.compute().miou)
    assert parts.pixels == segmentation.compute().pixels == 6 * 26 * 42
    assert parts.class_names == ("a", "b", "c")
    depth_scores = scores["depth"]
    assert isinstance(depth_scores, dict)
    for name, value in depth.compute().items():
        assert depth_scores[name] == pytest.approx(value, rel=1e-5), name


def test_outputs_are_resized_as_the_predictors_do(setup: Setup) -> None:
    heads, features = setup.heads, setup.features
    with torch.no_grad():
        depth = heads["depth"].eval()(features)
        resized = resize_dense_output(heads["depth"], depth, SIZE)
    assert resized.shape == (6, 1, *SIZE)
    # Clamped to the head's range first, then resized.
    expected = F.interpolate(depth.clamp(0.001, 10.0), size=SIZE, mode="bilinear")
    assert torch.equal(resized, expected)
