"""Released DINOv2 ImageNet linear heads (``dinov2_vits14_linear_head.pth``, ...), recognised.

Those files hold a bare ``weight`` (K, n D) and ``bias`` (K,) of an ``nn.Linear`` reading the
class token and the mean patch token of the last block (n = 2), or the class tokens of the last
four blocks and that mean (n = 5): what ``LinearHead(D, K, n_blocks=1 or 4)`` loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dinov2_heads.backbone.config import OFFICIAL_WIDTHS
from dinov2_heads.checkpoints.head_files import HeadFileSummary, count_dtypes

__all__ = ["ReleasedLinearHead", "identify_released_linear_head"]

#: The official backbones' size letters in the file names, by their widths.
_LETTERS = {dim: letter for letter, dim in OFFICIAL_WIDTHS.items()}


@dataclass(frozen=True)
class ReleasedLinearHead:
    """What a released linear head file holds.

    Attributes:
        embed_dim: D of the backbone it reads.
        num_classes: K.
        n_blocks: The blocks whose class tokens it reads (1 or 4).
        in_features: The weight's width, ``(n_blocks + 1) * embed_dim``.
    """

    embed_dim: int
    num_classes: int
    n_blocks: int
    in_features: int

    def contents(self) -> str:
        """``"a bare weight 1000x768 and bias, like a released DINOv2 linear head"``."""
        return (
            f"a bare weight {self.num_classes}x{self.in_features} and bias, like a released "
            "DINOv2 linear head"
        )

    def load(self) -> str:
        """The Python line that loads the file (``path`` being the file) into a
        :class:`~dinov2_heads.heads.LinearHead`, strictly."""
        return (
            f"head = LinearHead({self.embed_dim}, {self.num_classes}, n_blocks={self.n_blocks}); "
            "head.load_state_dict(torch.load(path))"
        )

    def frozen_backbone(self) -> str:
        """The backbone wrapper the head reads from: ``FrozenBackbone(..., n_last_blocks=4)``."""
        return f"FrozenBackbone(...{'' if self.n_blocks == 1 else ', n_last_blocks=4'})"

    def recipe(self) -> str:
        """The Python lines that load the file into a :class:`~dinov2_heads.heads.LinearHead`."""
        return f"{self.load()} (with {self.frozen_backbone()})"

    def summary(self, state_dict: Mapping[str, Tensor], source: str) -> HeadFileSummary:
        """The file described like the other released head files.

        Args:
            state_dict: The file's tensors (``weight`` and ``bias``).
            source: The path, or ``"<state dict>"``.
        """
        reads = (
            "the class token and mean patch token of the last block"
            if self.n_blocks == 1
            else f"the class tokens of the last {self.n_blocks} blocks and the mean patch token"
        )
        return HeadFileSummary(
            source=source,
            head_type="LinearHead",
            task="classification",
            description=(
                f"the official linear classifier on {reads}, with {self.frozen_backbone()}"
            ),
            embed_dim=self.embed_dim,
            layers=self.n_blocks,
            num_classes=self.num_classes,
            dataset="ImageNet-1k" if self.num_classes == 1000 else None,
            num_tensors=len(state_dict),
            dtypes=count_dtypes(state_dict),
            load=self.load(),
        )

    def backbone_files(self) -> str:
        """The official backbone files of width D: ``dinov2_vits14_pretrain.pth`` or its _reg4."""
        name = f"dinov2_vit{_LETTERS[self.embed_dim]}14"
        return f"{name}_pretrain.pth or {name}_reg4_pretrain.pth"


def identify_released_linear_head(content: Any) -> ReleasedLinearHead | None:
    """The released linear head that ``content`` looks like, or ``None``.

    Args:
        content: What a file holds (or a state dict): only ``{"weight", "bias"}`` with a 2-D
            weight as wide as 2 or 5 official widths counts.
    """
    if not isinstance(content, Mapping) or set(content) != {"weight", "bias"}:
        return None
    weight, bias = content["weight"], content["bias"]
    if not isinstance(weight, Tensor) or not isinstance(bias, Tensor) or weight.ndim != 2:
        return None
    classes, width = (int(size) for size in weight.shape)
    for dim in _LETTERS:
        for parts, blocks in ((2, 1), (5, 4)):
            if width == parts * dim:
                return ReleasedLinearHead(dim, classes, blocks, width)
    return None
