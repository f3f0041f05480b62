"""Exact parity with the official implementation, from reference files it produced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone

CASES = [("vits14_d2", "dinov2_vits14", 0), ("vits14_reg4_d2", "dinov2_vits14_reg", 4)]
TOL = 1e-5


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(fixtures_dir / "reference_outputs_x224.pt", weights_only=True)


@pytest.mark.parametrize(("stem", "variant", "registers"), CASES)
def test_forward_features_matches_official(
    fixtures_dir: Path, reference: dict[str, torch.Tensor], stem: str, variant: str, registers: int
) -> None:
    model = create_backbone(variant, depth=2, checkpoint=fixtures_dir / f"{stem}.pth")
    assert model.num_register_tokens == registers
    with torch.no_grad():
        out = model.forward_features(reference["input"])
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
        expected = reference[f"{stem}/forward_features/{key}"]
        assert out[key].shape == expected.shape, key
        assert out[key].dtype == torch.float32
        if expected.numel():
            assert (out[key] - expected).abs().max().item() < TOL, key
    assert out["masks"] is None


@pytest.mark.parametrize(("stem", "variant", "registers"), CASES)
def test_intermediate_layers_match_official(
    fixtures_dir: Path, reference: dict[str, torch.Tensor], stem: str, variant: str, registers: int
) -> None:
    model = create_backbone(variant, depth=2, checkpoint=fixtures_dir / f"{stem}.pth")
    with torch.no_grad():
        outputs = model.get_intermediate_layers(reference["input"], n=2, return_class_token=True)
    assert len(outputs) == 2
    for i, (patch, cls) in enumerate(outputs):
        expected_patch = reference[f"{stem}/get_intermediate_layers_n2/{i}/patch"]
        expected_cls = reference[f"{stem}/get_intermediate_layers_n2/{i}/cls"]
        assert patch.shape == expected_patch.shape == (2, 256, 384)
        assert (patch - expected_patch).abs().max().item() < TOL
        assert (cls - expected_cls).abs().max().item() < TOL


def test_official_state_dict_loads_strictly_and_round_trips(fixtures_dir: Path) -> None:
    for stem, variant, _ in CASES:
        official = torch.load(fixtures_dir / f"{stem}.pth", weights_only=True)
        model = create_backbone(variant, depth=2)
        model.load_state_dict(official, strict=True)
        assert set(model.state_dict()) == set(official)
        for key, value in model.state_dict().items():
            assert torch.equal(value, official[key]), key
