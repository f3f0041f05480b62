"""ONNX export of a whole ``Depther`` or ``Segmenter``: padding, backbone, head, resize.

:func:`~dinov2_heads.export.export_onnx` exports a backbone with heads: the graph takes images
whose sides are multiples of the patch size and returns what the heads return (depth or logits
on the patch grid). :func:`export_dense_onnx` exports the dense predictor's whole pipeline
instead, so a server feeds images of any size and gets per-pixel results at that size:

- the centre padding to a multiple of the patch size (left/top ``pad // 2``, as the official
  ``CenterPadding``), with the amounts computed in the graph from the input's sides;
- the frozen backbone and the head;
- for depth, the clamp to the head's ``[min_depth, max_depth]``;
- the bilinear resize (``align_corners=False``) to the unpadded input size;
- for segmentation, the softmax over the classes (or the logits).

It is the PyTorch code of :class:`~dinov2_heads.dense.Depther` and
:class:`~dinov2_heads.dense.Segmenter` itself, traced with symbolic height and width. Sliding
windows, flips and multiple scales average several passes in PyTorch and are not exported.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dinov2_heads.dense import Depther, Segmenter
from dinov2_heads.export.onnx import OnnxExport
from dinov2_heads.export.onnx_input_checks import add_input_checks
from dinov2_heads.export.onnx_metadata import graph_metadata, read_onnx_metadata
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
from dinov2_heads.features import FrozenBackbone

logger = logging.getLogger(__name__)

#: What a dense graph can return: per-pixel depth, class probabilities or class logits.
DenseOutput = Literal["depth", "probabilities", "logits"]
#: The image size traced with when none is given: not a multiple of 14, so the graph pads.
DEFAULT_SIZE = (230, 300)


class DenseExportGraph(nn.Module):
    """The exported computation: images (B, 3, H, W) -> one per-pixel output (B, C, H, W).

    Holds a whole-image :class:`~dinov2_heads.dense.Depther` or
    :class:`~dinov2_heads.dense.Segmenter` rebuilt around an uncompiled
    :class:`~dinov2_heads.features.FrozenBackbone` on the same backbone and head
    (``torch.compile`` has no place in an exported graph), and returns its output as a
    one-element tuple named ``output_names[0]``.

    Args:
        predictor: A ``Depther`` or ``Segmenter`` with ``mode="whole"``, no flip and one scale
            of 1 (see :func:`check_exportable`).
        output: ``"depth"`` for a ``Depther``; ``"probabilities"`` (what the ``Segmenter``
            returns) or ``"logits"`` (its :meth:`~dinov2_heads.dense.Segmenter.logits`) for a
            ``Segmenter``.
    """

    def __init__(self, predictor: Depther | Segmenter, output: DenseOutput) -> None:
        super().__init__()
        check_exportable(predictor, output)
        original = predictor.frozen
        frozen = FrozenBackbone(
            original.backbone, n_last_blocks=original.n_last_blocks, blocks=original.blocks
        )
        self.predictor: Depther | Segmenter = (
            Depther(frozen, predictor.head)
            if isinstance(predictor, Depther)
            else Segmenter(frozen, predictor.head)
        )
        self.output = output
        self.output_names = (output,)

    @property
    def frozen(self) -> FrozenBackbone:
        """The uncompiled frozen backbone the graph runs."""
        return self.predictor.frozen

    def forward(self, images: Tensor) -> tuple[Tensor]:
        """(B, 3, H, W) -> ((B, 1, H, W) depth or (B, K, H, W) probabilities or logits,)."""
        if self.output == "logits":
            assert isinstance(self.predictor, Segmenter)
            return (self.predictor.logits(images),)
        return (self.predictor(images),)


def check_exportable(predictor: nn.Module, output: str | None = None) -> DenseOutput:
    """The output a dense predictor exports, or the error that says why it cannot.

    Args:
        predictor: A ``Depther`` or a ``Segmenter``.
        output: The output asked for; ``None``: ``"depth"`` for a ``Depther``,
            ``"probabilities"`` for a ``Segmenter``.

    Raises:
        TypeError: ``predictor`` is neither.
        ValueError: Sliding windows, flips or several scales (they stay PyTorch-only), or an
            output the predictor does not give.
    """
    if not isinstance(predictor, Depther | Segmenter):
        raise TypeError(
            f"export_dense_onnx exports a Depther or a Segmenter, got "
            f"{type(predictor).__name__}; for a backbone with heads use "
            "export_onnx(FrozenBackbone(backbone), heads, path)"
        )
    kind = type(predictor).__name__
    settings = predictor.settings
    if settings.mode != "whole":
        raise ValueError(
            f"the {kind} runs mode='slide' (crops of {settings.crop_size} every "
            f"{settings.stride}, averaged), which stays PyTorch-only: the window grid depends "
            f"on the image size. Export {kind}(backbone, head) (mode='whole'), which takes "
            "images of any size, and run the sliding windows around the graph if you need them"
        )
    if settings.flip:
        raise ValueError(
            f"the {kind} averages with the mirrored image (flip=True), which stays "
            f"PyTorch-only. Export {kind}(backbone, head, flip=False) and average the graph's "
            "output on the images with its output on images[..., ::-1], mirrored back"
        )
    if settings.scales != (1.0,):
        raise ValueError(
            f"the {kind} averages over scales {settings.scales}, which stays PyTorch-only. "
            f"Export {kind}(backbone, head) (scales=(1.0,)) and run the graph on each resized "
            "image"
        )
    allowed: tuple[DenseOutput, ...] = (
        ("depth",) if isinstance(predictor, Depther) else ("probabilities", "logits")
    )
    if output is None:
        return allowed[0]
    if output not in allowed:
        raise ValueError(
            f"a {kind} exports output={' or '.join(repr(name) for name in allowed)}, got {output!r}"
        )
    return output


def export_dense_onnx(
    predictor: Depther | Segmenter,
    path: str | os.PathLike[str],
    *,
    output: DenseOutput | None = None,
    dynamic_batch: bool = True,
    input_size: int | tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    check_finite: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> OnnxExport:
    """Export a whole-image ``Depther`` or ``Segmenter`` as one ONNX graph, and check it.

    The graph takes ``images`` (B, 3, H, W), normalised as for training, of any height and
    width, and returns one output at the input size: ``depth`` (B, 1, H, W) in metres for a
    ``Depther``, ``probabilities`` (B, K, H, W) or ``logits`` for a ``Segmenter``. Inside it
    are the centre padding, the backbone, the head, the depth clamp, the resize to H x W and
    the softmax, so the output is what the PyTorch predictor returns. The trace holds for
    sides from ``patch_size + 1`` pixels (two patches once padded; 29 with a
    :class:`~dinov2_heads.heads.DPTDepthHead`, which halves the grid), recorded as
    ``traced_min_size`` in the metadata; smaller images run through the same operators. With
    ``check_finite`` the graph refuses images with NaN or infinite pixels. The metadata is
    that of :func:`~dinov2_heads.export.export_onnx` plus ``predictor`` (the type, the
    output, the padding multiple and, for depth, the clamp range) and ``traced_min_size``.

    With ``verify`` the file is run by onnxruntime on CPU and compared with the PyTorch
    predictor at batch sizes 1 and 3 (when ``dynamic_batch``) and at two image sizes: the
    traced one and one of another aspect ratio whose padded patch grid and padding are both
    of the other parity on each side (odd padding after an even one, even after odd).

    Args:
        predictor: A :class:`~dinov2_heads.dense.Depther` or
            :class:`~dinov2_heads.dense.Segmenter` with ``mode="whole"``, ``flip=False`` and
            ``scales=(1.0,)``. Sliding windows, flips and scales average several passes in
            PyTorch and are refused with the way round.
        path: The ``.onnx`` file to write (replaced atomically).
        output: ``"depth"`` (a ``Depther``; the default), ``"probabilities"`` (a
            ``Segmenter``; the default) or ``"logits"`` (a ``Segmenter``, before the softmax).
        dynamic_batch: Let B vary (otherwise it is fixed to 1).
        input_size: (H, W) or one side to trace with, each at least ``patch_size + 1``;
            default 230x300. The graph takes any size either way.
        opset: ONNX opset version (18 or newer).
        check_finite: Make the graph refuse images with NaN or infinite pixels.
        verify: Check the file with onnxruntime (needs the ``export`` extra).
        atol: The verification accepts differences up to ``atol + rtol * |output|`` (metres
            for depth).
        rtol: See ``atol``. Depth of tens of metres from the official linear heads (a
            weighted sum over 256 bins) differs by about 1e-4 m between two float32
            implementations, a few units in the last place.

    Returns:
        An :class:`~dinov2_heads.export.OnnxExport` (``dynamic_size`` True, ``input_size`` the
        traced size) with the verification figures.

    Raises:
        TypeError: ``predictor`` is not a ``Depther`` or ``Segmenter``.
        ValueError: Slide mode, flip or scales; a bad output or size; the head's own error.
        RuntimeError: The verification found a larger difference than ``atol``, or
            onnxruntime could not run the graph at a checked size (the message names it).
    """
    chosen = check_exportable(predictor, output)
    check_export_arguments(predictor.frozen, predictor.head, opset, verify)
    patch = predictor.patch_size
    size = _trace_size(input_size, patch)
    graph = DenseExportGraph(predictor, chosen)
    target = Path(path)
    with eval_mode(predictor), eval_mode(graph), quiet_exporter():
        program, least = _trace(graph, size, dynamic_batch, opset)
        checks = add_input_checks(
            program.model.graph, patch_size=patch, size=False, finite=check_finite
        )
        description: dict[str, Any] = {
            "type": type(predictor).__name__,
            "mode": "whole",
            "output": chosen,
            "pad_to_multiple_of": patch,
            "resize": "bilinear, align_corners=False, to the input size",
        }
        if isinstance(predictor, Depther):
            description["clamp"] = [predictor.min_depth, predictor.max_depth]
        program.model.metadata_props.update(
            graph_metadata(
                graph.frozen,
                graph.output_names,
                predictor.head,
                size,
                True,
                dynamic_batch,
                checks,
                predictor=description,
                traced_min_size=list(least),
            )
        )
        save_program(program, target)
    logger.info("exported the whole %s to %s", type(predictor).__name__, target)
    result = OnnxExport(
        path=target,
        input_name=INPUT_NAME,
        output_names=graph.output_names,
        dynamic_batch=dynamic_batch,
        dynamic_size=True,
        input_size=size,
        opset=opset,
    )
    return _verified(result, graph, patch, atol, rtol, least) if verify else result


def verify_dense_onnx(
    path: str | os.PathLike[str], predictor: Depther | Segmenter, images: Tensor
) -> float:
    """Max |onnxruntime - PyTorch| of a file of :func:`export_dense_onnx` on ``images``.

    ``images`` (B, 3, H, W) of any size; PyTorch runs ``predictor`` (its ``logits`` when the
    file returns logits) in eval mode. Needs the ``export`` extra.

    Raises:
        RuntimeError: onnxruntime could not run the file on ``images`` that PyTorch runs.
    """
    output = read_onnx_metadata(path).get("predictor", {}).get("output")
    graph = DenseExportGraph(predictor, check_exportable(predictor, output))
    produced, expected = _outputs(open_session(path), graph, images)
    return float((produced - expected).abs().max())


# ---------------------------------------------------------------------------- helpers


def _trace_size(input_size: int | tuple[int, int] | None, patch: int) -> tuple[int, int]:
    if input_size is None:
        return DEFAULT_SIZE
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise TypeError(f"input_size must be an int or (H, W) ints, got {input_size!r}")
    if min(size) <= patch:
        raise ValueError(
            f"input_size {size[0]}x{size[1]} is too small to trace with: each side must be at "
            f"least {patch + 1} px (two patches once padded); the graph takes smaller images "
            "too, so trace with the default or a typical image size"
        )
    return size[0], size[1]


def _trace(
    graph: DenseExportGraph, size: tuple[int, int], dynamic_batch: bool, opset: int
) -> tuple[Any, tuple[int, int]]:
    """The ``torch.onnx`` program of ``graph`` traced with symbolic height and width, and the
    smallest (H, W) the trace holds for."""
    frozen = graph.frozen
    example = torch.randn(2 if dynamic_batch else 1, 3, *size, device=device_of(frozen))
    example = example.to(frozen.dtype)
    # A head that cannot read these features raises its own clear error here; inside
    # torch.export it would come wrapped in exporter advice.
    with torch.no_grad():
        graph(example)
    patch = frozen.patch_size
    dims: dict[int, Any] = {
        # From patch + 1 pixels: the padded grid then has two patches a side, as torch.export
        # treats sizes 0 and 1 as special. DYNAMIC: a head that needs a larger grid (DPT
        # halves it) raises the least size instead of failing the export.
        2: torch.export.Dim.DYNAMIC(min=patch + 1, max=patch * MAX_GRID),
        3: torch.export.Dim.DYNAMIC(min=patch + 1, max=patch * MAX_GRID),
    }
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch")
    # The padded grid is ceil(H / 14), and facts about it that hold for every H in range (such
    # as "64 * grid does not divide 64") are beyond what torch.export proves about such
    # expressions; deferred, they become checks in the exported program instead of a failure.
    exported = torch.export.export(
        graph,
        (example,),
        dynamic_shapes={INPUT_NAME: dims},
        strict=False,
        prefer_deferred_runtime_asserts_over_guards=True,
    )
    program = torch.onnx.export(
        exported,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(graph.output_names),
        opset_version=opset,
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program, _least_sides(exported)


def _check_shapes(
    size: tuple[int, int], patch: int, dynamic_batch: bool, least: tuple[int, int] = (0, 0)
) -> list[tuple[int, int, int, int]]:
    """The traced size and a second one of another aspect ratio, at least ``least``: on each
    side a padded grid of the other parity and a padding of the other parity (odd after an
    even one, even but not none after an odd one)."""
    batches = [1, 3] if dynamic_batch else [1]
    grid = (-(-size[0] // patch), -(-size[1] // patch))
    fewest = max(2, *(-(-side // patch) for side in least))
    second = []
    for side, cells, smallest in zip(
        size, other_parity_grid(grid, least=fewest), least, strict=True
    ):
        half = patch // 2
        padding = half & ~1 if (-side % patch) % 2 else half | 1  # 6 or 7 px for patch 14
        while patch * cells - padding < smallest:
            cells += 2
        second.append(patch * cells - padding)
    return [(b, 3, h, w) for b in batches for h, w in (size, (second[0], second[1]))]


def _verified(
    result: OnnxExport,
    graph: DenseExportGraph,
    patch: int,
    atol: float,
    rtol: float,
    least: tuple[int, int] = (0, 0),
) -> OnnxExport:
    """``result`` with the largest onnxruntime - PyTorch difference, or a ``RuntimeError``."""
    shapes = _check_shapes(result.input_size, patch, result.dynamic_batch, least)
    session = open_session(result.path)
    worst = 0.0
    failed: list[tuple[int, int, int, int]] = []
    for shape in shapes:
        images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        produced, expected = _outputs(session, graph, images, traced=result.input_size)
        difference = (produced - expected).abs()
        worst = max(worst, float(difference.max()))
        excess = float((difference - rtol * expected.abs()).max())
        if excess > atol and shape[2:] not in [s[2:] for s in failed]:
            failed.append(shape)
    (name,) = graph.output_names
    logger.info("onnxruntime vs PyTorch, max abs diff of %s: %.2e", name, worst)
    if failed:
        raise RuntimeError(
            f"the exported graph differs from PyTorch by up to {worst:.2e} in {name}, more "
            f"than atol={atol:g} + rtol={rtol:g} x |output|, on "
            f"{' and '.join(size_words(shape, patch) for shape in failed)}; "
            f"{size_advice(failed, result.input_size)}"
        )
    return dataclasses.replace(result, max_abs_diff={name: worst}, checked_shapes=shapes)


def _outputs(
    session: Any, graph: DenseExportGraph, images: Tensor, traced: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """(onnxruntime's output, PyTorch's output) for ``images``, both float32 on the CPU.

    ``traced``: the size the graph was traced at, when checking a new export (see
    :func:`~dinov2_heads.export.onnx_runtime.run_checked`).
    """
    frozen = graph.frozen
    with eval_mode(graph), torch.no_grad():
        (expected,) = graph(images.to(device=device_of(frozen), dtype=frozen.dtype))
    (produced,) = run_checked(
        session, graph.output_names, images.to(frozen.dtype), frozen.patch_size, traced
    )
    return torch.from_numpy(produced).float(), expected.cpu().float()


def _least_sides(exported: Any) -> tuple[int, int]:
    """The smallest (H, W) the exported program was traced for (sizes 0 and 1 are special)."""
    name = exported.graph_signature.user_inputs[0]
    node = next(n for n in exported.graph.nodes if n.op == "placeholder" and n.name == name)
    sides = []
    for side in node.meta["val"].shape[2:]:
        if isinstance(side, torch.SymInt):
            sides.append(int(exported.range_constraints[side.node.expr].lower))
        else:
            sides.append(int(side))
    return sides[0], sides[1]
