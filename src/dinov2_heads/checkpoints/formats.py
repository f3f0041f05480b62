"""Which library wrote a backbone state dict, and its conversion into the official layout."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from dinov2_heads.checkpoints.errors import UnknownFormatError
from dinov2_heads.checkpoints.huggingface import convert_huggingface, is_huggingface_layout
from dinov2_heads.checkpoints.timm import convert_timm, is_timm_layout

logger = logging.getLogger(__name__)

CheckpointFormat = Literal["official", "huggingface", "timm"]
Converter = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


def _official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return dict(state_dict)


#: One pure converter per format, each returning the official layout.
CONVERTERS: dict[CheckpointFormat, Converter] = {
    "official": _official,
    "huggingface": convert_huggingface,
    "timm": convert_timm,
}

#: Every name an official DINOv2 backbone can have.
OFFICIAL_KEY = re.compile(
    r"^(cls_token|pos_embed|register_tokens|mask_token"
    r"|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|mlp\.w12|mlp\.w3)"
    r"\.(weight|bias)"
    r"|blocks\.\d+\.ls[12]\.gamma)$"
)

#: Classifier parts that the libraries save next to the backbone; set aside, never loaded.
_HEAD_KEY = re.compile(r"^(head|fc_norm|classifier)\.")

_OFFICIAL_MARKERS = ("cls_token", "pos_embed", "patch_embed.proj.weight")


@dataclass(frozen=True)
class Converted:
    """A backbone state dict in the official layout.

    Attributes:
        state_dict: Official names only.
        format: The layout it came in.
        unexpected: Names that are not part of a DINOv2 backbone, with their tensors.
        set_aside: Classifier heads stored next to the backbone (``head.*``, ``classifier.*``).
    """

    state_dict: dict[str, Tensor]
    format: CheckpointFormat
    unexpected: dict[str, Tensor] = field(default_factory=dict)
    set_aside: dict[str, Tensor] = field(default_factory=dict)


def detect_format(state_dict: Mapping[str, Tensor]) -> CheckpointFormat:
    """Tell the layout of a flat backbone state dict from its names.

    Raises:
        UnknownFormatError: The names fit no layout, or more than one; the message shows some.
    """
    hf = is_huggingface_layout(state_dict)
    native = all(marker in state_dict for marker in _OFFICIAL_MARKERS) or "reg_token" in state_dict
    if hf and native:
        raise UnknownFormatError(
            "the checkpoint mixes Hugging Face names (embeddings.*, encoder.layer.*) with "
            f"official/timm names (cls_token, blocks.*); saw {_sample(state_dict)}"
        )
    if hf:
        return "huggingface"
    if native:
        return "timm" if is_timm_layout(state_dict) else "official"
    raise UnknownFormatError(
        f"the checkpoint is not a DINOv2 backbone in a known layout (official, Hugging Face, "
        f"timm); saw {_sample(state_dict)}{_prefix_hint(state_dict)}"
    )


def to_official(state_dict: Mapping[str, Tensor]) -> Converted:
    """Detect the layout, convert to official names, and separate what is not backbone."""
    kind = detect_format(state_dict)
    converted = CONVERTERS[kind](state_dict)
    backbone: dict[str, Tensor] = {}
    unexpected: dict[str, Tensor] = {}
    set_aside: dict[str, Tensor] = {}
    for key, tensor in converted.items():
        if OFFICIAL_KEY.match(key):
            backbone[key] = tensor
        elif _HEAD_KEY.match(key):
            set_aside[key] = tensor
        else:
            unexpected[key] = tensor
    if kind != "official":
        logger.info("converted a %s checkpoint to the official layout", kind)
    return Converted(backbone, kind, unexpected, set_aside)


def _sample(state_dict: Mapping[str, Tensor], count: int = 6) -> str:
    keys = list(state_dict)
    shown = ", ".join(repr(k) for k in keys[:count])
    return f"{len(keys)} names: {shown}{', ...' if len(keys) > count else ''}"


def _prefix_hint(state_dict: Mapping[str, Tensor]) -> str:
    # A model that holds the backbone as one attribute ("base.", "encoder.") is the usual case.
    for marker in ("cls_token", "embeddings.cls_token"):
        holders = sorted(k.removesuffix(marker) for k in state_dict if k.endswith("." + marker))
        if holders:
            prefix = holders[0]
            return (
                f"; the backbone seems to live under {prefix!r}: pass "
                f"{{k.removeprefix({prefix!r}): v for k, v in state.items() "
                f"if k.startswith({prefix!r})}}, or use load_partial(model, path, "
                f"rename={{{prefix!r}: ''}})"
            )
    return ""
