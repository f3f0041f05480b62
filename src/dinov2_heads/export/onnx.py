"""ONNX export: one graph from images (B, 3, H, W) to the outputs of every head."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.export.onnx_input_checks import add_input_checks
from dinov2_heads.export.onnx_metadata import graph_metadata
from dinov2_heads.export.onnx_runtime import (
    INPUT_NAME,
    open_session,
    run_checked,
    size_advice,
    size_words,
)
from dinov2_heads.export.onnx_tracing import (
    DEFAULT_OPSET,
    MAX_GRID,
    check_export_arguments,
    device_of,
    eval_mode,
    other_parity_grid,
    quiet_exporter,
    save_program,
)
from dinov2_heads.export.output_layout import OutputLayout, describe_outputs, single_output_name
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import MultiHead

logger = logging.getLogger(__name__)

#: Name of the output of a single classifier or segmentation head (a :class:`MultiHead` names
#: each output after its head; a single depth head's output is ``depth``).
SINGLE_OUTPUT = "logits"


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how it checked it.

    Attributes:
        path: The ``.onnx`` file.
        input_name: ``"images"``: float (B, 3, H, W), normalised like the training images.
        output_names: One per head, in order (the head names of a MultiHead, else ``logits``,
            or ``depth`` for a depth head).
        dynamic_batch: Whether B may be any size.
        dynamic_size: Whether H and W may be any multiples of the patch size (from 2 patches).
        input_size: The fixed (H, W) when not ``dynamic_size``, else the size traced with.
        opset: The ONNX opset.
        max_abs_diff: Largest |onnxruntime - PyTorch| per output over the checked shapes, or
            ``None`` when not verified.
        checked_shapes: The input shapes the verification ran (for a dynamic size, patch grids
            of both parities on each side).
        output_layouts: What each output holds and its shape, by output name
            (:class:`~dinov2_heads.export.OutputLayout`: ``logits (B, K)``, ``logits (B, K, h,
            w)``, ``depth in metres (B, 1, 4h, 4w)``, ...); empty for
            :func:`~dinov2_heads.export.export_dense_onnx`, whose one output the metadata's
            ``predictor`` describes.
    """

    path: Path
    input_name: str
    output_names: tuple[str, ...]
    dynamic_batch: bool
    dynamic_size: bool
    input_size: tuple[int, int]
    opset: int
    max_abs_diff: dict[str, float] | None = None
    checked_shapes: list[tuple[int, int, int, int]] = field(default_factory=list)
    output_layouts: dict[str, OutputLayout] = field(default_factory=dict)


class ExportGraph(nn.Module):
    """The exported computation: images (B, 3, H, W) -> one tensor per head.

    Each head's own output: logits (B, K) of a classifier, logits (B, K, h, w) of a
    segmentation head, depth (B, 1, ...) of a depth head on its own grid.

    Runs :class:`~dinov2_heads.features.FrozenBackbone`'s own forward (weights' dtype, float32
    features) on the same backbone, uncompiled: ``torch.compile`` has no place in an exported
    graph, and a compiled ``frozen`` called while exporting would lose its compilation. Returns
    the heads' outputs as a tuple in ``output_names`` order.
    """

    def __init__(self, frozen: FrozenBackbone, heads: nn.Module) -> None:
        super().__init__()
        self.frozen = FrozenBackbone(
            frozen.backbone, n_last_blocks=frozen.n_last_blocks, blocks=frozen.blocks
        )
        self.heads = heads
        self.output_names = (
            tuple(heads.keys()) if isinstance(heads, MultiHead) else (single_output_name(heads),)
        )

    @property
    def named_heads(self) -> dict[str, nn.Module]:
        """The head behind each output, in ``output_names`` order."""
        if isinstance(self.heads, MultiHead):
            return {name: self.heads[name] for name in self.output_names}
        return {self.output_names[0]: self.heads}

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """(B, 3, H, W) -> one tensor per head (see the class)."""
        outputs = self.heads(self.frozen(images))
        if isinstance(outputs, Mapping):
            return tuple(outputs[name] for name in self.output_names)
        return (outputs,)


