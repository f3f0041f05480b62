"""Finding tensors that hold NaN or infinity, so loaders can name them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


def nonfinite_names(
    state_dict: Mapping[str, Tensor], names: Iterable[str] | None = None
) -> list[str]:
    """Names of floating-point tensors that contain NaN or infinity, in order.

    Tensors on the meta device hold no values and are never reported.

    Args:
        state_dict: Names to tensors.
        names: Check only these names (all when ``None``).
    """
    found = []
    for name in state_dict if names is None else names:
        tensor = state_dict[name]
        if tensor.is_meta or not tensor.is_floating_point():
            continue
        if not bool(torch.isfinite(tensor).all()):
            found.append(name)
    return found
