"""Released DINOv2 depth heads (``dinov2_vits14_nyu_linear4_head.pth``, ...), recognised.

Those files hold ``{"meta": ..., "state_dict": {"decode_head.<key>": tensor}}`` with the keys
of the official hub heads: a linear head only ``conv_depth.weight`` (n_bins, 2 L D, 1, 1) and
``conv_depth.bias`` (L = 1 or 4 blocks, what ``LinearDepthHead(D, layers=L)`` loads), a DPT
head ``reassemble_blocks.*``, ``convs.*``, ``fusion_blocks.*``, ``project.*`` and
``conv_depth.head.*`` (what ``DPTDepthHead(D)`` loads).

One recogniser serves everyone who meets such a file: given where a backbone belongs, the file
is named with the call that loads it; given to ``dinov2-heads depth --head``, the head is built
from the same answer, the backbone's width only settling what the file cannot tell
(:meth:`ReleasedDepthHead.for_backbone`), so the two never disagree on what the file is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath

from torch import Tensor

from dinov2_heads.backbone.config import OFFICIAL_WIDTHS
from dinov2_heads.checkpoints.head_files import RELEASED_PREFIX, HeadFileSummary, count_dtypes

__all__ = ["ReleasedDepthHead", "identify_released_depth_head"]

_ARCH = re.compile(r"vit([sblg])14")
_LINEAR_KIND = re.compile(r"(?:^|_)linear(4?)(?:_|$)")
_LINEAR_KEYS = frozenset({"conv_depth.weight", "conv_depth.bias"})
_DPT_PREFIXES = ("reassemble_blocks.", "convs.", "fusion_blocks.", "project.", "conv_depth.head.")
#: The depth range the hub builds each head with (metres): every linear head 80 m; DPT heads
#: 80 m for KITTI, 10 m for NYU (the default of ``DPTDepthHead``).
_LINEAR_MAX_DEPTH = 80.0
_DPT_MAX_DEPTH = {"kitti": 80.0, "nyu": 10.0}
#: The start of every head's range, the heads' default, which the load call keeps.
_MIN_DEPTH = 0.001
_DATASETS = {"nyu": "NYU Depth V2", "kitti": "KITTI"}


@dataclass(frozen=True)
class ReleasedDepthHead:
    """What a released depth head file holds.

    Attributes:
        head_type: ``"LinearDepthHead"`` or ``"DPTDepthHead"``.
        embed_dim: D of the backbone it reads (``None`` when neither shapes nor name tell).
        layers: Blocks it reads: 1 or 4 for a linear head (``None`` when unknown), 4 for DPT.
        channels: The input channels of ``conv_depth`` (linear), or the width of the fusion
            path (DPT).
        n_bins: The depth bins of a linear head; ``None`` for DPT.
        max_depth: The depth range's end the hub builds the head with, in metres.
        prefix: The prefix its keys carry (``"decode_head."``) or ``""``.
    """

    head_type: str
    embed_dim: int | None
    layers: int | None
    channels: int
    n_bins: int | None
    max_depth: float
    prefix: str

    def description(self) -> str:
        """``"the official linear4 depth head, 4 blocks, D = 384"``."""
        if self.head_type == "DPTDepthHead":
            kind = "DPT"
        else:
            kind = {1: "linear", 4: "linear4"}.get(self.layers or 0, "linear")
        reads = [f"{self.layers} block{'s' if self.layers != 1 else ''}"] if self.layers else []
        reads += [f"D = {self.embed_dim}"] if self.embed_dim is not None else []
        return ", ".join([f"the official {kind} depth head", *reads])

    def load(self) -> str:
        """The Python call that loads the file (``path`` being the file) with nothing missing."""
        arguments = [str(self.embed_dim) if self.embed_dim is not None else "D"]
        if self.head_type == "LinearDepthHead":
            if self.layers != 1:
                arguments.append(f"layers={self.layers if self.layers is not None else 'L'}")
            if self.n_bins != 256:
                arguments.append(f"n_bins={self.n_bins}")
        else:
            if self.channels != 256:
                arguments.append(f"channels={self.channels}")
            arguments.append(f"max_depth={self.max_depth}")
        rename = f', rename={{"{self.prefix}": ""}}' if self.prefix else ""
        call = f"load_partial({self.head_type}({', '.join(arguments)}), path{rename})"
        if self.embed_dim is None or self.layers is None:
            call += (
                f" (D the backbone's width, L its blocks: 1 or 4, with 2 x D x L = {self.channels})"
            )
        return call

    def summary(self, state_dict: Mapping[str, Tensor], source: str) -> HeadFileSummary:
        """The file described like the other released head files.

        Args:
            state_dict: The file's tensors.
            source: The path, or ``"<state dict>"``; ``nyu`` or ``kitti`` in its name gives
                the data set.
        """
        name = PurePath(source).name.lower()
        datasets = [dataset for key, dataset in _DATASETS.items() if key in name]
        return HeadFileSummary(
            source=source,
            head_type=self.head_type,
            task="depth",
            description=self.description(),
            embed_dim=self.embed_dim,
            layers=self.layers,
            num_classes=None,
            dataset=datasets[0] if len(datasets) == 1 else None,
            num_tensors=len(state_dict),
            dtypes=count_dtypes(state_dict),
            load=self.load(),
            n_bins=self.n_bins,
            depth_range=(_MIN_DEPTH, self.max_depth),
        )

    def backbone_file(self) -> str | None:
        """The official backbone file of width D (``dinov2_vits14_pretrain.pth``), if official."""
        letters = {dim: letter for letter, dim in OFFICIAL_WIDTHS.items()}
        letter = letters.get(self.embed_dim) if self.embed_dim is not None else None
        return f"dinov2_vit{letter}14_pretrain.pth" if letter is not None else None

    def for_backbone(self, embed_dim: int, source: str) -> ReleasedDepthHead:
        """This head on a backbone of width ``embed_dim``: D and the blocks settled, or refused.

        The file's own answer stands (its shapes and name, as :func:`identify_released_depth_head`
        read them); the backbone only settles what the file leaves open, a linear head's D and
        blocks when ``2 x D x blocks`` could be either (3072 channels: ViT-S linear4 or ViT-g
        linear) and the name does not say.

        Args:
            embed_dim: D of the backbone the head is to run on.
            source: The file, for the messages.

        Raises:
            ValueError: The head reads another width than ``embed_dim``; the message names
                what the file is and the backbone it needs.
        """
        if self.embed_dim is None and self.channels in (2 * embed_dim, 8 * embed_dim):
            return replace(self, embed_dim=embed_dim, layers=self.channels // (2 * embed_dim))
        if self.embed_dim == embed_dim:
            return self
        backbone = self.backbone_file()
        use = f"the backbone it was trained on{f' ({backbone})' if backbone else ''}"
        what = f"the file is {self.description()}; " if self.embed_dim is not None else ""
        if self.head_type == "LinearDepthHead" and self.channels not in (
            2 * embed_dim,
            8 * embed_dim,
        ):
            raise ValueError(
                f"{source}: conv_depth reads {self.channels} channels, which is neither "
                f"2 x {embed_dim} (a linear head) nor 8 x {embed_dim} (linear4) for this "
                f"backbone's width {embed_dim}; {what}use {use}"
            )
        named = _LINEAR_KIND.search(PurePath(source).name.lower()) is not None
        own = (
            f" (a head of your own for D = {embed_dim} in the released layout: put _linear_ or "
            "_linear4_ in its file name, as the released files have, to say which it is)"
            if self.head_type == "LinearDepthHead" and not named
            else ""
        )
        raise ValueError(
            f"{source} is {self.description()}, not a head for this backbone's width "
            f"D = {embed_dim}; use {use}{own}"
        )


def identify_released_depth_head(
    state_dict: Mapping[str, Tensor], source: str
) -> ReleasedDepthHead | None:
    """The released depth head that ``state_dict`` looks like, or ``None``.

    Args:
        state_dict: The file's tensors, containers already unwrapped (keys may keep the
            ``decode_head.`` prefix).
        source: The file name; ``vit{s,b,l,g}14``, ``linear`` / ``linear4`` and ``kitti`` in it
            settle D, the blocks of a linear head and a DPT head's range where the shapes alone
            cannot (3072 input channels are a ViT-S linear4 or a ViT-g linear head).
    """
    if not state_dict or not all(isinstance(value, Tensor) for value in state_dict.values()):
        return None
    prefix = RELEASED_PREFIX if all(k.startswith(RELEASED_PREFIX) for k in state_dict) else ""
    state = {key.removeprefix(prefix): value for key, value in state_dict.items()}
    name = PurePath(source).name.lower()
    if set(state) == _LINEAR_KEYS:
        weight = state["conv_depth.weight"]
        if weight.ndim != 4 or tuple(weight.shape[2:]) != (1, 1):
            return None
        n_bins, channels = int(weight.shape[0]), int(weight.shape[1])
        embed_dim, layers = _linear_dim_and_layers(channels, name)
        return ReleasedDepthHead(
            "LinearDepthHead", embed_dim, layers, channels, n_bins, _LINEAR_MAX_DEPTH, prefix
        )
    project = state.get("reassemble_blocks.projects.3.conv.weight")
    fusion = state.get("project.conv.weight")
    if (
        all(key.startswith(_DPT_PREFIXES) for key in state)
        and project is not None
        and fusion is not None
        and project.ndim == 4
        and fusion.ndim == 4
    ):
        # The last reassemble projection maps D channels onto D (1x1).
        dataset = "kitti" if "kitti" in name else "nyu"
        return ReleasedDepthHead(
            "DPTDepthHead",
            int(project.shape[1]),
            4,
            int(fusion.shape[0]),
            None,
            _DPT_MAX_DEPTH[dataset],
            prefix,
        )
    return None


def _linear_dim_and_layers(channels: int, name: str) -> tuple[int | None, int | None]:
    """D and the blocks of a linear head reading ``channels`` = 2 x D x blocks."""
    arch, kind = _ARCH.search(name), _LINEAR_KIND.search(name)
    if arch is not None:
        dim = OFFICIAL_WIDTHS[arch.group(1)]
        if channels in (2 * dim, 8 * dim):
            return dim, channels // (2 * dim)
    if kind is not None:
        layers = 4 if kind.group(1) else 1
        if channels % (2 * layers) == 0:
            return channels // (2 * layers), layers
    candidates = [
        (dim, layers)
        for layers in (1, 4)
        for dim in OFFICIAL_WIDTHS.values()
        if 2 * dim * layers == channels
    ]
    if len(candidates) == 1:
        return candidates[0]
    return None, None
