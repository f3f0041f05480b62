"""``Segmenter`` with the official heads against outputs of mmsegmentation's ``EncoderDecoder``.

``seg_refs.pt`` holds the softmax of whole inference at 224 x 224 for the official "linear"
(last block) and "ms" (last four blocks) BNHeads, run with the official notebook's backbone
hook, on the fixtures' ViT-S/14.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads import DinoVisionTransformer, load_partial
from dinov2_heads.dense import Segmenter
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import LinearSegmentationHead

HEADS = {"linear": ("vits14_seg_linear_head.pth", 1), "ms": ("vits14_seg_ms_head.pth", 4)}


def released_head(directory: Path, kind: str) -> LinearSegmentationHead:
    file, layers = HEADS[kind]
    head = LinearSegmentationHead(384, 21, layers=layers)
    report = load_partial(head, directory / file, rename={"decode_head.": ""})
    assert report.missing == ()
    assert report.unexpected == ()
    assert report.mismatched == ()
    assert len(report.loaded) == 7
    return head.eval()


@pytest.mark.parametrize("kind", ["linear", "ms"])
def test_whole_inference_equals_the_official_segmentor(
    dense_fixtures_dir: Path, official_vits14: DinoVisionTransformer, kind: str
) -> None:
    refs = torch.load(dense_fixtures_dir / "seg_refs.pt", weights_only=True)
    x, expected = refs["inputs"]["x224"], refs["refs"][f"seg_{kind}/x224/whole"]
    segmenter = Segmenter(official_vits14, released_head(dense_fixtures_dir, kind)).eval()
    with torch.no_grad():
        probabilities = segmenter(x)
    assert probabilities.shape == expected.shape == (2, 21, 224, 224)
    assert (probabilities - expected).abs().max() < 1e-5
    assert torch.equal(segmenter.predict(x), expected.argmax(dim=1))


def test_one_backbone_pass_serves_both_heads(
    dense_fixtures_dir: Path, official_vits14: DinoVisionTransformer
) -> None:
    from dinov2_heads.heads import MultiHead

    refs = torch.load(dense_fixtures_dir / "seg_refs.pt", weights_only=True)
    x = refs["inputs"]["x224"]
    multi = MultiHead({k: released_head(dense_fixtures_dir, k) for k in HEADS}).eval()
    frozen = FrozenBackbone.for_heads(official_vits14, multi)
    assert frozen.blocks == ((8, True), (9, True), (10, True), (11, True))
    with torch.no_grad():
        logits = multi(frozen(x))
    for kind, out in logits.items():
        assert out.shape == (2, 21, 16, 16)
        probabilities = torch.nn.functional.interpolate(
            out, size=(224, 224), mode="bilinear", align_corners=False
        ).softmax(dim=1)
        expected = refs["refs"][f"seg_{kind}/x224/whole"]
        assert (probabilities - expected).abs().max() < 1e-5
