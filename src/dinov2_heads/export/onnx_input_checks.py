"""Checks an exported graph runs on its input images before the backbone sees them.

ONNX has no assertion operator, so each check is a ``Reshape`` of the images to the shape they
would have if they passed: an identity for good images, and a runtime error for bad ones that
every ONNX runtime raises, naming the node. onnxruntime says, for example::

    Non-zero status code returned while running Reshape node.
    Name:'refuse_images_whose_height_or_width_is_not_a_multiple_of_14' ...
    Input shape:{1,3,125,250}, requested shape:{1,3,112,238}

The checks are added to the exported graph, after ``torch.export`` and its optimiser, so no
rewrite can fold them away.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Node names, which the runtime's error message quotes.
SIZE_CHECK = "refuse_images_whose_height_or_width_is_not_a_multiple_of_{patch}"
FINITE_CHECK = "refuse_images_with_nan_or_infinite_pixels"


def add_input_checks(graph: Any, *, patch_size: int, size: bool, finite: bool) -> list[str]:
    """Make ``graph`` (an ``onnxscript.ir`` graph with one image input) refuse bad images.

    Args:
        graph: The exported graph, changed in place.
        patch_size: The backbone's patch size.
        size: Refuse (B, 3, H, W) with H or W not a multiple of ``patch_size`` (the backbone's
            patch embedding would drop the pixels past the last whole patch), or under one patch.
        finite: Refuse images with any NaN or infinite value (they would give NaN outputs).
            It costs one subtraction and one sum over the pixels.

    Returns:
        The names of the check nodes added, in order.
    """
    from onnxscript import ir

    images = graph.inputs[0]
    uses = list(images.uses())
    nodes: list[Any] = []

    def add(op_type: str, *inputs: Any, name: str | None = None, **attributes: Any) -> Any:
        node = ir.node(op_type, list(inputs), attributes=attributes, name=name)
        nodes.append(node)
        return node.outputs[0]

    def constant(values: list[int]) -> Any:
        return add("Constant", value=ir.tensor(np.array(values, dtype=np.int64)))

    checked = images
    added = []
    if size:
        # (B, C, H, W) -> (B, C, H // p * p, W // p * p): the same shape only for whole patches.
        patch = constant([patch_size, patch_size])
        sides = add("Shape", images, start=2, end=4)
        whole = add("Mul", add("Div", sides, patch), patch)
        target = add("Concat", add("Shape", images, start=0, end=2), whole, axis=0)
        added.append(SIZE_CHECK.format(patch=patch_size))
        checked = add("Reshape", checked, target, name=added[-1], allowzero=1)
    if finite:
        # x - x is 0 for every finite value and NaN for NaN and +-inf, so the sum is 0 exactly
        # when every pixel is finite; the batch becomes 0 (an impossible shape) otherwise.
        total = add("ReduceSum", add("Sub", images, images), keepdims=0)
        zero = add("CastLike", constant([0]), images)
        is_finite = add("Cast", add("Equal", total, zero), to=ir.DataType.INT64)
        batch = add("Mul", add("Shape", images, start=0, end=1), is_finite)
        target = add("Concat", batch, add("Shape", images, start=1), axis=0)
        added.append(FINITE_CHECK)
        checked = add("Reshape", checked, target, name=added[-1], allowzero=1)
    if not nodes:
        return []
    checked.name = "checked_images"
    for node, index in uses:
        node.replace_input_with(index, checked)
    graph.insert_before(graph.node(0), nodes)
    return added
