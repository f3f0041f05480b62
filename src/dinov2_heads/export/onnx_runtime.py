"""Running an exported graph with onnxruntime, and saying which image size it failed on.

Shared by :func:`~dinov2_heads.export.export_onnx` and
:func:`~dinov2_heads.export.export_dense_onnx`: both feed images under :data:`INPUT_NAME`,
check a new file against PyTorch, and import the optional ONNX packages through
:func:`require_module`, whose error names the extra to install.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = [
    "INPUT_NAME",
    "INSTALL_HINT",
    "open_session",
    "require_module",
    "run_checked",
    "size_advice",
    "size_words",
]

#: Name of the graph input.
INPUT_NAME = "images"
#: How to install what ONNX export needs, published or from a checkout of the repository.
INSTALL_HINT = "pip install 'dinov2-heads[export]', or from a checkout: pip install -e '.[export]'"


def require_module(module: str) -> Any:
    """The module ``module`` (``onnx``, ``onnxruntime``, ...), or an ``ImportError`` naming the
    extra to install."""
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs {module}, which is not installed here: {INSTALL_HINT}"
        ) from error


def open_session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime ``InferenceSession`` of the file, on the CPU, logging fatal errors only."""
    ort = require_module("onnxruntime")
    options = ort.SessionOptions()
    # Fatal only: a failed run's error reaches the caller as the exception it raises.
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_checked(
    session: Any,
    output_names: Sequence[str],
    images: Tensor,
    patch: int,
    traced: tuple[int, int] | None = None,
) -> list[Any]:
    """onnxruntime's outputs for ``images``, which PyTorch has just run, or a ``RuntimeError``
    that names the size the graph failed on.

    Args:
        session: An onnxruntime ``InferenceSession``.
        output_names: The outputs to return, in order.
        images: (B, 3, H, W) in the graph's input dtype.
        patch: The patch size, to name the patch grid.
        traced: The (H, W) the graph was traced at, when checking a new export (the message
            then says what probably went wrong and the way round).
    """
    try:
        return list(session.run(list(output_names), {INPUT_NAME: images.cpu().numpy()}))
    except Exception as error:  # onnxruntime's own error types
        shape = tuple(images.shape)
        advice = (
            size_advice([shape], traced)
            if traced is not None
            else "check that the file was exported from this model, for this batch size"
        )
        raise RuntimeError(
            f"onnxruntime could not run the exported graph on {size_words(shape, patch)}, "
            f"which PyTorch runs ({str(error).strip()}); {advice}"
        ) from error


def size_words(shape: Sequence[int], patch: int) -> str:
    """``"images of 42x56 (a 3x4 patch grid)"`` for (B, 3, 42, 56), for messages; the grid of
    sides that are not multiples of ``patch`` is the padded one."""
    height, width = shape[-2], shape[-1]
    return f"images of {height}x{width} (a {-(-height // patch)}x{-(-width // patch)} patch grid)"


def size_advice(failed: Sequence[Sequence[int]], traced: tuple[int, int] | None) -> str:
    """The way round when the check of a new export fails on the ``failed`` input shapes."""
    if traced is not None and all(tuple(shape[-2:]) != traced for shape in failed):
        return (
            f"the traced size {traced[0]}x{traced[1]} matches, so a head probably branches on "
            "tensor sizes (such as a resize done only when two maps differ, as they do for "
            "grid sides of one parity), and the graph keeps the traced size's branch only; do "
            "the step unconditionally (a resize to the same size is a copy), or export with a "
            "fixed size"
        )
    return "please report this with the model settings"
