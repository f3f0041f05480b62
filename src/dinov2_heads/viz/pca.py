"""PCA pictures of patch tokens: foreground from the first component, RGB from three more.

The recipe is the one from the DINOv2 paper's figures and the blog posts that copy it:

1. One PCA over the patch tokens of all images together. Its first component, min-max scaled to
   [0, 1], separates the object from the background; patches above ``foreground_threshold``
   on the foreground side are the foreground.
2. A second PCA with three components over the foreground patches only (all images jointly,
   so the same part gets the same colour in every image). Each component is min-max scaled to
   [0, 1] over those patches and becomes one of R, G, B. Background patches are black.

The first component's sign is arbitrary (it comes out of an eigen-decomposition), so which side
is the foreground is a choice, made by ``foreground``:

- ``"auto"`` (default): the side the image borders lean away from. The mean scaled score of
  the border patches (outer ring of the grid) is compared with that of the interior patches;
  if the border scores higher, the low side is the foreground. Objects sit inside crops, so
  the background is what touches the edges.
- ``"high"``: the patches with a high score (the blog recipe's ``> 0.3`` as written).
- ``"low"``: the patches with a low score (the same recipe with the component's sign flipped).
- ``"all"``: no background; every patch is coloured (for crops the object fills).
- a boolean tensor (B, h, w) or (B, N): your own foreground mask.

Everything runs in torch on the tokens' device, in float64 where the device has it. The
eigenvectors' signs are fixed (largest loading positive), so the same tokens always give the
same colours.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from dinov2_heads.features import Features

logger = logging.getLogger(__name__)

ForegroundChoice = Literal["auto", "high", "low", "all"]


@dataclass(frozen=True, eq=False)
class ForegroundSplit:
    """The first step of :func:`pca_rgb`: foreground and background patches.

    Attributes:
        mask: (B, h, w) bool, True on foreground patches.
        score: (B, h, w) float32 in [0, 1], the first component min-max scaled over all images
            and oriented so that the foreground side is high (``score > threshold`` is the
            mask); all 1 for ``"all"`` or a given mask.
        side: Which side of the first component was taken as foreground: ``"high"``,
            ``"low"``, ``"all"`` or ``"given"``.
    """

    mask: Tensor
    score: Tensor
    side: str


def _tokens_and_grid(
    patch_tokens: Tensor | Features, grid: tuple[int, int] | None
) -> tuple[Tensor, tuple[int, int]]:
    if isinstance(patch_tokens, Features):
        tokens = patch_tokens.require_patch_tokens("pca_rgb")[-1]
        grid = grid or patch_tokens.grid
    else:
        tokens = patch_tokens
    if not isinstance(tokens, Tensor):
        raise TypeError(
            f"expected patch tokens as a (B, N, D) tensor or Features, got {type(tokens).__name__}"
        )
    if tokens.ndim != 3:
        raise ValueError(
            f"expected patch tokens of shape (B, N, D), got {tuple(tokens.shape)}; for one image "
            "use tokens.unsqueeze(0), and pass x_norm_patchtokens (registers excluded)"
        )
    if not tokens.is_floating_point():
        raise TypeError(f"expected floating point patch tokens, got dtype {tokens.dtype}")
    num = int(tokens.shape[1])
    if grid is None:
        side = math.isqrt(num)
        if side * side != num:
            raise ValueError(f"{num} patch tokens do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    h, w = int(grid[0]), int(grid[1])
    if h * w != num:
        raise ValueError(
            f"grid {h}x{w} has {h * w} patches but the tokens hold {num}; pass the grid of the "
            "image size the tokens came from (H / 14, W / 14)"
        )
    if tokens.shape[0] == 0:
        raise ValueError("got an empty batch (B = 0) of patch tokens")
    # One NaN would otherwise surface as an eigensolver failure that names no token.
    bad = ~torch.isfinite(tokens.detach()).all(dim=-1)  # (B, N)
    if bool(bad.any()):
        images = torch.nonzero(bad.any(dim=1)).flatten().tolist()
        raise ValueError(
            f"{int(bad.sum())} patch token(s) in image(s) {images} hold NaN or infinite values; "
            "check those images and the backbone's dtype (float16 overflows), or leave the "
            "images out"
        )
    return tokens, (h, w)


def _work_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; elsewhere float64 keeps the eigenvectors stable for wide tokens.
    return torch.float32 if device.type == "mps" else torch.float64


def principal_components(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The mean and the top ``k`` principal directions of the rows of ``x``.

    Computed from the (D, D) covariance with ``torch.linalg.eigh``: exact and deterministic
    (unlike ``torch.pca_lowrank``, which draws random numbers). Each direction's sign is fixed
    so that its largest-magnitude loading is positive.

    Args:
        x: (M, D) rows.
        k: Number of directions, at most D.

    Returns:
        The (D,) mean and the (k, D) directions, strongest first, in ``x``'s dtype.
    """
    if x.ndim != 2 or not 1 <= k <= x.shape[1]:
        raise ValueError(
            f"expected (M, D) rows and 1 <= k <= D, got shape {tuple(x.shape)} and k={k}"
        )
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / max(x.shape[0] - 1, 1)
    _, vectors = _eigh(covariance)  # ascending eigenvalues, vectors as columns
    top = vectors[:, -k:].flip(-1).T  # (k, D), strongest first
    strongest = top.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(top.gather(1, strongest))
    return mean, top * torch.where(signs == 0, torch.ones_like(signs), signs)


