"""Build backbones by their official hub names, with weights from local files only.

``create_backbone(name, checkpoint=path)`` and the hub-named builders (``dinov2_vits14(weights=
path)``, ...) live with the checkpoints because they read them: the :mod:`~dinov2_heads.backbone`
package below holds the model and its configurations and knows nothing of files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from dinov2_heads.backbone.config import get_config
from dinov2_heads.backbone.vision_transformer import DinoVisionTransformer
from dinov2_heads.checkpoints.loading import backbone_from_weights, read_backbone
from dinov2_heads.checkpoints.official_files import official_url

__all__ = [
    "WeightsSource",
    "create_backbone",
    "dinov2_vitb14",
    "dinov2_vitb14_reg",
    "dinov2_vitg14",
    "dinov2_vitg14_reg",
    "dinov2_vitl14",
    "dinov2_vitl14_reg",
    "dinov2_vits14",
    "dinov2_vits14_reg",
]

#: What ``weights`` / ``checkpoint`` accept: a path, a state dict, or the patched-hubconf form
#: ``{"LVD142M": path}``.
WeightsSource = str | os.PathLike[str] | Mapping[str, Any]


def create_backbone(
    name: str,
    *,
    checkpoint: WeightsSource | None = None,
    device: torch.device | str | None = None,
    pretrained: bool = False,
    **overrides: Any,
) -> DinoVisionTransformer:
    """Build an official variant, optionally loading local weights. Nothing is downloaded.

    With ``checkpoint``, the weights must fit the variant (with ``overrides``) exactly; they
    are checked as :func:`~dinov2_heads.checkpoints.load_backbone` with ``variant=name``
    checks them, with the same errors.

    Args:
        name: A hub name from :func:`~dinov2_heads.backbone.list_variants`, e.g.
            ``"dinov2_vits14_reg"``.
        checkpoint: Local weights: a file path or model folder, a state dict, or
            ``{"LVD142M": path}``. Official, training, Hugging Face and timm layouts are
            recognised.
        device: Where to put the model (``"meta"`` builds it without memory, and without
            weights: it cannot be combined with ``checkpoint``).
        pretrained: Accepted for the official hub's signature; ``True`` is an error that names
            the official file to download yourself and pass as ``checkpoint``.
        **overrides: :class:`~dinov2_heads.backbone.BackboneConfig` fields to change, e.g.
            ``depth=2`` for a small test model.

    Returns:
        The backbone in eval mode.

    Raises:
        ArchitectureMismatchError: The weights do not fit the architecture asked for.
        CheckpointError: The checkpoint cannot be read or is not a DINOv2 backbone; a heads
            file (``save_heads``) or a released head file is named as such, with where it
            goes (an :class:`UnknownFormatError`).
    """
    config = get_config(name)
    if pretrained:
        file = name.replace("_reg", "_reg4") + "_pretrain.pth"
        raise ValueError(
            f"pretrained=True: dinov2-heads downloads nothing; download the official weights "
            f"({official_url(file)}, linked from the DINOv2 repository) once yourself, then "
            f'load_backbone("{file}") (from dinov2_heads.checkpoints) or '
            f'create_backbone("{name}", checkpoint="{file}")'
        )
    config = config.replace(**overrides)
    if checkpoint is None:
        with torch.device(device or "cpu"):
            return DinoVisionTransformer(config).eval()
    if torch.device(device or "cpu").type == "meta":
        # load_state_dict into meta parameters is a no-op: the weights would be dropped.
        raise ValueError(
            "checkpoint= with device='meta': a model on the meta device holds no values, so the "
            "weights would be dropped; build on a real device, or use "
            "dinov2_heads.checkpoints.load_backbone(path), which builds on meta and adopts the "
            "file's tensors"
        )
    weights = read_backbone(_unwrap_hub_weights(checkpoint))
    model = backbone_from_weights(weights, config, asked=name)
    return model.to(device) if device is not None else model


def _unwrap_hub_weights(source: WeightsSource) -> WeightsSource:
    # The patched-hubconf form maps a dataset name to a path: {"LVD142M": "/path/file.pth"}.
    if isinstance(source, Mapping) and len(source) == 1:
        (value,) = source.values()
        if isinstance(value, str | os.PathLike):
            return value
    return source


def _hub_builder(name: str) -> Callable[..., DinoVisionTransformer]:
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
