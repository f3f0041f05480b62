"""ONNX export: one graph from images (B, 3, H, W) to the outputs of every head."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dinov2_heads.atomic import atomic_path
from dinov2_heads.dense import Depther, Segmenter
from dinov2_heads.export.heads_checkpoint import head_specs
from dinov2_heads.export.onnx_input_checks import add_input_checks
from dinov2_heads.export.output_layout import OutputLayout, describe_outputs, single_output_name
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.fingerprint import weights_fingerprint
from dinov2_heads.heads import MultiHead

logger = logging.getLogger(__name__)

#: Name of the graph input.
INPUT_NAME = "images"
#: Name of the output of a single classifier or segmentation head (a :class:`MultiHead` names
#: each output after its head; a single depth head's output is ``depth``).
SINGLE_OUTPUT = "logits"
#: Default ONNX opset: 18 is read by onnxruntime >= 1.14 and current TensorRT.
DEFAULT_OPSET = 18
#: Largest grid side the dynamic graph declares (14,336 px for patch size 14).
MAX_GRID = 1024
#: How to install what ONNX export needs, published or from a checkout of the repository.
INSTALL_HINT = "pip install 'dinov2-heads[export]', or from a checkout: pip install -e '.[export]'"


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
    _check_arguments(frozen, heads, opset, verify)
    patch = frozen.patch_size
    dynamic, size = _plan_size(heads, patch, dynamic_size, input_size)
    graph = ExportGraph(frozen, heads)
    target = Path(path)
    with _eval_mode(heads), _quiet_exporter():
        program = _trace(graph, size, dynamic_batch, dynamic, opset)
        layouts = describe_outputs(program, graph.named_heads, patch)
        checks = add_input_checks(
            program.model.graph, patch_size=patch, size=dynamic, finite=check_finite
        )
        program.model.metadata_props.update(
            _metadata(
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
        _save_atomically(program, target)
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


def _check_arguments(frozen: object, heads: nn.Module, opset: int, verify: bool) -> None:
    _require("onnxscript")
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
    example = torch.randn(2 if dynamic_batch else 1, 3, *size, device=_device_of(frozen))
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
    session = _session(result.path)
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
            f"{' and '.join(_size_words(shape, patch) for shape in failed)}; "
            f"{_size_advice(failed, result.input_size)}"
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
    return _compare(_session(path), ExportGraph(frozen, heads), images)


def _compare(
    session: Any, graph: ExportGraph, images: Tensor, traced: tuple[int, int] | None = None
) -> dict[str, float]:
    frozen = graph.frozen
    with _eval_mode(graph), torch.no_grad():
        expected = graph(images.to(device=_device_of(frozen), dtype=frozen.dtype))
    produced = _run_checked(
        session, graph.output_names, images.to(frozen.dtype), frozen.patch_size, traced
    )
    diffs = {}
    for name, got, want in zip(graph.output_names, produced, expected, strict=True):
        diffs[name] = float((torch.from_numpy(got).float() - want.cpu().float()).abs().max())
    return diffs


def _run_checked(
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
            _size_advice([shape], traced)
            if traced is not None
            else "check that the file was exported from this model, for this batch size"
        )
        raise RuntimeError(
            f"onnxruntime could not run the exported graph on {_size_words(shape, patch)}, "
            f"which PyTorch runs ({str(error).strip()}); {advice}"
        ) from error


def _size_words(shape: Sequence[int], patch: int) -> str:
    """``"images of 42x56 (a 3x4 patch grid)"`` for (B, 3, 42, 56), for messages; the grid of
    sides that are not multiples of ``patch`` is the padded one."""
    height, width = shape[-2], shape[-1]
    return f"images of {height}x{width} (a {-(-height // patch)}x{-(-width // patch)} patch grid)"


def _size_advice(failed: Sequence[Sequence[int]], traced: tuple[int, int] | None) -> str:
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


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``dinov2_heads.*`` metadata of a file written by :func:`export_onnx`, JSON decoded.

    Raises:
        FileNotFoundError: Nothing is at ``path``.
        ValueError: The file is not an ONNX model, or not one :func:`export_onnx` wrote.
    """
    onnx = _require("onnx")
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


# ---------------------------------------------------------------------------- helpers


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs {module}, which is not installed here: {INSTALL_HINT}"
        ) from error


def _session(path: str | os.PathLike[str]) -> Any:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    # Fatal only: a failed run's error reaches the caller as the exception it raises.
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _device_of(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


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
        grid_h, grid_w = _other_parity_grid((size[0] // patch, size[1] // patch), least=2)
        sizes.append((grid_h * patch, grid_w * patch))
    return [(b, 3, h, w) for b in batches for h, w in sizes]


def _other_parity_grid(grid: tuple[int, int], *, least: int = 2) -> tuple[int, int]:
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


def _metadata(
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


def _save_atomically(program: Any, target: Path) -> None:
    # The weights go in the .onnx file unless the model is over 2 GB; then torch writes a
    # "<name>.data" file next to it, named after the destination, so the temporary name is
    # only used for the small .onnx file and the data file keeps its final name.
    with atomic_path(target) as temporary:
        program.save(str(temporary))
        data = temporary.with_name(temporary.name + ".data")
        if data.exists():
            os.replace(data, target.with_name(target.name + ".data"))
            _rewrite_external_location(temporary, target.name + ".data")


def _rewrite_external_location(model_path: Path, location: str) -> None:
    onnx = _require("onnx")
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(model_path))


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = {child: child.training for child in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for child, training in modes.items():
            child.training = training


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
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
