from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import create_backbone
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearHead, linear_input
from tests.heads.conftest import random_features


def official_linear_input(x_tokens_list: list[tuple[Tensor, Tensor]], use_n_blocks: int) -> Tensor:
    """The official create_linear_input with use_avgpool=True, restated from its definition."""
    intermediate_output = x_tokens_list[-use_n_blocks:]
    output = torch.cat([class_token for _, class_token in intermediate_output], dim=-1)
    output = torch.cat((output, torch.mean(intermediate_output[-1][0], dim=1)), dim=-1)
    return output.reshape(output.shape[0], -1).float()


@pytest.mark.parametrize("model", ["vits14_d2", "vits14_reg4_d2"])
@pytest.mark.parametrize("n_blocks", [1, 2])
def test_official_linear_head_parity(fixtures_dir: Path, model: str, n_blocks: int) -> None:
    ref = torch.load(fixtures_dir / "reference_outputs_x224.pt", weights_only=True)
    blocks = [
        (
            ref[f"{model}/get_intermediate_layers_n2/{i}/patch"],
            ref[f"{model}/get_intermediate_layers_n2/{i}/cls"],
        )
        for i in range(2)
    ]
    torch.manual_seed(n_blocks)
    official = nn.Linear((n_blocks + 1) * 384, 10)  # the released heads are bare nn.Linear
    nn.init.normal_(official.bias)
    with torch.no_grad():
        expected = official(official_linear_input(blocks, n_blocks))

    head = LinearHead(384, 10, n_blocks=n_blocks)
    head.load_state_dict(official.state_dict(), strict=True)
    got = head(Features.from_official(blocks))
    assert got.shape == (2, 10)
    assert (got - expected).abs().max() < 1e-5

    # End to end from the official backbone weights and input image.
    backbone = create_backbone(
        "dinov2_vits14_reg" if "reg" in model else "dinov2_vits14", depth=2, device="meta"
    )
    frozen = FrozenBackbone(backbone, n_last_blocks=2)
    frozen.load_state_dict(
        torch.load(fixtures_dir / f"{model}.pth", weights_only=True), assign=True
    )
    with torch.no_grad():
        end_to_end = head(frozen(ref["input"]))
    assert (end_to_end - expected).abs().max() < 1e-4


def test_state_dict_is_weight_and_bias_only() -> None:
    head = LinearHead(16, 5, n_blocks=4)
    assert set(head.state_dict()) == {"weight", "bias"}
    assert head.weight.shape == (5, 80)
    assert head.in_features == 80
    assert LinearHead(16, 5, avgpool=False).weight.shape == (5, 16)


def test_official_initialisation() -> None:
    torch.manual_seed(0)
    head = LinearHead(256, 400)
    assert torch.equal(head.bias, torch.zeros(400))
    assert abs(head.weight.std().item() - 0.01) < 5e-4
    assert abs(head.weight.mean().item()) < 5e-4


def test_input_order_class_tokens_oldest_first_then_patch_mean() -> None:
    features = random_features(n_blocks=3, dim=4)
    x = linear_input(features, n_blocks=2, avgpool=True)
    expected = torch.cat(
        [features.class_tokens[1], features.class_tokens[2], features.patch_mean], -1
    )
    assert torch.equal(x, expected)
    assert torch.equal(linear_input(features, 1, avgpool=False), features.class_tokens[2])


def test_uses_the_last_blocks_of_deeper_features() -> None:
    features = random_features(n_blocks=4, dim=8)
    head = LinearHead(8, 3, n_blocks=1)
    expected = nn.functional.linear(
        torch.cat([features.class_tokens[-1], features.patch_mean], -1), head.weight, head.bias
    )
    assert torch.allclose(head(features), expected)


def test_runs_from_pooled_features_without_patch_tokens() -> None:
    features = random_features(n_blocks=2, dim=8)
    pooled = Features(features.class_tokens, None, features.patch_mean, None, features.grid)
    head = LinearHead(8, 3, n_blocks=2)
    assert torch.equal(head(pooled), head(features))