def export_onnx(
    frozen: FrozenBackbone,
    heads: nn.Module,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool | None = None,
    input_size: int | tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    check_finite: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
) -> OnnxExport:
    """Export the frozen backbone and its heads as one ONNX graph, and check it.

    The graph takes ``images`` (B, 3, H, W) in the dtype of the frozen weights and returns one
    output per head (named after the heads of a :class:`~dinov2_heads.heads.MultiHead`,
    ``logits`` for a single head, ``depth`` for a single depth head): what each head returns,
    logits (B, K) of a classifier, logits (B, K, h, w) on the patch grid of a segmentation head,
    depth in metres (B, 1, 4h, 4w) of a ``LinearDepthHead`` (about 16h x 16w for a
    ``DPTDepthHead``). Each output's declared shape uses the input's dimension names (``batch``,
    ``grid_h``, ``grid_w``) and its doc string says what it holds. The position embeddings are
    resized inside the graph exactly as in PyTorch (the official bicubic resize, see
    ``docs/deployment.md``), so one graph serves every input size when ``dynamic_size``; heads
    built for one patch grid (such as :class:`~dinov2_heads.heads.Conv1dNeck`) need a fixed
    size. A dynamic graph refuses, at run time, an H or W that is not a multiple of the patch
    size, as PyTorch does; with ``check_finite`` it also refuses images with NaN or infinite
    pixels. The file's metadata records the input size, whether H/W are dynamic, the patch size,
    the head names, types, configurations and class names, each output's layout
    (``output_layouts``: task, quantity, shape, description), and the backbone variant and
    fingerprint.

    With ``verify`` the file is run by onnxruntime on CPU and compared with PyTorch at two batch
    sizes (when ``dynamic_batch``) and, when ``dynamic_size``, at two image sizes: the traced
    one and one a patch taller and a patch narrower, so each side runs an odd and an even
    number of patches (a head that branches on tensor sizes keeps the traced size's branch in
    the graph, which then fails or differs at the other parity).

    Args:
        frozen: The :class:`~dinov2_heads.features.FrozenBackbone` the heads read.
        heads: A MultiHead or a single head taking :class:`Features`.
        path: The ``.onnx`` file to write (replaced atomically; a model over 2 GB gets a
            ``.onnx.data`` file beside it).
        dynamic_batch: Let B vary (otherwise it is fixed to 1).
        dynamic_size: Let H and W vary. ``None`` (default): dynamic unless a head needs a fixed
            patch grid. ``True`` with such a head is an error.
        input_size: (H, W) or one side: the fixed size, or the size to trace with when dynamic.
            Required with a fixed-grid head (its training size); else defaults to 224x224.
        opset: ONNX opset version (18 or newer).
        check_finite: Make the graph refuse images with NaN or infinite pixels (one subtraction
            and one sum over the pixels). ``False``: such images give NaN outputs.
        verify: Check the file with onnxruntime (needs the ``export`` extra).
        atol: Largest accepted max abs difference in the verification.

    Returns:
        An :class:`OnnxExport` with the verification figures.

    Raises:
        ValueError: Bad sizes, ``dynamic_size=True`` with a fixed-grid head, or heads that
            cannot read the backbone's features (the head's own message).
        RuntimeError: The verification found a larger difference than ``atol``, or
            onnxruntime could not run the graph at a checked size (the message names it).
    """
    check_export_arguments(frozen, heads, opset, verify)
    patch = frozen.patch_size
    dynamic, size = _plan_size(heads, patch, dynamic_size, input_size)
    graph = ExportGraph(frozen, heads)
    target = Path(path)
    with eval_mode(heads), quiet_exporter():
        program = _trace(graph, size, dynamic_batch, dynamic, opset)
        layouts = describe_outputs(program, graph.named_heads, patch)
        checks = add_input_checks(
            program.model.graph, patch_size=patch, size=dynamic, finite=check_finite
        )
        program.model.metadata_props.update(
            graph_metadata(
                graph.frozen,
                graph.output_names,
                heads,
                size,
                dynamic,
                dynamic_batch,
                checks,
                output_layouts={name: layout.to_dict() for name, layout in layouts.items()},
            )
        )
        save_program(program, target)
    logger.info(
        "exported %s to %s (dynamic batch %s, dynamic size %s)",
        ", ".join(graph.output_names),
        target,
        dynamic_batch,
        dynamic,
    )
    result = OnnxExport(
        path=target,
        input_name=INPUT_NAME,
        output_names=graph.output_names,
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic,
        input_size=size,
        opset=opset,
        output_layouts=layouts,
    )
    return _verified(result, graph, patch, atol) if verify else result


