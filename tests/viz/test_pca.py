from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.demo import SyntheticVehicles
from dinov2_heads.features import Features
from dinov2_heads.viz import pca_foreground, pca_rgb, principal_components

from .conftest import structured_tokens


def test_auto_finds_the_foreground_whatever_the_sign() -> None:
    scene = structured_tokens()
    split = pca_foreground(scene.tokens, scene.grid)
    assert torch.equal(split.mask, scene.foreground)
    # Negating every token flips the first component; "auto" still finds the object.
    flipped = pca_foreground(-scene.tokens, scene.grid)
    assert torch.equal(flipped.mask, scene.foreground)
    assert {split.side, flipped.side} == {"high", "low"}


def test_high_and_low_pick_opposite_sides() -> None:
    scene = structured_tokens()
    high = pca_foreground(scene.tokens, scene.grid, foreground="high").mask
    low = pca_foreground(scene.tokens, scene.grid, foreground="low").mask
    assert {high.sum().item(), low.sum().item()} == {
        scene.foreground.sum().item(),
        (~scene.foreground).sum().item(),
    }
    assert torch.equal(high, ~low)
    chosen = pca_foreground(scene.tokens, scene.grid).side
    assert torch.equal(high if chosen == "high" else low, scene.foreground)


def test_score_is_scaled_and_thresholded() -> None:
    scene = structured_tokens()
    split = pca_foreground(scene.tokens, scene.grid, threshold=0.5)
    assert float(split.score.min()) == 0.0
    assert float(split.score.max()) == pytest.approx(1.0)
    assert torch.equal(split.mask, split.score > 0.5)
    border = torch.ones(6, 8, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert split.score[:, border].mean() < split.score[:, ~border].mean()


def test_colours_follow_the_parts() -> None:
    scene = structured_tokens()
    rgb = pca_rgb(scene.tokens, scene.grid)
    assert rgb.shape == (3, 6, 8, 3)
    assert rgb.dtype == torch.float32
    assert torch.all(rgb[~scene.foreground] == 0)
    foreground = rgb[scene.foreground]
    # Each component is min-max scaled over the foreground of all images.
    assert torch.allclose(foreground.min(0).values, torch.zeros(3), atol=1e-6)
    assert torch.allclose(foreground.max(0).values, torch.ones(3), atol=1e-6)
    colours = []
    for k in range(4):
        patches = rgb[scene.part == k]  # the same part in all three images
        assert (patches - patches.mean(0)).abs().max() < 0.05
        colours.append(patches.mean(0))
    for a in range(4):
        for b in range(a + 1, 4):
            assert (colours[a] - colours[b]).norm() > 0.3


def test_sign_flip_keeps_the_foreground_and_colour_structure() -> None:
    scene = structured_tokens()
    rgb = pca_rgb(scene.tokens, scene.grid)
    flipped = pca_rgb(-scene.tokens, scene.grid)
    assert torch.equal(flipped.amax(-1) > 0, rgb.amax(-1) > 0)
    # Negating the tokens negates every component: each channel is mirrored (c -> 1 - c).
    mask = scene.foreground
    assert torch.allclose(flipped[mask], 1 - rgb[mask], atol=1e-5)


def test_all_and_given_masks() -> None:
    scene = structured_tokens()
    everything = pca_foreground(scene.tokens, scene.grid, foreground="all")
    assert everything.mask.all()
    assert everything.side == "all"
    full = torch.ones(3, 6, 8, dtype=torch.bool)
    assert torch.equal(
        pca_rgb(scene.tokens, scene.grid, foreground="all"),
        pca_rgb(scene.tokens, scene.grid, foreground=full),
    )
    given = pca_rgb(scene.tokens, scene.grid, foreground=scene.foreground.reshape(3, 48))
    assert torch.equal(given, pca_rgb(scene.tokens, scene.grid))
    lower_half = torch.zeros(3, 6, 8, dtype=torch.bool)
    lower_half[:, 3:] = True
    rgb = pca_rgb(scene.tokens, scene.grid, foreground=lower_half)
    assert torch.all(rgb[~lower_half] == 0)


def test_degenerate_foregrounds(caplog: pytest.LogCaptureFixture) -> None:
    scene = structured_tokens()
    nothing = torch.zeros(3, 6, 8, dtype=torch.bool)
    with caplog.at_level(logging.WARNING):
        assert torch.all(pca_rgb(scene.tokens, scene.grid, foreground=nothing) == 0)
    assert "no patch is foreground" in caplog.text
    one = nothing.clone()
    one[1, 2, 3] = True
    rgb = pca_rgb(scene.tokens, scene.grid, foreground=one)
    assert rgb[1, 2, 3].tolist() == [0.5, 0.5, 0.5]
    assert rgb.sum() == 1.5
    identical = torch.ones(2, 9, 4)
    assert torch.all(pca_rgb(identical, foreground="all") == 0.5)


def test_features_and_square_grid_inputs() -> None:
    scene = structured_tokens()
    class_tokens = [scene.tokens.mean(1)]
    features = Features.from_tokens(class_tokens, [scene.tokens], scene.grid)
    assert torch.equal(pca_rgb(features), pca_rgb(scene.tokens, scene.grid))
    square = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    assert pca_rgb(square).shape == (2, 4, 4, 3)


def test_input_errors() -> None:
    tokens = torch.randn(2, 12, 8)
    with pytest.raises(ValueError, match="do not form a square grid"):
        pca_rgb(tokens)
    with pytest.raises(ValueError, match=r"grid 3x5 has 15 patches but the tokens hold 12"):
        pca_rgb(tokens, (3, 5))
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        pca_rgb(tokens[0], (3, 4))
    with pytest.raises(TypeError, match="floating point"):
        pca_rgb(tokens.long(), (3, 4))
    with pytest.raises(ValueError, match="foreground must be"):
        pca_rgb(tokens, (3, 4), foreground="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        pca_rgb(tokens, (3, 4), foreground_threshold=1.0)
    with pytest.raises(TypeError, match="bool tensor"):
        pca_rgb(tokens, (3, 4), foreground=torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, h, w\) = \(2, 3, 4\)"):
        pca_rgb(tokens, (3, 4), foreground=torch.ones(2, 4, 3, dtype=torch.bool))
    pooled = Features(
        class_tokens=(torch.randn(2, 8),),
        patch_tokens=None,
        patch_mean=torch.randn(2, 8),
        register_tokens=None,
        grid=(3, 4),
    )
    with pytest.raises(ValueError, match="pca_rgb needs every patch token"):
        pca_rgb(pooled)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tokens_are_refused_by_name(bad: float) -> None:
    scene = structured_tokens()
    tokens = scene.tokens.clone()
    tokens[1, 5, 3] = bad
    tokens[2, 7, 0] = bad
    expected = r"2 patch token\(s\) in image\(s\) \[1, 2\] hold NaN or infinite values"
    with pytest.raises(ValueError, match=expected):
        pca_rgb(tokens, scene.grid)
    with pytest.raises(ValueError, match=expected):
        pca_rgb(tokens, scene.grid, foreground="all")
    with pytest.raises(ValueError, match=expected):
        pca_foreground(tokens, scene.grid)


def test_principal_components_match_numpy_svd() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator, dtype=torch.float64) * torch.tensor(
        [5.0, 3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64
    )
    mean, directions = principal_components(x, 3)
    centred = (x - x.mean(0)).numpy()
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for ours, reference in zip(directions, torch.from_numpy(vt[:3]), strict=True):
        assert min((ours - reference).abs().max(), (ours + reference).abs().max()) < 1e-8
        assert ours[ours.abs().argmax()] > 0  # the sign convention
    assert torch.allclose(mean, x.mean(0))


def test_deterministic_and_leaves_the_global_generator_alone() -> None:
    scene = structured_tokens()
    state = torch.random.get_rng_state()
    first = pca_rgb(scene.tokens.requires_grad_(), scene.grid)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, pca_rgb(scene.tokens, scene.grid))
    assert not first.requires_grad
    half = pca_rgb(scene.tokens.detach().half(), scene.grid)
    assert torch.equal(half.amax(-1) > 0, first.amax(-1) > 0)


def test_random_backbone_on_synthetic_vehicles() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=2, img_size=56)
    images, _ = next(SyntheticVehicles(4, size=(56, 112)).batches(4))
    with torch.no_grad():
        tokens = backbone.forward_features(images)["x_norm_patchtokens"]
    split = pca_foreground(tokens, (4, 8))
    rgb = pca_rgb(tokens, (4, 8))
    assert rgb.shape == (4, 4, 8, 3)
    assert torch.equal(split.mask, split.score > 0.3)
    assert 0 < int(split.mask.sum()) < split.mask.numel()
    assert torch.all(rgb[~split.mask] == 0)
    foreground = rgb[split.mask]
    assert torch.allclose(foreground.min(0).values, torch.zeros(3), atol=1e-6)
    assert torch.allclose(foreground.max(0).values, torch.ones(3), atol=1e-6)
    # "auto" put the side that the borders lean away from in front.
    border = torch.ones(4, 8, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert split.score[:, border].mean() <= split.score[:, ~border].mean()
    assert torch.equal(rgb, pca_rgb(tokens, (4, 8)))


def test_principal_components_checks_k() -> None:
    with pytest.raises(ValueError, match="1 <= k <= D"):
        principal_components(torch.randn(10, 2), 3)
