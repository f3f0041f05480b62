"""Released DINOv2 head files, described: what they are and how to load them.

One :class:`HeadFileSummary` describes each kind of released head file: the segmentation heads
recognised here by their keys, the ImageNet linear heads
(:meth:`~dinov2_heads.checkpoints.released_linear.ReleasedLinearHead.summary`) and the depth
heads (:meth:`~dinov2_heads.checkpoints.released_depth.ReleasedDepthHead.summary`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from torch import Tensor

from dinov2_heads.backbone.config import OFFICIAL_WIDTHS

#: The prefix the released head files put before every key (mmsegmentation's ``decode_head``).
RELEASED_PREFIX = "decode_head."

_SEGMENTATION_KEYS = frozenset(
    {
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "conv_seg.weight",
        "conv_seg.bias",
    }
)
_DATASETS = {150: "ADE20K", 21: "VOC2012"}
_ARCH = re.compile(r"vit([sblg])14")
_KIND = re.compile(r"(?:^|_)(linear|ms)(?:_|$)")


@dataclass(frozen=True)
class HeadFileSummary:
    """A released head file: its type, shape and the call that loads it.

    ``str(summary)`` is a short readable table, ``summary.to_dict()`` plain data.

    Attributes:
        source: The path, or ``"<state dict>"``.
        head_type: The class that loads it: ``"LinearHead"``, ``"LinearSegmentationHead"``,
            ``"LinearDepthHead"`` or ``"DPTDepthHead"``.
        task: ``"classification"``, ``"segmentation"`` or ``"depth"``.
        description: What the official code calls it.
        embed_dim: D of the backbone it was trained on (``None`` when the file cannot tell).
        layers: Blocks it reads (``None`` when the file cannot tell).
        num_classes: K of a classification or segmentation head; ``None`` for depth.
        dataset: The data set it was trained on, as its K or file name tells
            (``"ImageNet-1k"``, ``"ADE20K"``, ``"VOC2012"``, ``"NYU Depth V2"``, ``"KITTI"``),
            or ``None``.
        num_tensors: Tensors in the file.
        dtypes: Tensor count per dtype.
        load: The Python call that loads it (``path`` being the file).
        n_bins: The depth bins of a linear depth head; ``None`` otherwise.
        depth_range: ``(min_depth, max_depth)`` in metres that the load call builds a depth
            head with; ``None`` for other heads.
    """

    source: str
    head_type: str
    task: str
    description: str
    embed_dim: int | None
    layers: int | None
    num_classes: int | None
    dataset: str | None
    num_tensors: int
    dtypes: dict[str, int]
    load: str
    n_bins: int | None = None
    depth_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return {
            "source": self.source,
            "head_type": self.head_type,
            "task": self.task,
            "description": self.description,
            "embed_dim": self.embed_dim,
            "layers": self.layers,
            "num_classes": self.num_classes,
            "n_bins": self.n_bins,
            "depth_range": list(self.depth_range) if self.depth_range is not None else None,
            "dataset": self.dataset,
            "num_tensors": self.num_tensors,
            "dtypes": dict(self.dtypes),
            "load": self.load,
        }

    def __str__(self) -> str:
        dataset = f" ({self.dataset})" if self.dataset else ""
        rows = [
            ("checkpoint", self.source),
            ("head", f"{self.head_type}: {self.description}"),
            ("task", self.task),
            ("embed_dim", str(self.embed_dim) if self.embed_dim is not None else "unknown"),
            ("layers", str(self.layers) if self.layers is not None else "unknown"),
        ]
        if self.num_classes is not None:
            rows.append(("classes", f"{self.num_classes}{dataset}"))
        if self.depth_range is not None:
            low, high = self.depth_range
            bins = f"{self.n_bins} bins" if self.n_bins is not None else "regression"
            rows.append(("depth", f"{bins}, {low:g} to {high:g} m{dataset}"))
        rows += [
            ("tensors", str(self.num_tensors)),
            ("dtype", ", ".join(f"{k} ({v})" for k, v in self.dtypes.items())),
            ("load with", self.load),
        ]
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def count_dtypes(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Tensor count per dtype, most common first: ``{"float16": 7}``."""
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in state_dict.values())
    return dict(dtypes.most_common())


def identify_head_file(state_dict: Mapping[str, Tensor], source: str) -> HeadFileSummary | None:
    """The summary of a released segmentation head file, or ``None`` for anything else.

    Args:
        state_dict: The file's tensors, containers already unwrapped (keys may keep the
            ``decode_head.`` prefix).
        source: The file name; ``vit{s,b,l,g}14`` and ``linear`` / ``ms`` in it settle D and
            the layer count where the shapes alone cannot (1536 channels are a ViT-g "linear"
            or a ViT-S "ms" head).
    """
    prefix = RELEASED_PREFIX if all(k.startswith(RELEASED_PREFIX) for k in state_dict) else ""
    keys = {key.removeprefix(prefix) for key in state_dict}
    if keys != _SEGMENTATION_KEYS:
        return None
    weight = state_dict[prefix + "conv_seg.weight"]
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        return None
    num_classes, channels = int(weight.shape[0]), int(weight.shape[1])
    embed_dim, layers = _dim_and_layers(channels, PurePath(source).name.lower())
    arguments = f"{embed_dim if embed_dim is not None else 'D'}, {num_classes}"
    if layers is not None and layers != 1:
        arguments += f", layers={layers}"
    rename = f', rename={{"{prefix}": ""}}' if prefix else ""
    kind = {1: "'linear' (last block)", 4: "'ms' (last 4 blocks)"}.get(layers or 0, "")
    return HeadFileSummary(
        source=source,
        head_type="LinearSegmentationHead",
        task="segmentation",
        description=f"the official segmentation BNHead {kind}".rstrip(),
        embed_dim=embed_dim,
        layers=layers,
        num_classes=num_classes,
        dataset=_DATASETS.get(num_classes),
        num_tensors=len(state_dict),
        dtypes=count_dtypes(state_dict),
        load=f"load_partial(LinearSegmentationHead({arguments}), path{rename})",
    )


def _dim_and_layers(channels: int, name: str) -> tuple[int | None, int | None]:
    arch, kind = _ARCH.search(name), _KIND.search(name)
    if arch is not None:
        dim = OFFICIAL_WIDTHS[arch.group(1)]
        if channels % dim == 0:
            return dim, channels // dim
    if kind is not None:
        layers = 1 if kind.group(1) == "linear" else 4
        if channels % layers == 0:
            return channels // layers, layers
    candidates = [
        (dim, layers)
        for layers in (1, 4)
        for dim in OFFICIAL_WIDTHS.values()
        if dim * layers == channels
    ]
    if len(candidates) == 1:
        return candidates[0]
    return None, None
