"""Architecture settings of the official DINOv2 backbones, as a literal registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

FfnLayer = Literal["mlp", "swiglufused"]


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to build a :class:`~dinov2_heads.DinoVisionTransformer`.

    Attributes:
        embed_dim: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D (SwiGLU rounds it, see ``ffn_layer``).
        ffn_layer: ``"mlp"`` (GELU MLP, ViT-S/B/L) or ``"swiglufused"`` (ViT-g).
        num_register_tokens: R extra learned tokens between the class token and the patches.
        interpolate_antialias: Antialias when resizing the position embeddings
            (``True`` for the ``_reg`` models).
        interpolate_offset: Offset added to the target grid before computing the bicubic scale
            factor (0.1 for the plain models); 0 resizes to the exact size instead.
        patch_size: Patch side P in pixels.
        img_size: Image side the position-embedding table was trained for (518 -> a 37x37 grid).
        init_values: LayerScale initial value; ``None`` disables LayerScale.
        qkv_bias: Bias on the qkv projections.
        proj_bias: Bias on the attention output projections.
        ffn_bias: Bias in the feed-forward networks.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    ffn_layer: FfnLayer = "mlp"
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    patch_size: int = 14
    img_size: int = 518
    init_values: float | None = 1.0
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "img_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.ffn_layer not in ("mlp", "swiglufused"):
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglufused', got {self.ffn_layer!r}")
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")
        if self.img_size % self.patch_size != 0:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def pos_grid(self) -> int:
        """Side of the square position-embedding grid (37 for 518 px and P = 14)."""
        return self.img_size // self.patch_size

    def replace(self, **overrides: Any) -> BackboneConfig:
        """A copy with some fields changed; unknown field names are an error."""
        unknown = sorted(set(overrides) - set(asdict(self)))
        if unknown:
            raise TypeError(
                f"unknown backbone setting(s) {unknown}; valid settings: {sorted(asdict(self))}"
            )
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable)."""
        return asdict(self)


def _plain(embed_dim: int, depth: int, num_heads: int, ffn: FfnLayer = "mlp") -> BackboneConfig:
    return BackboneConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads, ffn_layer=ffn)


def _registers(config: BackboneConfig) -> BackboneConfig:
    # The official hub builds the register models with 4 registers, antialiased interpolation
    # and no offset.
    return replace(
        config, num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0
    )


_VITS = _plain(384, 12, 6)
_VITB = _plain(768, 12, 12)
_VITL = _plain(1024, 24, 16)
_VITG = _plain(1536, 40, 24, "swiglufused")

#: The official variants by their hub names.
VARIANTS: dict[str, BackboneConfig] = {
    "dinov2_vits14": _VITS,
    "dinov2_vitb14": _VITB,
    "dinov2_vitl14": _VITL,
    "dinov2_vitg14": _VITG,
    "dinov2_vits14_reg": _registers(_VITS),
    "dinov2_vitb14_reg": _registers(_VITB),
    "dinov2_vitl14_reg": _registers(_VITL),
    "dinov2_vitg14_reg": _registers(_VITG),
}

#: The official backbones' widths by the size letter of their file names
#: (``dinov2_vits14_pretrain.pth``: ``"s"``, 384).
OFFICIAL_WIDTHS: dict[str, int] = {
    "s": _VITS.embed_dim,
    "b": _VITB.embed_dim,
    "l": _VITL.embed_dim,
    "g": _VITG.embed_dim,
}


def list_variants() -> list[str]:
    """Names of the official variants, e.g. ``"dinov2_vits14"`` and ``"dinov2_vits14_reg"``."""
    return list(VARIANTS)


def get_config(name: str) -> BackboneConfig:
    """The configuration of an official variant; an unknown name lists the valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone variant {name!r}; valid names: {', '.join(VARIANTS)}"
        ) from None


def variant_name(config: BackboneConfig) -> str | None:
    """The official name of ``config`` when its architecture is one, else ``None`` (custom).

    Only the architecture counts: ``img_size`` (the stored position grid) and the initial
    LayerScale value do not change which weights fit.
    """
    for name, candidate in VARIANTS.items():
        # LayerScale's initial value changes nothing once weights are loaded; its absence does.
        init_values = candidate.init_values if config.init_values else None
        if replace(config, img_size=candidate.img_size, init_values=init_values) == candidate:
            return name
    return None
