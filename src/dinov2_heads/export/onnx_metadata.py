"""The ``dinov2_heads.*`` metadata of an exported ONNX file: written by both exporters, read back.

Each entry is a JSON string under a ``dinov2_heads.`` key of the model's ``metadata_props``:
the input, its size and checks, the outputs, the heads with their class names and the
backbone's identity, so a server knows what it runs without this library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dinov2_heads.export.heads_checkpoint import head_specs
from dinov2_heads.export.onnx_runtime import INPUT_NAME, require_module
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.fingerprint import weights_fingerprint

__all__ = ["graph_metadata", "read_onnx_metadata"]


def graph_metadata(
    frozen: FrozenBackbone,
    output_names: Sequence[str],
    heads: nn.Module,
    size: tuple[int, int],
    dynamic_size: bool,
    dynamic_batch: bool,
    checks: Sequence[str],
    **more: Any,
) -> dict[str, str]:
    """The ``dinov2_heads.*`` metadata entries, JSON encoded; ``more`` adds entries."""
    specs = dict(zip(output_names, head_specs(heads).values(), strict=True))
    values: dict[str, Any] = {
        "input": {
            "name": INPUT_NAME,
            "layout": "B, 3, H, W",
            "dtype": str(frozen.dtype).removeprefix("torch."),
        },
        "input_size": list(size),
        "dynamic_size": dynamic_size,
        "dynamic_batch": dynamic_batch,
        "patch_size": frozen.patch_size,
        "input_checks": list(checks),
        "outputs": list(output_names),
        "heads": {name: {"type": s["type"], "config": s["config"]} for name, s in specs.items()},
        "class_names": {name: spec["class_names"] for name, spec in specs.items()},
        "backbone_variant": getattr(frozen.backbone, "variant", None),
        "backbone_fingerprint": weights_fingerprint(frozen.backbone),
        "n_last_blocks": frozen.n_last_blocks,
        **more,
    }
    return {f"dinov2_heads.{key}": json.dumps(value) for key, value in values.items()}


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``dinov2_heads.*`` metadata of a file written by :func:`export_onnx`, JSON decoded.

    Raises:
        FileNotFoundError: Nothing is at ``path``.
        ValueError: The file is not an ONNX model, or not one :func:`export_onnx` wrote.
    """
    onnx = require_module("onnx")
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX file at {source}")
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(
            f"{source} is not an ONNX file: it does not parse as an ONNX model "
            f"({type(error).__name__}); pass the .onnx file export_onnx wrote"
        ) from error
    if not model.graph.node and not model.opset_import:
        # Protocol buffers parse many short byte strings as an empty message.
        raise ValueError(f"{source} is not an ONNX file: it holds no ONNX graph")
    prefix = "dinov2_heads."
    metadata = {
        prop.key[len(prefix) :]: json.loads(prop.value)
        for prop in model.metadata_props
        if prop.key.startswith(prefix)
    }
    if not metadata:
        raise ValueError(
            f"{source} is an ONNX model but has no dinov2_heads metadata: export_onnx did not "
            "write it"
        )
    return metadata
