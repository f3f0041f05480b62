"""The official reference fixtures, by path alone and in every layout, give the official outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from dinov2_heads.checkpoints import describe_checkpoint, load_backbone

from .conftest import official_to_huggingface, official_to_timm

CASES = [("vits14_d2", 0, 4_304_256), ("vits14_reg4_d2", 4, 4_305_792)]
TOL = 1e-5


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, Tensor]:
    return torch.load(fixtures_dir / "reference_outputs_x224.pt", weights_only=True)


def check_outputs(model: torch.nn.Module, reference: dict[str, Tensor], stem: str) -> None:
    with torch.no_grad():
        out = model.forward_features(reference["input"])  # type: ignore[operator]
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
        expected = reference[f"{stem}/forward_features/{key}"]
        assert out[key].shape == expected.shape, key
        if expected.numel():
            assert (out[key] - expected).abs().max().item() < TOL, key


@pytest.mark.parametrize(("stem", "registers", "parameters"), CASES)
def test_load_by_path_alone(
    fixtures_dir: Path, reference: dict[str, Tensor], stem: str, registers: int, parameters: int
) -> None:
    model = load_backbone(fixtures_dir / f"{stem}.pth")
    assert model.num_register_tokens == registers
    assert model.config.interpolate_antialias == bool(registers)
    check_outputs(model, reference, stem)
    summary = describe_checkpoint(fixtures_dir / f"{stem}.pth")
    assert summary.num_parameters == parameters
    assert summary.num_tensors == 35 + (registers > 0)
    assert summary.format == "official"
    assert summary.variant is None  # depth 2: a custom architecture
    assert "D=384, depth=2, heads=6, mlp FFN" in str(summary)


def _teacher(state: dict[str, Tensor]) -> dict[str, object]:
    backbone = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.0.{index}.{rest}"  # one chunk holding both blocks
        backbone[f"backbone.{key}"] = value
    return {"teacher": {**backbone, "dino_head.last_layer.weight_g": torch.ones(1, 1)}}


def _safetensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return state


WRITERS: dict[str, Callable[[dict[str, Tensor]], object]] = {
    "teacher": _teacher,
    "huggingface": official_to_huggingface,
    "timm": official_to_timm,
    "safetensors": _safetensors,
}


# Every layout of the register model (the harder case), and the plain model in timm's layout,
# which keeps its class-token position where the register model folds it away.
LAYOUTS = [("vits14_reg4_d2", layout) for layout in WRITERS] + [("vits14_d2", "timm")]


@pytest.mark.parametrize(("stem", "layout"), LAYOUTS)
def test_every_layout_of_the_fixtures(
    tmp_path: Path, fixtures_dir: Path, reference: dict[str, Tensor], layout: str, stem: str
) -> None:
    state = torch.load(fixtures_dir / f"{stem}.pth", weights_only=True)
    content = WRITERS[layout](dict(state))
    if layout == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        path = tmp_path / "model.safetensors"
        safetensors_torch.save_file(content, str(path))
    else:
        path = tmp_path / "model.pth"
        torch.save(content, path)
    check_outputs(load_backbone(path), reference, stem)
