from __future__ import annotations

import pytest
import torch
from torch import Tensor

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import load_partial
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads.dpt_depth import DPTDepthHead
from dinov2_heads.layers.dpt import (
    ConvModule,
    FeatureFusionBlock,
    HeadDepth,
    PreActResidualConvUnit,
    ReassembleBlocks,
)
from tests.heads.official_depth import (
    FIXTURE_BLOCKS,
    dense_fixtures,
    fixture_backbone,
    fixture_head_state,
    official_dpt,
    official_encode_decode,
)
from tests.helpers import randomize


def random_blocks(
    dim: int = 16, grid: tuple[int, int] = (4, 6), batch: int = 2, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, dim, *grid, generator=gen), torch.randn(batch, dim, generator=gen))
        for _ in range(4)
    ]


def randomized(head: DPTDepthHead, seed: int = 0) -> DPTDepthHead:
    """Random weights scaled so that activations stay O(1) through the decoder."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.parameters():
            fan_in = param[0].numel() if param.ndim > 1 else 1
            param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
    return head


def test_released_layout_loads_and_matches_the_official_outputs() -> None:
    refs = torch.load(dense_fixtures() / "depth_refs.pt", weights_only=True)
    images = refs["inputs"]["x224"]
    expected = refs["refs"]["depth_dpt/x224/whole"]
    head = DPTDepthHead(384)
    report = load_partial(
        head, dense_fixtures() / "vits14_depth_dpt_head.pth", rename={"decode_head.": ""}
    )
    assert report.complete
    assert len(report.loaded) == 56
    backbone = fixture_backbone()

    def decode(x: Tensor) -> Tensor:
        blocks = backbone.get_intermediate_layers(
            x, n=FIXTURE_BLOCKS["dpt"], reshape=True, return_class_token=True, norm=False
        )
        return head.decode(blocks)

    with torch.no_grad():
        got = official_encode_decode(decode, images, head.min_depth, head.max_depth)
    assert got.shape == expected.shape == (2, 1, 224, 224)
    assert ((got - expected).abs() / expected.abs()).max() < 1e-5


def test_state_dict_keys_are_the_released_ones() -> None:
    released = fixture_head_state("dpt")
    head = DPTDepthHead(384)
    state = head.state_dict()
    assert set(state) == set(released)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in released.items()
    }


@pytest.mark.parametrize("grid", [(4, 6), (5, 7), (3, 3), (1, 2)])
def test_decode_equals_the_official_dpthead(grid: tuple[int, int]) -> None:
    # Odd grids take the official resize of the skip maps in the fusion blocks.
    head = randomized(DPTDepthHead(16, channels=8, min_depth=0.5))
    blocks = random_blocks(16, grid)
    with torch.no_grad():
        expected = official_dpt(head.state_dict(), blocks, 0.5)
        got = head.decode(blocks)
    assert got.shape == expected.shape
    assert got.shape[:2] == (2, 1)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fixture_weights_equal_the_restated_official_head() -> None:
    state = fixture_head_state("dpt")
    head = DPTDepthHead(384)
    head.load_state_dict(state)
    blocks = random_blocks(384, (3, 4), batch=1)
    with torch.no_grad():
        expected = official_dpt(state, blocks, 0.001)
        got = head.decode(blocks)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_output_shape_dtype_and_lower_bound() -> None:
    head = randomized(DPTDepthHead(16, channels=8, min_depth=0.25, max_depth=5.0))
    with torch.no_grad():
        depth = head.decode(random_blocks(16, (4, 6)))
    assert depth.shape == (2, 1, 64, 96)
    assert depth.dtype == torch.float32
    assert torch.isfinite(depth).all()
    assert float(depth.min()) >= 0.25


def test_gradients_reach_every_parameter() -> None:
    head = randomized(DPTDepthHead(16, channels=8))
    with torch.no_grad():
        head.conv_depth.head[4].bias.fill_(1.0)  # keep the final ReLU open
    head.decode(random_blocks(16, (4, 6))).sum().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_state_dict_round_trip() -> None:
    head = randomized(DPTDepthHead(16, channels=8))
    other = DPTDepthHead(16, channels=8)
    other.load_state_dict(head.state_dict(), strict=True)
    blocks = random_blocks(16)
    with torch.no_grad():
        assert torch.equal(other.decode(blocks), head.decode(blocks))


def test_bad_arguments_and_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="embed_dim must be an int >= 8"):
        DPTDepthHead(4)
    with pytest.raises(ValueError, match="channels must be an int >= 2"):
        DPTDepthHead(16, channels=1)
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        DPTDepthHead(16, min_depth=1.0, max_depth=1.0)
    head = DPTDepthHead(16, channels=8)
    with pytest.raises(ValueError, match="reads 4 blocks, got 2"):
        head.decode(random_blocks(16)[:2])
    with pytest.raises(ValueError, match=r"built for patch maps \(B, 16, h, w\)"):
        head.decode(random_blocks(32))


def test_building_blocks() -> None:
    x = torch.randn(2, 6, 5, 7)
    pre = ConvModule(6, 6, 3, padding=1, activation="before")
    post = ConvModule(6, 6, 3, padding=1, activation="after")
    assert torch.equal(pre(x), pre.conv(torch.relu(x)))
    assert torch.equal(post(x), torch.relu(post.conv(x)))
    assert set(ConvModule(6, 4, 1, bias=False).state_dict()) == {"conv.weight"}
    with pytest.raises(ValueError, match="activation must be"):
        ConvModule(6, 6, 1, activation="gelu")  # type: ignore[arg-type]

    unit = PreActResidualConvUnit(6)
    assert set(unit.state_dict()) == {"conv1.conv.weight", "conv2.conv.weight"}
    assert unit(x).shape == x.shape
    # The unit does not modify its input (the official in-place ReLU needed a clone).
    before = x.clone()
    unit(x)
    assert torch.equal(x, before)

    first = FeatureFusionBlock(6, with_skip=False)
    assert first.res_conv_unit1 is None
    assert first(x).shape == (2, 6, 10, 14)
    with pytest.raises(ValueError, match="takes no skip map"):
        first(x, x)
    assert FeatureFusionBlock(6)(x, torch.randn(2, 6, 4, 6)).shape == (2, 6, 10, 14)

    assert HeadDepth(8)(torch.randn(1, 8, 3, 4)).shape == (1, 1, 6, 8)
    reassemble = ReassembleBlocks(16, (2, 4, 8, 16))
    maps = reassemble(random_blocks(16, (5, 7)))
    assert [tuple(m.shape) for m in maps] == [
        (2, 2, 20, 28),
        (2, 4, 10, 14),
        (2, 8, 5, 7),
        (2, 16, 3, 4),
    ]
    with pytest.raises(ValueError, match="four output widths"):
        ReassembleBlocks(16, (2, 4))


def test_forward_reads_the_four_blocks_from_features() -> None:
    torch.manual_seed(0)
    backbone = randomize(
        create_backbone("dinov2_vits14", depth=8, embed_dim=16, num_heads=2, img_size=56)
    )
    head = randomized(DPTDepthHead(16, channels=8))
    frozen = FrozenBackbone.for_heads(backbone, head)
    assert frozen.blocks == ((1, False), (3, False), (5, False), (7, False))
    images = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        blocks = backbone.get_intermediate_layers(
            images, n=[1, 3, 5, 7], reshape=True, return_class_token=True, norm=False
        )
        expected = official_dpt(head.state_dict(), blocks, head.min_depth)
        got = head(frozen(images))
    assert got.shape == (1, 1, 64, 64)  # the odd grid side 3 goes to 2 at 1/2x, then 16x
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_config_round_trip() -> None:
    head = DPTDepthHead(16, channels=8, max_depth=80.0)
    assert head.config() == {"embed_dim": 16, "channels": 8, "min_depth": 0.001, "max_depth": 80.0}
    rebuilt = DPTDepthHead.from_config(head.config())
    assert set(rebuilt.state_dict()) == set(head.state_dict())
    assert rebuilt.max_depth == 80.0
