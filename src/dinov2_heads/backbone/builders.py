"""Build backbones by their official hub names, with weights from local files only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from dinov2_heads.backbone.config import get_config
from dinov2_heads.backbone.vision_transformer import DinoVisionTransformer

#: What ``weights`` / ``checkpoint`` accept: a path, a state dict, or the patched-hubconf form
#: ``{"LVD142M": path}``.
WeightsSource = str | os.PathLike[str] | Mapping[str, Any]


def create_backbone(
    name: str,
    *,
    checkpoint: WeightsSource | None = None,
    device: torch.device | str | None = None,
    **overrides: Any,
) -> DinoVisionTransformer:
    """Build an official variant, optionally loading local weights. Nothing is downloaded.

    Args:
        name: A hub name from :func:`list_variants`, e.g. ``"dinov2_vits14_reg"``.
        checkpoint: Local weights: a file path, a state dict, or ``{"LVD142M": path}``.
            Official, training, Hugging Face and timm layouts are recognised.
        device: Where to build the model (``"meta"`` builds it without memory, and without
            weights: it cannot be combined with ``checkpoint``).
        **overrides: :class:`BackboneConfig` fields to change, e.g. ``depth=2`` for a small
            test model.

    Returns:
        The backbone in eval mode.
    """
    config = get_config(name).replace(**overrides)
    if checkpoint is not None and torch.device(device or "cpu").type == "meta":
        # load_state_dict into meta parameters is a no-op: the weights would be dropped.
        raise ValueError(
            "checkpoint= with device='meta': a model on the meta device holds no values, so the "
            "weights would be dropped; build on a real device, or use "
            "dinov2_heads.checkpoints.load_backbone(path), which builds on meta and adopts the "
            "file's tensors"
        )
    with torch.device(device or "cpu"):
        model = DinoVisionTransformer(config)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def load_weights(model: DinoVisionTransformer, source: WeightsSource) -> None:
    """Load ``source`` into ``model`` strictly, after format detection and conversion."""
    from dinov2_heads.checkpoints import read_backbone_state_dict

    state_dict = read_backbone_state_dict(_unwrap_hub_weights(source))
    _load_strict(model, state_dict)


def _unwrap_hub_weights(source: WeightsSource) -> WeightsSource:
    # The patched-hubconf form maps a dataset name to a path: {"LVD142M": "/path/file.pth"}.
    if isinstance(source, Mapping) and len(source) == 1:
        (value,) = source.values()
        if isinstance(value, str | os.PathLike):
            return value
    return source


def _load_strict(model: DinoVisionTransformer, state_dict: Mapping[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"the weights do not fit the {model.variant or 'custom'} architecture:"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:3]))
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected[:5])}")
        lines.append("  use load_backbone(path) to infer the architecture from the weights")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def _hub_builder(name: str) -> Any:
    def build(*, weights: WeightsSource | None = None, **overrides: Any) -> DinoVisionTransformer:
        return create_backbone(name, checkpoint=weights, **overrides)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"Build ``{name}``; ``weights`` is a local path, a state dict or "
        '``{"LVD142M": path}``. Nothing is downloaded; without weights the model is random.'
    )
    return build


dinov2_vits14 = _hub_builder("dinov2_vits14")
dinov2_vitb14 = _hub_builder("dinov2_vitb14")
dinov2_vitl14 = _hub_builder("dinov2_vitl14")
dinov2_vitg14 = _hub_builder("dinov2_vitg14")
dinov2_vits14_reg = _hub_builder("dinov2_vits14_reg")
dinov2_vitb14_reg = _hub_builder("dinov2_vitb14_reg")
dinov2_vitl14_reg = _hub_builder("dinov2_vitl14_reg")
dinov2_vitg14_reg = _hub_builder("dinov2_vitg14_reg")