def _eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    if matrix.device.type != "cpu":
        return torch.linalg.eigh(matrix)
    # The threaded CPU eigensolver can stall for tenths of a second when the cores are busy
    # (measured: 64x64 took 0.15 s with 2 threads under load, 1 ms with one); a D x D problem
    # is small enough for one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrix)
    finally:
        torch.set_num_threads(threads)


def _minmax(values: Tensor, magnitude: float) -> Tensor:
    """Scale each column of (M, C) to [0, 1]; a constant column becomes 0.5.

    A column whose spread is below 1e-9 of ``magnitude`` (the data's largest absolute value)
    counts as constant: its spread is rounding noise, which scaling would blow up into colours.
    """
    low = values.min(dim=0).values
    span = values.max(dim=0).values - low
    varies = span > 1e-9 * magnitude
    scaled = (values - low) / torch.where(varies, span, torch.ones_like(span))
    return torch.where(varies, scaled, torch.full_like(scaled, 0.5))


def _border(grid: tuple[int, int], device: torch.device) -> Tensor:
    h, w = grid
    border = torch.zeros(h, w, dtype=torch.bool, device=device)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return border


def pca_foreground(
    patch_tokens: Tensor | Features,
    grid: tuple[int, int] | None = None,
    *,
    threshold: float = 0.3,
    foreground: ForegroundChoice | Tensor = "auto",
) -> ForegroundSplit:
    """Split patches into foreground and background by the first principal component.

    Args:
        patch_tokens: (B, N, D) patch tokens (registers excluded), or :class:`Features` (the
            last block's patch tokens and its grid are used).
        grid: The patch grid (h, w) with h * w = N; optional for Features and square grids.
        threshold: Patches whose scaled score on the foreground side exceeds it are
            foreground (0.3 in the usual recipe).
        foreground: ``"auto"``, ``"high"``, ``"low"``, ``"all"`` or a bool mask; see the
            module documentation.

    Returns:
        The mask, the oriented score and the side chosen.

    Raises:
        ValueError: A shape or grid that does not fit, or tokens that hold NaN or infinite
            values (the message names the images).
    """
    tokens, (h, w) = _tokens_and_grid(patch_tokens, grid)
    batch = int(tokens.shape[0])
    if isinstance(foreground, Tensor):
        mask = _given_mask(foreground, batch, (h, w)).to(tokens.device)
        return ForegroundSplit(mask, torch.ones(mask.shape, device=tokens.device), "given")
    if foreground not in ("auto", "high", "low", "all"):
        raise ValueError(
            f"foreground must be 'auto', 'high', 'low', 'all' or a bool mask, got {foreground!r}"
        )
    if foreground == "all":
        ones = torch.ones(batch, h, w, device=tokens.device)
        return ForegroundSplit(ones.bool(), ones, "all")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")

    x = rearrange(tokens.detach(), "b n d -> (b n) d").to(_work_dtype(tokens.device))
    mean, directions = principal_components(x, 1)
    score = _minmax((x - mean) @ directions.T, float(x.abs().max()))[:, 0]
    score = rearrange(score, "(b h w) -> b h w", b=batch, h=h)
    side = foreground
    if side == "auto":
        side = _auto_side(score, (h, w))
    if side == "low":
        score = 1.0 - score
    score = score.float()
    return ForegroundSplit(score > threshold, score, side)


