"""What each output of an :func:`~dinov2_heads.export.export_onnx` graph holds, and its shape.

A classifier gives logits (B, K); a segmentation head logits (B, K, h, w) on the patch grid
(h = H/14, w = W/14); a depth head metres (B, 1, ...) on a grid finer than the patches
(4h x 4w for ``LinearDepthHead``, about 16h x 16w for ``DPTDepthHead``: exactly what the
traced graph declares). The task of a head comes from the head registry
(:func:`~dinov2_heads.training.dense_task`), the shape from the traced graph itself, so a new
head type needs no line here.

The exporter names the graph's output dimensions after its own symbols (``s52``), unrelated to
the input's ``14*grid_h``; :func:`describe_outputs` renames them after the input's
(``batch``, ``grid_h``, ``grid_w``), so the file's declared shapes read
``(batch, 1, 4*grid_h, 4*grid_w)``, and gives each output a doc string.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from dinov2_heads.heads import registered_type_name
from dinov2_heads.training.dense_tasks import dense_task

logger = logging.getLogger(__name__)

#: What each task's head returns.
QUANTITIES: dict[str, str] = {
    "classification": "logits",
    "segmentation": "logits",
    "depth": "depth in metres",
}
#: The graph input's dimension names (``export_onnx``'s dynamic shapes) and their letters.
INPUT_DIMS: dict[int, str] = {0: "batch", 2: "grid_h", 3: "grid_w"}
LETTERS: dict[str, str] = {"batch": "B", "grid_h": "h", "grid_w": "w"}


@dataclass(frozen=True)
class OutputLayout:
    """One output of an exported graph.

    Attributes:
        name: The output's name in the graph.
        task: ``"classification"`` (a registered head that is not dense), ``"segmentation"``
            or ``"depth"``; ``None`` for a module outside the head registry.
        quantity: ``"logits"``, ``"depth in metres"``, or ``"output"`` when the task is unknown.
        shape: The dimensions: ``"B"`` the batch, ``"K"`` the classes, ``h`` and ``w`` the
            patch grid and expressions of them (``"4h"``), numbers where fixed.
        num_classes: K, or ``None``.
        patch_size: The backbone's patch size (h = H / patch_size).
    """

    name: str
    task: str | None
    quantity: str
    shape: tuple[str | int, ...]
    num_classes: int | None
    patch_size: int

    def describe(self) -> str:
        """``logits (B, K, h, w), K = 5, h = H/14, w = W/14``: the quantity and its shape."""
        dims = [str(dim) for dim in self.shape]
        notes = [f"K = {self.num_classes}"] if "K" in dims else []
        if any(re.search(r"\b\d*[hw]\b", dim) for dim in dims):
            notes.append(f"h = H/{self.patch_size}, w = W/{self.patch_size}")
        return f"{self.quantity} ({', '.join(dims)})" + "".join(f", {note}" for note in notes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for the file's metadata."""
        return {
            "task": self.task,
            "quantity": self.quantity,
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "description": self.describe(),
        }


def single_output_name(head: nn.Module) -> str:
    """The output name of a graph of one head (not a ``MultiHead``): ``depth`` or ``logits``."""
    return "depth" if head_task(head) == "depth" else "logits"


def head_task(head: nn.Module) -> str | None:
    """``"segmentation"`` or ``"depth"`` (:data:`~dinov2_heads.training.DENSE_TASKS`),
    ``"classification"`` for another registered head, ``None`` for a module of your own."""
    task = dense_task(head)
    if task is not None:
        return task
    return "classification" if registered_type_name(head) is not None else None


def describe_outputs(
    program: Any,
    heads: Mapping[str, nn.Module],
    patch_size: int,
) -> dict[str, OutputLayout]:
    """Each graph output's layout, in order; renames the outputs' dimensions and documents them.

    Args:
        program: The ``torch.onnx`` program of an ``ExportGraph`` (its ``model`` is changed in
            place: output dimension names and doc strings).
        heads: The head behind each output, by output name, in the graph's order.
        patch_size: The backbone's patch size.
    """
    names = _symbol_names(program)
    layouts = {}
    for value, (name, head) in zip(program.model.graph.outputs, heads.items(), strict=True):
        dims = [_renamed(dim, names) for dim in _dims(value)]
        if names:
            value.shape = _ir_shape(dims)
        task = head_task(head)
        classes = getattr(head, "num_classes", None)
        num_classes = classes if isinstance(classes, int) and task is not None else None
        shape = tuple(_letters(dim) for dim in dims)
        if num_classes is not None and task in ("classification", "segmentation"):
            shape = tuple(
                "K" if i == 1 and dim == num_classes else dim for i, dim in enumerate(shape)
            )
        layout = OutputLayout(
            name=name,
            task=task,
            quantity=QUANTITIES.get(task or "", "output"),
            shape=shape,
            num_classes=num_classes,
            patch_size=patch_size,
        )
        value.doc_string = layout.describe()
        layouts[name] = layout
    return layouts


def _symbol_names(program: Any) -> dict[str, str]:
    """The exporter's symbol of each dynamic input dimension -> its name (``s52`` -> ``grid_h``).

    Read from the exported program's input, whose sides are ``14*s52`` and ``14*s80``; empty
    when the program does not say (the output dimensions then keep the exporter's names).
    """
    try:
        exported = program.exported_program
        (image,) = (
            node
            for node in exported.graph.nodes
            if node.op == "placeholder" and node.name in exported.graph_signature.user_inputs
        )
        shape = image.meta["val"].shape
    except (AttributeError, KeyError, ValueError):
        logger.debug("the exported program does not name the input's symbols", exc_info=True)
        return {}
    names = {}
    for index, name in INPUT_DIMS.items():
        symbols = re.findall(r"[A-Za-z_]\w*", str(shape[index]))
        if len(symbols) == 1:
            names[symbols[0]] = name
    return names


def _dims(value: Any) -> list[str | int]:
    shape = value.shape
    if shape is None:
        return []
    return [dim if isinstance(dim, int) else str(getattr(dim, "value", dim)) for dim in shape.dims]


def _renamed(dim: str | int, names: Mapping[str, str]) -> str | int:
    if isinstance(dim, int) or not names:
        return dim
    pattern = r"\b(" + "|".join(map(re.escape, names)) + r")\b"
    return re.sub(pattern, lambda match: names[match.group(1)], dim)


def _letters(dim: str | int) -> str | int:
    """``4*grid_h`` -> ``4h``: the design's letters for the input's dimension names."""
    if isinstance(dim, int):
        return dim
    pattern = r"\b(" + "|".join(LETTERS) + r")\b"
    text = re.sub(pattern, lambda match: LETTERS[match.group(1)], dim)
    return _without_double_parentheses(re.sub(r"\b(\d+)\*([hw])\b", r"\1\2", text))


def _without_double_parentheses(text: str) -> str:
    """``32*(((h - 1)//2)) + 32`` -> ``32*((h - 1)//2) + 32``: one pair around a pair goes."""
    opened: list[int] = []
    pairs: dict[int, int] = {}
    for index, char in enumerate(text):
        if char == "(":
            opened.append(index)
        elif char == ")" and opened:
            pairs[opened.pop()] = index
    drop = {
        position
        for start, end in pairs.items()
        if pairs.get(start + 1) == end - 1
        for position in (start, end)
    }
    return "".join(char for index, char in enumerate(text) if index not in drop)


def _ir_shape(dims: Sequence[str | int]) -> Any:
    from onnxscript import ir

    return ir.Shape(list(dims))