def test_low_precision_features_give_float32_logits() -> None:
    features = random_features(dim=8).to(torch.bfloat16)
    logits = LinearHead(8, 3)(features)
    assert logits.dtype == torch.float32


def test_gradients_reach_weight_and_bias() -> None:
    head = LinearHead(8, 3, n_blocks=2)
    features = random_features(n_blocks=2, dim=8)
    logits = head(features)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert head.weight.grad is not None
    assert head.weight.grad.abs().sum() > 0
    assert head.bias.grad is not None
    assert head.bias.grad.abs().sum() > 0


def test_state_dict_round_trip() -> None:
    head = LinearHead(8, 3, n_blocks=2)
    other = LinearHead(8, 3, n_blocks=2)
    other.load_state_dict(head.state_dict(), strict=True)
    features = random_features(n_blocks=2, dim=8)
    assert torch.equal(other(features), head(features))


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"last 4 blocks but the features hold 1.*n_last_blocks=4"):
        LinearHead(8, 3, n_blocks=4)(random_features(dim=8))
    with pytest.raises(ValueError, match="D = 16 but the features have D = 8"):
        LinearHead(16, 3)(random_features(dim=8))
    with pytest.raises(ValueError, match="num_classes"):
        LinearHead(8, 0)
    with pytest.raises(ValueError, match="n_blocks"):
        LinearHead(8, 3, n_blocks=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        LinearHead(8, 3).load_state_dict(LinearHead(8, 3, n_blocks=2).state_dict())


# ---------------------------------------------------------------------------- a plain tensor


def test_takes_the_official_linear_input_as_a_plain_tensor() -> None:
    # The official LinearClassifier's habit: create_linear_input(...) -> (B, (n + 1) * D).
    head = LinearHead(384, 3)
    assert head(torch.randn(2, 768)).shape == (2, 3)
    for n_blocks, avgpool in [(1, True), (2, True), (2, False)]:
        head = LinearHead(8, 3, n_blocks=n_blocks, avgpool=avgpool)
        features = random_features(dim=8, n_blocks=2)
        pooled = linear_input(features, n_blocks, avgpool)
        assert pooled.shape == (4, head.in_features)
        assert torch.equal(head(pooled), head(features))


def test_official_linear4_input_as_a_tensor(fixtures_dir: Path) -> None:
    ref = torch.load(fixtures_dir / "reference_outputs_x224.pt", weights_only=True)
    blocks = [
        (
            ref[f"vits14_d2/get_intermediate_layers_n2/{i}/patch"],
            ref[f"vits14_d2/get_intermediate_layers_n2/{i}/cls"],
        )
        for i in range(2)
    ]
    head = LinearHead(384, 10, n_blocks=2)
    official_input = official_linear_input(blocks, 2)
    assert torch.allclose(
        head(official_input), head(Features.from_official(blocks)), atol=1e-6, rtol=0
    )


def test_gradients_reach_the_head_from_a_tensor() -> None:
    head = LinearHead(8, 3)
    x = torch.randn(4, 16, requires_grad=True)
    nn.functional.cross_entropy(head(x), torch.tensor([0, 1, 2, 0])).backward()
    assert head.weight.grad is not None
    assert head.weight.grad.abs().sum() > 0
    assert x.grad is not None


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(2, 384), ValueError, r"reads a \(B, 768\) tensor \(the class token, then"),
        (torch.randn(2, 1920), ValueError, "that width fits LinearHead.*n_blocks=4, avgpool=True"),
        (torch.randn(2, 3, 768), ValueError, r"got \(2, 3, 768\)"),
        (torch.ones(2, 768, dtype=torch.long), TypeError, "float features"),
        ([1.0, 2.0], TypeError, "LinearHead reads Features or a"),
    ],
)
def test_a_tensor_of_the_wrong_width_is_a_clear_error(
    x: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        LinearHead(384, 3)(x)
