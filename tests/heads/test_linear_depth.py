from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.checkpoints import load_partial
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import DPTDepthHead, LinearDepthHead, LinearHead, MultiHead
from tests.heads.official_depth import (
    FIXTURE_BLOCKS,
    dense_fixtures,
    fixture_backbone,
    fixture_head_state,
    official_encode_decode,
    official_linear,
)
from tests.helpers import randomize


def random_blocks(
    n: int, dim: int = 8, grid: tuple[int, int] = (3, 5), batch: int = 2, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, dim, *grid, generator=gen), torch.randn(batch, dim, generator=gen))
        for _ in range(n)
    ]


def randomized(head: LinearDepthHead, seed: int = 0) -> LinearDepthHead:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return head


@pytest.mark.parametrize("name", ["linear1", "linear4"])
def test_released_layout_loads_and_matches_the_official_outputs(name: str) -> None:
    refs = torch.load(dense_fixtures() / "depth_refs.pt", weights_only=True)
    images = refs["inputs"]["x224"]
    expected = refs["refs"][f"depth_{name}/x224/whole"]
    head = LinearDepthHead(384, layers=len(FIXTURE_BLOCKS[name]))
    report = load_partial(
        head, dense_fixtures() / f"vits14_depth_{name}_head.pth", rename={"decode_head.": ""}
    )
    assert report.complete
    assert [index for index, _ in head.required_blocks(12)] == FIXTURE_BLOCKS[name]
    backbone = fixture_backbone()

    def decode(x: Tensor) -> Tensor:
        blocks = backbone.get_intermediate_layers(
            x, n=FIXTURE_BLOCKS[name], reshape=True, return_class_token=True, norm=False
        )
        return head.decode(blocks)

    with torch.no_grad():
        got = official_encode_decode(decode, images, head.min_depth, head.max_depth)
    assert got.shape == expected.shape == (2, 1, 224, 224)
    assert ((got - expected).abs() / expected.abs()).max() < 1e-5