def _plan_size(
    heads: nn.Module,
    patch: int,
    dynamic_size: bool | None,
    input_size: int | tuple[int, int] | None,
) -> tuple[bool, tuple[int, int]]:
    """Whether H and W are dynamic, and the size to trace with."""
    fixed_grid = _fixed_grid(heads)
    if dynamic_size and fixed_grid is not None:
        raise ValueError(
            f"head {fixed_grid[0]!r} is built for a fixed grid of {fixed_grid[1]} patch "
            "tokens, so the graph cannot take any image size; call export_onnx with "
            "dynamic_size=False (and input_size=the training size)"
        )
    dynamic = fixed_grid is None if dynamic_size is None else dynamic_size
    return dynamic, _example_size(input_size, fixed_grid, patch, _built_size(heads, patch))


def _trace(
    graph: ExportGraph,
    size: tuple[int, int],
    dynamic_batch: bool,
    dynamic_size: bool,
    opset: int,
) -> Any:
    """The ``torch.onnx`` program of ``graph`` traced on random images of ``size``."""
    frozen = graph.frozen
    example = torch.randn(2 if dynamic_batch else 1, 3, *size, device=device_of(frozen))
    example = example.to(frozen.dtype)
    graph.eval()
    # A head that cannot read these features (another grid, block count or width) raises its
    # own clear error here; inside torch.export it would come wrapped in exporter advice.
    with torch.no_grad():
        graph(example)
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(graph.output_names),
        dynamic_shapes={"images": _dynamic_shapes(dynamic_batch, dynamic_size, frozen.patch_size)},
        opset_version=opset,
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program


def _verified(result: OnnxExport, graph: ExportGraph, patch: int, atol: float) -> OnnxExport:
    """``result`` with the largest onnxruntime - PyTorch differences, or a ``RuntimeError``."""
    shapes = _check_shapes(result.input_size, patch, result.dynamic_batch, result.dynamic_size)
    session = open_session(result.path)
    worst: dict[str, float] = dict.fromkeys(graph.output_names, 0.0)
    failed: list[tuple[int, int, int, int]] = []
    for shape in shapes:
        images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        diffs = _compare(session, graph, images, traced=result.input_size)
        worst = {name: max(worst[name], diffs[name]) for name in worst}
        if max(diffs.values()) > atol and shape[2:] not in [s[2:] for s in failed]:
            failed.append(shape)
    logger.info("onnxruntime vs PyTorch, max abs diff per output: %s", worst)
    if failed:
        raise RuntimeError(
            f"the exported graph differs from PyTorch by up to {max(worst.values()):.2e} "
            f"(per output: {worst}), more than atol={atol:g}, on "
            f"{' and '.join(size_words(shape, patch) for shape in failed)}; "
            f"{size_advice(failed, result.input_size)}"
        )
    return dataclasses.replace(result, max_abs_diff=worst, checked_shapes=shapes)


def verify_onnx(
    path: str | os.PathLike[str],
    frozen: FrozenBackbone,
    heads: nn.Module,
    images: Tensor,
) -> dict[str, float]:
    """Max |onnxruntime - PyTorch| per output for ``images`` (B, 3, H, W), on CPU.

    PyTorch runs ``heads(frozen(images))`` in eval mode; onnxruntime runs the file with its
    CPU provider. Needs the ``export`` extra.

    Raises:
        RuntimeError: onnxruntime could not run the file on ``images`` that PyTorch runs.
    """
    if frozen.dtype == torch.bfloat16:
        raise ValueError(
            "onnxruntime cannot be fed bfloat16 images; verify a float32 (or float16) export"
        )
    return _compare(open_session(path), ExportGraph(frozen, heads), images)


