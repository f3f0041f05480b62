"""One batch of the data given to ``extract_features``: images, labels by name, sample ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batch", "batch_length", "slice_batch", "split_batch"]


@dataclass(frozen=True)
class Batch:
    """A batch taken apart.

    Attributes:
        images: (B, 3, H, W): normalised floats, or ``uint8`` pixels 0..255 (from
            ``Preprocess(..., normalize=False)``) that a ``FrozenBackbone`` normalises on its
            device. Either goes to the device as it is, so ``uint8`` crosses as ``uint8``.
        labels: (B, ...) int64 or float32 labels, a dict of such columns by name, or ``None``.
        ids: (B,) int64 sample ids, or ``None`` for positions in the data.
    """

    images: Tensor
    labels: Tensor | dict[str, Tensor] | None
    ids: Tensor | None

    @property
    def size(self) -> int:
        """B."""
        return int(self.images.shape[0])


def split_batch(batch: Any) -> Batch:
    """Images, ``(images, labels)`` or ``(images, labels, ids)`` as a :class:`Batch`.

    Raises:
        TypeError: For anything else, or labels that are not numbers.
        ValueError: For labels or ids whose batch dimension differs from the images'.
    """
    if isinstance(batch, Tensor):
        return Batch(_images(batch), None, None)
    if isinstance(batch, tuple | list) and 1 <= len(batch) <= 3:
        images = _images(batch[0])
        size = images.shape[0]
        labels = _labels(batch[1], size) if len(batch) > 1 else None
        ids = None
        if len(batch) == 3:
            ids = torch.as_tensor(batch[2]).to(torch.int64).reshape(-1).cpu()
            if ids.shape[0] != size:
                raise ValueError(f"got {ids.shape[0]} sample ids for {size} images in a batch")
        return Batch(images, labels, ids)
    raise TypeError(
        "each batch must be images (B, 3, H, W), (images, labels) or (images, labels, ids); "
        f"got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
    )


def _images(value: Any) -> Tensor:
    if not isinstance(value, Tensor) or value.ndim != 4:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(
            f"the images of each batch must be a tensor (B, 3, H, W), got {got}; a Dataset "
            "yields image (3, H, W), (image, label) or (image, label, id) items"
        )
    return value


def _labels(value: Any, size: int) -> Tensor | dict[str, Tensor]:
    if isinstance(value, Mapping):
        return {str(key): _label_tensor(item, size, str(key)) for key, item in value.items()}
    return _label_tensor(value, size, "labels")


def _label_tensor(value: Any, size: int, name: str) -> Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{name}: labels must be ints, int tensors or float tensors, got "
            f"{type(value).__name__} ({error})"
        ) from None
    if tensor.ndim == 0 or tensor.shape[0] != size:
        raise ValueError(
            f"{name}: expected labels with a leading batch dimension of {size}, got shape "
            f"{tuple(tensor.shape)}"
        )
    if tensor.is_complex():
        raise TypeError(f"{name}: complex labels are not supported")
    if tensor.is_floating_point():
        return tensor.to(torch.float32).cpu()
    return tensor.to(torch.int64).cpu()


def batch_length(batch: Any) -> int:
    """The number of samples in a batch, without converting its labels."""
    images = batch if isinstance(batch, Tensor) else batch[0] if batch else None
    if not isinstance(images, Tensor):
        return split_batch(batch).size
    return int(images.shape[0])


def slice_batch(batch: Any, offset: int) -> Any:
    """The samples of a batch from ``offset`` on, in the batch's own structure."""
    if isinstance(batch, Tensor):
        return batch[offset:]
    parts = []
    for item in batch:
        if isinstance(item, Mapping):
            parts.append({key: value[offset:] for key, value in item.items()})
        else:
            parts.append(item[offset:])
    return type(batch)(parts) if isinstance(batch, tuple) else parts
