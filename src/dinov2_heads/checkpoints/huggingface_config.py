"""A Hugging Face ``config.json`` beside DINOv2 weights: the head count, and a check of the rest.

The weights stay the source of truth: the architecture is read from their shapes as for any
checkpoint. The configuration adds the one thing the weights cannot tell, the number of
attention heads, and every field that the shapes can confirm is compared with them, so a
configuration from another model is an error rather than a silent surprise.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinov2_heads.backbone.config import BackboneConfig
from dinov2_heads.checkpoints.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointFileError,
)
from dinov2_heads.layers.swiglu import swiglu_hidden_features

logger = logging.getLogger(__name__)

#: The ``model_type`` of transformers' ``Dinov2Config`` and ``Dinov2WithRegistersConfig``.
DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")

#: What the official backbone computes and this library reproduces; the weights cannot show it.
_FIXED = {"layer_norm_eps": 1e-6, "num_channels": 3}


@dataclass(frozen=True)
class HuggingFaceConfig:
    """A DINOv2 ``config.json`` written by transformers.

    Attributes:
        path: The file.
        values: Its fields as stored.
    """

    path: Path
    values: dict[str, Any]

    @property
    def model_type(self) -> str:
        """``"dinov2"`` or ``"dinov2_with_registers"``."""
        return str(self.values.get("model_type"))

    @property
    def num_heads(self) -> int | None:
        """``num_attention_heads``, when the file gives it."""
        heads = self.values.get("num_attention_heads")
        if heads is None:
            return None
        if not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0:
            raise CheckpointError(
                f"{self.path} sets num_attention_heads={heads!r}; expected a positive integer"
            )
        return heads


def read_huggingface_config(path: Path) -> HuggingFaceConfig | None:
    """Read ``config.json``; ``None`` when it describes another kind of model.

    Raises:
        CheckpointError: The file is not a JSON object; fix or remove it.
        CheckpointFileError: The file cannot be read.
    """
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CheckpointFileError(f"cannot read {path}: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}); it describes the model next to it: fix it, or "
            "remove it to load the weights without it"
        ) from None
    if not isinstance(values, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(values).__name__}, not an object; fix it, or remove it "
            "to load the weights without it"
        )
    if values.get("model_type") not in DINOV2_MODEL_TYPES:
        logger.info(
            "%s has model_type %r, not %s; it is not used",
            path,
            values.get("model_type"),
            " or ".join(DINOV2_MODEL_TYPES),
        )
        return None
    return HuggingFaceConfig(path, values)


def check_huggingface_config(config: HuggingFaceConfig, inferred: BackboneConfig) -> None:
    """Raise when ``config.json`` contradicts the architecture read from the weights.

    Compared: ``hidden_size``, ``num_hidden_layers``, ``patch_size``, the position grid of
    ``image_size``, ``num_register_tokens``, ``use_swiglu_ffn``, the FFN width of
    ``mlp_ratio`` and ``num_attention_heads`` (it must divide the width). Also refused: a
    ``layer_norm_eps``, ``num_channels`` or ``hidden_act`` other than the official backbone's,
    which the weights cannot show and the backbone does not offer.

    Args:
        config: The configuration next to the weights.
        inferred: The architecture read from the weight shapes (its head count is not compared).

    Raises:
        ArchitectureMismatchError: A field disagrees; the message names both values.
    """
    values = config.values
    differ: list[str] = []

    def compare(name: str, stated: Any, ours: str, found: Any) -> None:
        if stated != found:
            differ.append(f"{name}={stated!r} but the weights have {ours}={found!r}")

    for name, ours, found in (
        ("hidden_size", "embed_dim", inferred.embed_dim),
        ("num_hidden_layers", "depth", inferred.depth),
        ("patch_size", "patch_size", inferred.patch_size),
    ):
        if name in values:
            compare(name, values[name], ours, found)
    if "image_size" in values and isinstance(values.get("patch_size"), int):
        grid = _grid(values["image_size"], values["patch_size"])
        if grid != inferred.pos_grid:
            differ.append(
                f"image_size={values['image_size']!r} ({grid}x{grid} positions) but the weights "
                f"have a {inferred.pos_grid}x{inferred.pos_grid} position grid "
                f"(img_size={inferred.img_size})"
            )
    registers = values.get("num_register_tokens", 0 if config.model_type == "dinov2" else None)
    if registers is not None:
        compare(
            "num_register_tokens", registers, "num_register_tokens", inferred.num_register_tokens
        )
    swiglu = inferred.ffn_layer == "swiglufused"
    if "use_swiglu_ffn" in values and bool(values["use_swiglu_ffn"]) != swiglu:
        differ.append(
            f"use_swiglu_ffn={values['use_swiglu_ffn']!r} but the weights have a "
            f"{inferred.ffn_layer} FFN"
        )
    elif isinstance(values.get("mlp_ratio"), int | float):
        stated, found = (
            _ffn_width(inferred.embed_dim, float(values["mlp_ratio"]), swiglu=swiglu),
            _ffn_width(inferred.embed_dim, inferred.mlp_ratio, swiglu=swiglu),
        )
        if stated != found:
            differ.append(
                f"mlp_ratio={values['mlp_ratio']!r} (an FFN {stated} wide) but the weights have "
                f"an FFN {found} wide"
            )
    heads = config.num_heads
    if heads is not None and inferred.embed_dim % heads:
        differ.append(f"num_attention_heads={heads}, which does not divide the width")
    for name, official in _FIXED.items():
        if name in values and not _same_number(values[name], official):
            differ.append(f"{name}={values[name]!r} but the DINOv2 backbone has {official!r}")
    act = values.get("hidden_act", "gelu")
    if not swiglu and act != "gelu":
        differ.append(f"hidden_act={act!r} but the DINOv2 backbone's MLP uses 'gelu'")
    if differ:
        raise ArchitectureMismatchError(
            f"{config.path} does not describe the weights beside it: {'; '.join(differ)}. "
            "The architecture is read from the weights; fix config.json, or remove it to load "
            "the weights without it"
        )


def _grid(image_size: Any, patch_size: int) -> int | None:
    side = image_size[0] if isinstance(image_size, list | tuple) and image_size else image_size
    return side // patch_size if isinstance(side, int) and patch_size > 0 else None


def _ffn_width(dim: int, ratio: float, *, swiglu: bool) -> int:
    hidden = int(dim * ratio)
    return swiglu_hidden_features(hidden) if swiglu else hidden


def _same_number(value: Any, expected: float) -> bool:
    return isinstance(value, int | float) and math.isclose(value, expected, rel_tol=1e-9)