@pytest.mark.parametrize("layers", [1, 4])
def test_decode_equals_the_official_bnhead_on_a_non_square_grid(layers: int) -> None:
    head = randomized(LinearDepthHead(8, layers=layers, n_bins=16, max_depth=10.0))
    blocks = random_blocks(layers, grid=(3, 5))
    expected = official_linear(head.state_dict(), blocks, 0.001, 10.0)
    got = head.decode(blocks)
    assert got.shape == (2, 1, 12, 20)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fixture_weights_equal_the_restated_official_head() -> None:
    head = LinearDepthHead(384, layers=4)
    state = fixture_head_state("linear4")
    head.load_state_dict(state)
    blocks = random_blocks(4, dim=384, grid=(2, 3), seed=1)
    expected = official_linear(state, blocks, 0.001, 80.0)
    assert torch.allclose(head.decode(blocks), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_is_conv_depth_only_and_round_trips() -> None:
    head = randomized(LinearDepthHead(8, layers=4))
    state = head.state_dict()
    assert set(state) == {"conv_depth.weight", "conv_depth.bias"}
    assert state["conv_depth.weight"].shape == (256, 64, 1, 1)
    other = LinearDepthHead(8, layers=4)
    other.load_state_dict(state, strict=True)
    blocks = random_blocks(4)
    assert torch.equal(other.decode(blocks), head.decode(blocks))


def test_output_lies_within_the_bins_and_defaults_are_the_hubs() -> None:
    head = LinearDepthHead(8)
    assert (head.n_bins, head.min_depth, head.max_depth) == (256, 0.001, 80.0)
    bins = head.bins()
    assert bins.shape == (256,)
    assert float(bins[0]) == pytest.approx(0.001)
    assert float(bins[-1]) == pytest.approx(80.0)
    randomized(head)
    with torch.no_grad():
        depth = head.decode(random_blocks(1))
    assert torch.isfinite(depth).all()
    assert float(depth.min()) >= 0.001
    assert float(depth.max()) <= 80.0


def test_uniform_logits_give_the_middle_of_the_range() -> None:
    head = LinearDepthHead(8, n_bins=5, min_depth=1.0, max_depth=5.0)
    depth = head.depth_from_logits(torch.zeros(1, 5, 2, 2))
    assert torch.allclose(depth, torch.full((1, 1, 2, 2), 3.0))
    # One dominant bin pulls the depth towards its centre.
    logits = torch.zeros(1, 5, 1, 1)
    logits[0, 4] = 100.0
    assert float(head.depth_from_logits(logits)) > 4.9


def test_gradients_reach_every_parameter() -> None:
    head = LinearDepthHead(8, layers=4)
    blocks = random_blocks(4)
    head.decode(blocks).mean().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_blocks_of_different_grids_are_resized_to_the_first() -> None:
    head = randomized(LinearDepthHead(8, layers=2))
    blocks = [random_blocks(1, grid=(3, 5))[0], random_blocks(1, grid=(6, 10), seed=3)[0]]
    got = head.decode(blocks)
    assert got.shape == (2, 1, 12, 20)
    assert torch.allclose(got, official_linear(head.state_dict(), blocks, 0.001, 80.0), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embed_dim": 0}, "embed_dim must be a positive int"),
        ({"embed_dim": 8, "layers": 0}, "layers must be a positive int"),
        ({"embed_dim": 8, "n_bins": 1}, "n_bins must be an int >= 2"),
        ({"embed_dim": 8, "min_depth": 5.0, "max_depth": 1.0}, "min_depth < max_depth"),
        ({"embed_dim": 8, "max_depth": float("inf")}, "finite number"),
        ({"embed_dim": 8, "min_depth": -1.0}, "0 <= min_depth"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LinearDepthHead(**kwargs)  # type: ignore[arg-type]


def test_wrong_blocks_are_refused() -> None:
    head = LinearDepthHead(8, layers=4)
    with pytest.raises(ValueError, match="reads 4 blocks, got 1"):
        head.decode(random_blocks(1))
    with pytest.raises(ValueError, match=r"built for patch maps \(B, 8, h, w\)"):
        head.decode(random_blocks(4, dim=16))


def test_matches_interpolate_then_conv_by_hand() -> None:
    # The class token acts as a constant map: a head on one block equals a 1x1 convolution of
    # the upsampled patch map plus a per-image bias from the class token.
    head = randomized(LinearDepthHead(4, n_bins=3, min_depth=0.0, max_depth=2.0))
    ((patch_map, class_token),) = random_blocks(1, dim=4, grid=(2, 2))
    weight = head.conv_depth.weight[:, :, 0, 0]
    up = F.interpolate(patch_map, scale_factor=4, mode="bilinear", align_corners=False)
    logits = torch.einsum("kd,bdhw->bkhw", weight[:, :4], up)
    logits = logits + (class_token @ weight[:, 4:].T + head.conv_depth.bias)[:, :, None, None]
    expected = head.depth_from_logits(logits)
    assert torch.allclose(head.decode([(patch_map, class_token)]), expected, atol=1e-5)


def tiny_backbone(depth: int = 4) -> DinoVisionTransformer:
    torch.manual_seed(0)
    model = create_backbone("dinov2_vits14", depth=depth, embed_dim=16, num_heads=2, img_size=56)
    return randomize(model)


@pytest.mark.parametrize("layers", [1, 4])
def test_forward_reads_its_blocks_from_features(layers: int) -> None:
    backbone = tiny_backbone(depth=8)
    head = randomized(LinearDepthHead(16, layers=layers, n_bins=8))
    images = torch.randn(2, 3, 28, 42)
    frozen = FrozenBackbone.for_heads(backbone, head)
    assert frozen.blocks == head.required_blocks(8)
    with torch.no_grad():
        blocks = backbone.get_intermediate_layers(
            images,
            n=[i for i, _ in head.required_blocks(8)],
            reshape=True,
            return_class_token=True,
            norm=False,
        )
        expected = head.decode(blocks)
        got = head(frozen(images))
    assert got.shape == (2, 1, 8, 12)
    assert torch.allclose(got, expected, atol=1e-5)


def test_one_backbone_pass_feeds_classifier_and_depth_heads() -> None:
    backbone = tiny_backbone()
    multi = MultiHead(
        {
            "brand": LinearHead(16, 5, n_blocks=2),
            "depth": LinearDepthHead(16, layers=4),
            "dpt": DPTDepthHead(16, channels=8),
        }
    )
    frozen = FrozenBackbone.for_heads(backbone, multi)
    outputs = multi(frozen(torch.randn(2, 3, 28, 28)))
    assert outputs["brand"].shape == (2, 5)
    assert outputs["depth"].shape == (2, 1, 8, 8)
    assert outputs["dpt"].shape == (2, 1, 32, 32)


def test_features_without_the_blocks_or_depth_are_refused() -> None:
    backbone = tiny_backbone()
    head = LinearDepthHead(16, layers=4)
    images = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        plain = FrozenBackbone(backbone)(images)
    with pytest.raises(ValueError, match=r"do not hold block 0 with norm=False.*for_heads"):
        head(plain)
    no_depth = Features.from_tokens(plain.class_tokens, plain.patch_tokens or (), plain.grid)
    with pytest.raises(ValueError, match="needs the backbone depth"):
        head(no_depth)
    with pytest.raises(ValueError, match="built for D = 32 but the features have D = 16"):
        LinearDepthHead(32, layers=4)(FrozenBackbone.for_heads(backbone, head)(images))


def test_config_round_trip() -> None:
    head = LinearDepthHead(16, layers=4, n_bins=32, min_depth=0.5, max_depth=20.0)
    config = head.config()
    assert config == {
        "embed_dim": 16,
        "layers": 4,
        "n_bins": 32,
        "min_depth": 0.5,
        "max_depth": 20.0,
    }
    rebuilt = LinearDepthHead.from_config(json.loads(json.dumps(config)))
    assert rebuilt.config() == config
    with pytest.raises(TypeError, match="must be a mapping"):
        LinearDepthHead.from_config([16])  # type: ignore[arg-type]
