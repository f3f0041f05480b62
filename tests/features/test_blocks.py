"""Tokens of chosen blocks: ``FrozenBackbone(blocks=...)`` and ``Features.block``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from einops import rearrange
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer
from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.heads import LinearHead, MultiHead
from tests.features.conftest import tiny_backbone


def images(batch: int = 2, height: int = 28, width: int = 42, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def official(
    model: DinoVisionTransformer, x: Tensor, index: int, norm: bool
) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        ((patches, cls),) = model.get_intermediate_layers(
            x, n=[index], return_class_token=True, norm=norm
        )
    return cls, patches


class OfficialLike(nn.Module):
    """Only the official interface: get_intermediate_layers, blocks and (optionally) norm."""

    def __init__(self, inner: DinoVisionTransformer, *, with_norm: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.embed_dim = inner.embed_dim
        self.patch_size = inner.patch_size
        self.blocks = inner.blocks
        if with_norm:
            self.norm = inner.norm
        self.calls = 0

    def get_intermediate_layers(self, x: Tensor, n: Any = 1, **kwargs: Any) -> tuple[Any, ...]:
        self.calls += 1
        return self.inner.get_intermediate_layers(x, n, **kwargs)


class DenseProbe(nn.Module):
    """A head that reads chosen blocks, declared through required_blocks."""

    def __init__(self, wanted: list[tuple[int, bool]]) -> None:
        super().__init__()
        self.wanted = wanted

    def required_blocks(self, depth: int) -> tuple[tuple[int, bool], ...]:
        return tuple((i % depth, norm) for i, norm in self.wanted)

    def forward(self, features: Features) -> Tensor:
        return torch.cat([features.block_map(i, norm=n) for i, n in self.wanted], dim=1)


# ---------------------------------------------------------------------- values


@pytest.mark.parametrize("registers", [0, 4])
def test_blocks_equal_get_intermediate_layers(registers: int) -> None:
    model = tiny_backbone(registers=registers, depth=3)
    x = images()
    frozen = FrozenBackbone(model, blocks=[(0, False), (1, True), -1, (-1, False)])
    assert frozen.blocks == ((0, False), (1, True), (2, False), (2, True))
    features = frozen(x)
    for index, norm in frozen.blocks:
        cls, patches = features.block(index, norm=norm)
        expected_cls, expected_patches = official(model, x, index, norm)
        assert torch.equal(cls, expected_cls), (index, norm)
        assert torch.equal(patches, expected_patches), (index, norm)
        assert patches.shape == (2, 6, 64)  # registers dropped
    # The last block normed is the last-n entry, not stored twice.
    assert (2, True) not in features.blocks
    assert features.block(-1, norm=True)[0] is features.class_tokens[-1]


@pytest.mark.parametrize("registers", [0, 4])
def test_existing_outputs_are_unchanged(registers: int) -> None:
    model = tiny_backbone(registers=registers, depth=3)
    x = images()
    plain = FrozenBackbone(model, n_last_blocks=2)(x)
    with_blocks = FrozenBackbone(model, n_last_blocks=2, blocks=[(0, False), (0, True)])(x)
    assert plain.patch_tokens is not None
    assert with_blocks.patch_tokens is not None
    for a, b in zip(plain.class_tokens, with_blocks.class_tokens, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain.patch_tokens, with_blocks.patch_tokens, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain.patch_mean, with_blocks.patch_mean)
    if registers:
        assert plain.register_tokens is not None
        assert with_blocks.register_tokens is not None
        assert torch.equal(plain.register_tokens, with_blocks.register_tokens)
    assert plain.blocks == {}
    assert with_blocks.depth == plain.depth == 3


def test_one_pass_through_the_blocks() -> None:
    model = tiny_backbone(depth=3)
    calls = [0] * 3
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    FrozenBackbone(model, n_last_blocks=2, blocks=[(0, False), (0, True), (2, False)])(images())
    assert calls == [1, 1, 1]


def test_block_map_is_the_patch_grid() -> None:
    features = FrozenBackbone(tiny_backbone(depth=2), blocks=[(0, False)])(images())
    cls, patches = features.block(0, norm=False)
    grid = features.block_map(0, norm=False)
    assert grid.shape == (2, 64, 2, 3)
    assert torch.equal(grid, rearrange(patches, "b (h w) d -> b d h w", h=2))
    assert cls.shape == (2, 64)
    assert features.block_map(-1, norm=True).shape == (2, 64, 2, 3)


@pytest.mark.parametrize("with_norm", [True, False])
def test_official_interface_backbone(with_norm: bool) -> None:
    model = tiny_backbone(depth=3, registers=4)
    x = images()
    theirs = OfficialLike(model, with_norm=with_norm)
    requested = [(0, False), (1, True)]
    features = FrozenBackbone(theirs, n_last_blocks=2, blocks=requested)(x)
    ours = FrozenBackbone(model, n_last_blocks=2, blocks=requested)(x)
    for index, norm in [*requested, (2, True)]:
        for a, b in zip(
            features.block(index, norm=norm), ours.block(index, norm=norm), strict=True
        ):
            assert torch.allclose(a, b, atol=1e-6), (index, norm)
    assert theirs.calls == (1 if with_norm else 2)


def test_negative_blocks_need_a_known_depth() -> None:
    class NoDepth(nn.Module):
        embed_dim, patch_size = 64, 14

        def get_intermediate_layers(self, x: Tensor, n: Any = 1, **kwargs: Any) -> Any:
            raise AssertionError("not called")

    with pytest.raises(ValueError, match="depth is unknown"):
        FrozenBackbone(NoDepth(), blocks=[-1])
    frozen = FrozenBackbone(NoDepth(), blocks=[(0, False)])
    assert frozen.depth is None
    assert frozen.blocks == ((0, False),)


# ---------------------------------------------------------------------- errors


def test_bad_block_requests() -> None:
    model = tiny_backbone(depth=2)
    with pytest.raises(ValueError, match="out of range for a backbone of depth 2"):
        FrozenBackbone(model, blocks=[2])
    with pytest.raises(ValueError, match="out of range"):
        FrozenBackbone(model, blocks=[(-3, True)])
    for bad in (["a"], [(0, 1)], [(0, True, 1)], [True]):
        with pytest.raises(TypeError, match=r"\(index, norm\) pair"):
            FrozenBackbone(model, blocks=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of block indices"):
        FrozenBackbone(model, blocks=3)  # type: ignore[arg-type]


def test_missing_block_names_what_is_held_and_the_fix() -> None:
    features = FrozenBackbone(tiny_backbone(depth=3), blocks=[(0, False)])(images())
    with pytest.raises(ValueError, match=r"block 1 with norm=False") as info:
        features.block(1, norm=False)
    message = str(info.value)
    assert "(0, False), (2, True)" in message
    assert "FrozenBackbone(backbone, blocks=[(1, False)])" in message
    assert "FrozenBackbone.for_heads" in message
    with pytest.raises(ValueError, match="out of range for a backbone of depth 3"):
        features.block(3, norm=True)
    with pytest.raises(ValueError, match="out of range"):
        features.block(-4, norm=True)
    with pytest.raises(TypeError, match="norm must be True or False"):
        features.block(0, norm=1)  # type: ignore[arg-type]


def test_features_without_depth_find_the_last_blocks_from_the_end() -> None:
    gen = torch.Generator().manual_seed(0)
    classes = [torch.randn(2, 8, generator=gen) for _ in range(2)]
    patches = [torch.randn(2, 6, 8, generator=gen) for _ in range(2)]
    features = Features.from_tokens(classes, patches, (2, 3))
    assert features.block(-2, norm=True)[1] is patches[0]
    with pytest.raises(ValueError, match="do not know the backbone depth"):
        features.block(-3, norm=True)
    with pytest.raises(ValueError, match="do not know the backbone depth"):
        features.block(-1, norm=False)
    with pytest.raises(ValueError, match="do not hold block 0"):
        features.block(0, norm=True)


def test_malformed_blocks_are_refused() -> None:
    cls, patches = torch.zeros(2, 8), torch.zeros(2, 6, 8)
    base = Features.from_tokens([cls], [patches], (2, 3))
    with pytest.raises(ValueError, match="keys must be"):
        Features(*_fields(base), blocks={(-1, True): (cls, patches)}, depth=3)
    with pytest.raises(ValueError, match="below the depth 3"):
        Features(*_fields(base), blocks={(3, True): (cls, patches)}, depth=3)
    with pytest.raises(ValueError, match="holds 4 patch tokens but the grid 2x3 has 6"):
        Features(*_fields(base), blocks={(0, True): (cls, patches[:, :4])})
    with pytest.raises(ValueError, match="must be \\(class token"):
        Features(*_fields(base), blocks={(0, True): (cls,)})  # type: ignore[dict-item]


def _fields(features: Features) -> tuple[Any, ...]:
    return (
        features.class_tokens,
        features.patch_tokens,
        features.patch_mean,
        features.register_tokens,
        features.grid,
    )


# ---------------------------------------------------------------------- tensor ops


def test_blocks_follow_to_indexing_and_cat() -> None:
    frozen = FrozenBackbone(tiny_backbone(depth=3), blocks=[(0, False), (1, True)])
    a, b = frozen(images(batch=2, seed=1)), frozen(images(batch=3, seed=2))
    joined = Features.cat([a, b])
    assert joined.depth == 3
    assert set(joined.blocks) == {(0, False), (1, True)}
    assert torch.equal(joined.block(0, norm=False)[1][:2], a.block(0, norm=False)[1])
    assert torch.equal(joined[3].block(1, norm=True)[0], b.block(1, norm=True)[0][1:2])
    halved = a.to(torch.float16)
    assert halved.block(0, norm=False)[1].dtype == torch.float16
    assert halved.depth == 3
    other = FrozenBackbone(tiny_backbone(depth=3), blocks=[(0, True)])(images())
    with pytest.raises(ValueError, match="cannot concatenate Features holding blocks"):
        Features.cat([a, other])


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_compiled_extraction_keeps_the_blocks() -> None:
    torch._dynamo.reset()
    model = tiny_backbone(depth=2, registers=4)
    requested = [(0, False), (1, True)]
    eager = FrozenBackbone(model, blocks=requested)
    compiled = FrozenBackbone(model, blocks=requested, compile={"backend": "eager"})
    x = images()
    got, expected = compiled(x), eager(x)
    for index, norm in requested:
        for p, q in zip(got.block(index, norm=norm), expected.block(index, norm=norm), strict=True):
            assert torch.allclose(p, q, atol=1e-5)
    torch._dynamo.reset()


# ---------------------------------------------------------------------- heads declare blocks


def test_for_heads_serves_a_mixed_multihead_in_one_pass() -> None:
    model = tiny_backbone(depth=3)
    multi = MultiHead(
        {
            "brand": LinearHead(64, 5, n_blocks=2),
            "parts": DenseProbe([(-1, True), (-2, True)]),
            "depth": DenseProbe([(0, False), (-1, False)]),
        }
    )
    assert multi.required_blocks(3) == ((0, False), (1, True), (2, False), (2, True))
    frozen = FrozenBackbone.for_heads(model, multi)
    assert frozen.n_last_blocks == 2
    assert frozen.blocks == multi.required_blocks(3)
    assert frozen.serves(multi.required_blocks(3)) == ()
    assert FrozenBackbone(model).serves(multi.required_blocks(3)) == (
        (0, False),
        (1, True),
        (2, False),
    )
    calls = [0]
    model.blocks[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    out = multi(frozen(images()))
    assert calls == [1]
    assert out["brand"].shape == (2, 5)
    assert out["parts"].shape == (2, 128, 2, 3)
    # Lists and mappings of heads work too, and extra kwargs pass through.
    listed = FrozenBackbone.for_heads(model, [DenseProbe([(1, False)])], n_last_blocks=3)
    assert listed.n_last_blocks == 3
    assert listed.blocks == ((1, False),)
    mapped = FrozenBackbone.for_heads(model, {"a": DenseProbe([(0, True)])}, dtype=torch.bfloat16)
    assert mapped.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="heads must be a head"):
        FrozenBackbone.for_heads(model, 3)  # type: ignore[arg-type]


def test_multihead_without_dense_heads_needs_no_blocks() -> None:
    assert MultiHead({"a": LinearHead(64, 2)}).required_blocks(12) == ()


def test_normed_blocks_up_to_the_last_are_taken_as_last_blocks() -> None:
    from dinov2_heads.heads import LinearSegmentationHead

    model = tiny_backbone(depth=4)
    head = LinearSegmentationHead(64, 3, layers=3)
    frozen = FrozenBackbone.for_heads(model, head)
    assert frozen.n_last_blocks == 3
    assert frozen.blocks == ((1, True), (2, True), (3, True))
    x = images()
    features = frozen(x)
    assert features.blocks == {}  # all three are among the last n, not stored twice
    # So Features that keep only the last blocks and no depth (a feature cache) serve the head.
    assert features.patch_tokens is not None
    cached = Features.from_tokens(features.class_tokens, features.patch_tokens, features.grid)
    assert torch.equal(head.eval()(cached), head(features))
    mixed = FrozenBackbone.for_heads(model, DenseProbe([(0, True), (3, True), (2, False)]))
    assert mixed.n_last_blocks == 1
    assert mixed.blocks == ((0, True), (2, False), (3, True))