def _compare(
    session: Any, graph: ExportGraph, images: Tensor, traced: tuple[int, int] | None = None
) -> dict[str, float]:
    frozen = graph.frozen
    with eval_mode(graph), torch.no_grad():
        expected = graph(images.to(device=device_of(frozen), dtype=frozen.dtype))
    produced = run_checked(
        session, graph.output_names, images.to(frozen.dtype), frozen.patch_size, traced
    )
    diffs = {}
    for name, got, want in zip(graph.output_names, produced, expected, strict=True):
        diffs[name] = float((torch.from_numpy(got).float() - want.cpu().float()).abs().max())
    return diffs


# ---------------------------------------------------------------------------- helpers


def _fixed_grid(heads: nn.Module) -> tuple[str, int] | None:
    # Heads that mix patch tokens by position (Conv1dNeck) have one weight per patch and say so
    # with a num_patches attribute.
    for name, module in heads.named_modules():
        patches = getattr(module, "num_patches", None)
        if isinstance(patches, int) and not isinstance(patches, bool):
            return name or SINGLE_OUTPUT, patches
    return None


def _built_size(heads: nn.Module, patch: int) -> str:
    # A neck built with its grid (h, w) knows the training size; one built with N does not.
    for module in heads.modules():
        grid = getattr(module, "grid", None)
        if isinstance(grid, tuple) and len(grid) == 2:
            return f"({grid[0] * patch}, {grid[1] * patch})"
    return "(126, 252)"


def _example_size(
    input_size: int | tuple[int, int] | None,
    fixed_grid: tuple[str, int] | None,
    patch: int,
    built_size: str = "(126, 252)",
) -> tuple[int, int]:
    if input_size is None:
        if fixed_grid is not None:
            raise ValueError(
                f"head {fixed_grid[0]!r} is built for {fixed_grid[1]} patch tokens; pass the "
                f"training image size, e.g. input_size={built_size}"
            )
        return 224, 224
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise TypeError(f"input_size must be an int or (H, W) ints, got {input_size!r}")
    height, width = size
    if height < 2 * patch or width < 2 * patch or height % patch or width % patch:
        raise ValueError(
            f"input_size {height}x{width} must be multiples of the patch size {patch} of at "
            f"least {2 * patch} px; for example {max(2, round(height / patch)) * patch}x"
            f"{max(2, round(width / patch)) * patch}"
        )
    if fixed_grid is not None and (height // patch) * (width // patch) != fixed_grid[1]:
        raise ValueError(
            f"input_size {height}x{width} gives {(height // patch) * (width // patch)} patch "
            f"tokens but head {fixed_grid[0]!r} is built for {fixed_grid[1]}; pass the training "
            "image size"
        )
    return height, width


def _dynamic_shapes(dynamic_batch: bool, dynamic_size: bool, patch: int) -> dict[int, Any]:
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch")
    if dynamic_size:
        # Sides are whole patches; torch.export treats sizes 0 and 1 as special, so the
        # declared range starts at two patches.
        dims[2] = patch * torch.export.Dim("grid_h", min=2, max=MAX_GRID)
        dims[3] = patch * torch.export.Dim("grid_w", min=2, max=MAX_GRID)
    return dims


def _check_shapes(
    size: tuple[int, int], patch: int, dynamic_batch: bool, dynamic_size: bool
) -> list[tuple[int, int, int, int]]:
    batches = [1, 3] if dynamic_batch else [1]
    sizes = [size]
    if dynamic_size:
        grid_h, grid_w = other_parity_grid((size[0] // patch, size[1] // patch), least=2)
        sizes.append((grid_h * patch, grid_w * patch))
    return [(b, 3, h, w) for b in batches for h, w in sizes]