def _auto_side(score: Tensor, grid: tuple[int, int]) -> Literal["high", "low"]:
    h, w = grid
    if h <= 2 or w <= 2:
        logger.info("grid %dx%d has no interior patches; taking the high side as foreground", h, w)
        return "high"
    border = _border(grid, score.device)
    border_mean = score[:, border].mean()
    interior_mean = score[:, ~border].mean()
    side: Literal["high", "low"] = "low" if border_mean > interior_mean else "high"
    logger.debug(
        "first component: border mean %.3f, interior mean %.3f -> foreground is the %s side",
        float(border_mean),
        float(interior_mean),
        side,
    )
    return side


def _given_mask(mask: Tensor, batch: int, grid: tuple[int, int]) -> Tensor:
    h, w = grid
    if mask.dtype != torch.bool:
        raise TypeError(f"a foreground mask must be a bool tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) == (batch, h * w):
        return rearrange(mask, "b (h w) -> b h w", h=h)
    if tuple(mask.shape) != (batch, h, w):
        raise ValueError(
            f"a foreground mask must have shape (B, h, w) = ({batch}, {h}, {w}) or (B, N) = "
            f"({batch}, {h * w}), got {tuple(mask.shape)}"
        )
    return mask


def pca_rgb(
    patch_tokens: Tensor | Features,
    grid: tuple[int, int] | None = None,
    *,
    foreground_threshold: float = 0.3,
    foreground: ForegroundChoice | Tensor = "auto",
) -> Tensor:
    """Colour every patch by a PCA of the patch tokens; background black.

    Args:
        patch_tokens: (B, N, D) patch tokens (``x_norm_patchtokens``, registers excluded), or
            :class:`Features` (the last block's patch tokens and its grid are used).
        grid: The patch grid (h, w) with h * w = N; optional for Features and square grids.
        foreground_threshold: Patches whose scaled first-component score on the foreground
            side exceeds it are coloured.
        foreground: Which side of the first component is the foreground: ``"auto"``,
            ``"high"``, ``"low"``, ``"all"`` or a bool mask (B, h, w); see the module
            documentation.

    Returns:
        (B, h, w, 3) float32 in [0, 1] on the tokens' device: each foreground patch's first
        three principal components over the foreground of all images, each min-max scaled to
        [0, 1] as R, G, B; background patches exactly 0. Upscale with
        :func:`save_pca_grid` or ``torch.nn.functional.interpolate`` for display.

    Raises:
        ValueError: A shape or grid that does not fit, or tokens that hold NaN or infinite
            values (the message names the images).

    Example:
        ``pca_rgb(backbone.forward_features(x)["x_norm_patchtokens"], grid=(9, 18))`` for a
        batch of 126x252 images gives a (B, 9, 18, 3) tensor.
    """
    tokens, (h, w) = _tokens_and_grid(patch_tokens, grid)
    split = pca_foreground(tokens, (h, w), threshold=foreground_threshold, foreground=foreground)
    batch, dim = int(tokens.shape[0]), int(tokens.shape[2])
    x = rearrange(tokens.detach(), "b n d -> (b n) d").to(_work_dtype(tokens.device))
    mask = rearrange(split.mask, "b h w -> (b h w)")
    rgb = torch.zeros(x.shape[0], 3, dtype=x.dtype, device=x.device)
    count = int(mask.sum())
    if count == 0:
        logger.warning(
            "no patch is foreground (threshold %.2f, side %s); the picture is black",
            foreground_threshold,
            split.side,
        )
    elif count == 1:
        rgb[mask] = 0.5
    else:
        k = min(3, dim)
        mean, directions = principal_components(x[mask], k)
        colours = _minmax((x[mask] - mean) @ directions.T, float(x.abs().max()))
        rgb[mask, :k] = colours
        if k < 3:
            rgb[mask, k:] = 0.5
    return rearrange(rgb.float(), "(b h w) c -> b h w c", b=batch, h=h)


def pca_caption(*, random_weights: bool = False, background: bool = True) -> str:
    """What a picture of :func:`pca_rgb` shows, in words, for :func:`save_pca_grid`'s caption.

    Args:
        random_weights: The tokens come from a backbone with random weights: say that the
            colours then follow the pixels' colours, not object parts.
        background: Patches were split into object and background (black); ``False`` for
            ``foreground="all"``, where every patch is coloured.
    """
    text = (
        "Left: each image. Right: its patch tokens, one square per 14x14-pixel patch, coloured "
        "by a PCA over the patches of all the images shown: the first three components give "
        "red, green and blue, so the same colour means similar features, in every image."
    )
    if background:
        text += " Black: background (the other side of the first component)."
    if random_weights:
        text += (
            " The backbone has random weights, so the colours follow the pixels' colours, not "
            "object parts; DINOv2 weights colour each part alike."
        )
    return text
