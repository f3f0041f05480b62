"""Tracing a module into an ONNX program and writing it: what both exporters share.

:func:`~dinov2_heads.export.export_onnx` and :func:`~dinov2_heads.export.export_dense_onnx`
check their arguments alike, trace in eval mode without the exporter's noise, check a dynamic
graph at a second grid of the other parity, and replace the file atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinov2_heads.atomic import atomic_path
from dinov2_heads.dense import Depther, Segmenter
from dinov2_heads.export.onnx_runtime import require_module
from dinov2_heads.features import FrozenBackbone

__all__ = [
    "DEFAULT_OPSET",
    "MAX_GRID",
    "check_export_arguments",
    "device_of",
    "eval_mode",
    "other_parity_grid",
    "quiet_exporter",
    "save_program",
]

#: Default ONNX opset: 18 is read by onnxruntime >= 1.14 and current TensorRT.
DEFAULT_OPSET = 18
#: Largest grid side the dynamic graph declares (14,336 px for patch size 14).
MAX_GRID = 1024


def check_export_arguments(frozen: object, heads: nn.Module, opset: int, verify: bool) -> None:
    """Refuse what no export can take: no ``FrozenBackbone`` (a ``Depther`` or ``Segmenter`` is
    pointed to :func:`~dinov2_heads.export.export_dense_onnx`), heads that are not a module, an
    opset before 18, or ``verify`` with bfloat16 weights; also needs ``onnxscript``."""
    require_module("onnxscript")
    if not isinstance(frozen, FrozenBackbone):
        hint = (
            "; for a Depther or Segmenter (padding and resize in the graph) use "
            "export_dense_onnx(predictor, path)"
            if isinstance(frozen, Depther | Segmenter)
            else ""
        )
        raise TypeError(
            f"export_onnx needs a FrozenBackbone, got {type(frozen).__name__}; wrap the "
            f"backbone: FrozenBackbone(backbone, n_last_blocks=...){hint}"
        )
    if not isinstance(heads, nn.Module):
        raise TypeError(f"heads must be an nn.Module (a head or a MultiHead), got {heads!r}")
    if opset < 18:
        raise ValueError(
            f"opset must be 18 or newer (the torch.export-based exporter's oldest), got {opset}"
        )
    if verify and frozen.dtype == torch.bfloat16:
        raise ValueError(
            "verify=True needs float32 or float16 weights (onnxruntime has no bfloat16 input); "
            "export a float32 FrozenBackbone, or pass verify=False"
        )


def device_of(module: nn.Module) -> torch.device:
    """The device of the first parameter (the CPU for a module without any)."""
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and every submodule in eval mode inside the block, their modes restored after."""
    modes = {child: child.training for child in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for child, training in modes.items():
            child.training = training


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's messages that do not concern the user silenced inside the block."""
    # The exporter logs a warning per torchvision operator it cannot register (torchvision is
    # not a dependency) and torch.export emits an internal FutureWarning; neither concerns
    # the user.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def other_parity_grid(grid: tuple[int, int], *, least: int = 2) -> tuple[int, int]:
    """A second patch grid to check a dynamic graph at: each side of the other parity.

    Together with ``grid`` it holds an odd and an even side in each direction, the fewest
    sizes that do: a head whose graph took a branch on the traced grid's parity (a resize done
    only when two maps differ, which they do for odd sides) fails or differs at the other
    parity. The grid is one patch taller and one narrower (wider when narrower would go below
    ``least``), of another aspect ratio than ``grid``, so a swap of height and width shows too.

    Args:
        grid: The traced (h, w).
        least: The smallest side the graph was traced for, in patches.

    Returns:
        (h', w') with ``h' % 2 != h % 2`` and ``w' % 2 != w % 2``, each between ``least`` and
        :data:`MAX_GRID`.
    """
    height, width = grid
    taller = height + 1 if height < MAX_GRID else height - 1
    narrower = width - 1 if width - 1 >= least else width + 1
    if taller * width == height * narrower:
        # A square grid at the least side, (2, 2) -> (3, 3): two more patches keep the parity
        # and change the ratio.
        taller += 2
    return taller, narrower


def save_program(program: Any, target: Path) -> None:
    """Write the ``torch.onnx`` program to ``target`` atomically, a ``.data`` file beside it
    for a model over 2 GB; missing folders above ``target`` are made, as saving a picture
    does."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # The weights go in the .onnx file unless the model is over 2 GB; then torch writes them
    # to "<name>.data" beside it, named after the temporary file. The graph is pointed at the
    # final data file's name before that file is moved there, and the .onnx file last; a
    # failure on the way leaves no temporary data file behind.
    with atomic_path(target) as temporary:
        data = temporary.with_name(temporary.name + ".data")
        try:
            program.save(str(temporary))
            if data.exists():
                _rewrite_external_location(temporary, target.name + ".data")
                os.replace(data, target.with_name(target.name + ".data"))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                data.unlink()
            raise


def _rewrite_external_location(model_path: Path, location: str) -> None:
    onnx = require_module("onnx")
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(model_path))
