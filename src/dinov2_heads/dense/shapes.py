"""Size comparisons that stay true while ``torch.export`` traces with symbolic sizes.

Eager code compares sizes as ints. Under ``torch.export`` (and so ONNX export) the sides of an
image of dynamic size are ``torch.SymInt``: a plain ``==`` on them would make the export
specialise on the traced size or fail. :func:`known_equal` answers True only when the sizes
are equal for every size the graph may see, so a step skipped for equal sizes in PyTorch is
kept in the graph whenever it may be needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def known_equal(first: Sequence[int], second: Sequence[int]) -> bool:
    """Whether two sizes are equal: plain ``==`` for ints, provably for symbolic ones."""
    if len(first) != len(second):
        return False
    if not any(isinstance(side, torch.SymInt) for side in (*first, *second)):
        return tuple(first) == tuple(second)
    # Imported only under tracing: the module costs half a second to import.
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return all(statically_known_true(a == b) for a, b in zip(first, second, strict=True))
