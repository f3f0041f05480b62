"""``Depther``: a frozen backbone and a depth head run as the official depth evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from dinov2_heads.dense.inference import InferenceSettings, dense_inference, resize
from dinov2_heads.dense.padding import center_pad
from dinov2_heads.dense.wrapping import dense_images, frozen_for


class Depther(nn.Module):
    """Depth in metres (B, 1, H, W) for images of any size, as the official hub computes it.

    Equal (to 1e-5) to the hub's ``DepthEncoderDecoder`` with its ``CenterPadding`` hook:
    every pass centre-pads its input to a multiple of the patch size, runs the backbone and
    the head, clamps the depth to the head's ``[min_depth, max_depth]`` and resizes it
    bilinearly (``align_corners=False``) to the unpadded input size. ``mode="slide"`` runs
    crops of ``crop_size`` every ``stride`` (the official grid, each crop padded, clamped and
    resized as a whole image; the crops go through the backbone in batches) and averages the
    depth where crops overlap. ``flip=True`` averages with the depth of the mirrored image,
    mirrored back, as the official test-time flip. The test-time loop is
    :func:`~dinov2_heads.dense.dense_inference`, shared with the segmentation predictor.
    Images are normalised floats or ``uint8`` pixels 0..255; pixels are normalised first, on
    the backbone's device, with the ``FrozenBackbone``'s ``mean`` and ``std``, so a
    ``DataLoader`` hands over a quarter of the bytes and the output is the same.

    Args:
        backbone: A :class:`~dinov2_heads.DinoVisionTransformer` (or the official model),
            wrapped in a ``FrozenBackbone`` that extracts the blocks the head reads, or a
            :class:`~dinov2_heads.features.FrozenBackbone` that already extracts them.
        head: A depth head: ``Features -> depth (B, 1, h', w')`` with ``min_depth`` and
            ``max_depth`` attributes, such as :class:`~dinov2_heads.heads.LinearDepthHead`
            or :class:`~dinov2_heads.heads.DPTDepthHead`.
        mode: ``"whole"`` or ``"slide"``.
        crop_size: Sliding-window (height, width) or one int (``slide`` only).
        stride: Sliding-window step (``slide`` only).
        flip: Average with the horizontal mirror.
        crops_per_call: Windows per backbone call (``None``: all; ``1``: the official loop).

    Example:
        >>> from dinov2_heads import create_backbone
        >>> from dinov2_heads.heads import LinearDepthHead
        >>> backbone = create_backbone("dinov2_vits14", depth=4)
        >>> depther = Depther(backbone, LinearDepthHead(384, layers=4)).eval()
        >>> depther(torch.randn(1, 3, 50, 70)).shape
        torch.Size([1, 1, 50, 70])
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        mode: Literal["whole", "slide"] = "whole",
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        flip: bool = False,
        crops_per_call: int | None = None,
    ) -> None:
        super().__init__()
        self.min_depth, self.max_depth = _depth_range(head)
        self.settings = InferenceSettings(
            mode=mode,
            crop_size=crop_size,  # type: ignore[arg-type]  # normalised by the settings
            stride=stride,  # type: ignore[arg-type]
            flip=flip,
            crops_per_call=crops_per_call,
        )
        self.frozen = frozen_for(backbone, head)
        self.head = head

    @property
    def patch_size(self) -> int:
        """P, the multiple each pass pads to."""
        return self.frozen.patch_size

    def depth(self, images: Tensor) -> Tensor:
        """One pass without test-time averaging: depth (B, 1, H, W) at the input size.

        Pads (B, 3, H, W) to multiples of P, runs the backbone and the head, clamps to the
        head's depth range and resizes to H x W: the official ``encode_decode``. Takes what
        :meth:`forward` takes.
        """
        images = dense_images(images, self.frozen, type(self).__name__)
        depth = self.head(self.frozen(center_pad(images, self.patch_size)))
        if not isinstance(depth, Tensor) or depth.ndim != 4 or depth.shape[1] != 1:
            shape = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
            raise ValueError(
                f"the depth head must return depth maps (B, 1, h, w), got {shape}; use a "
                "depth head such as LinearDepthHead or DPTDepthHead"
            )
        depth = depth.clamp(min=self.min_depth, max=self.max_depth)
        return resize(depth, (images.shape[-2], images.shape[-1]))

    def forward(self, images: Tensor) -> Tensor:
        """Depth in metres (B, 1, H, W) of images (B, 3, H, W) of any size.

        Args:
            images: Normalised float images, or ``uint8`` pixels 0..255, which are moved to
                the backbone's device and normalised there with the ``FrozenBackbone``'s
                ``mean`` and ``std`` (ImageNet's unless it was built with others), in float32,
                before any padding, flip or crop: the depth is that of the normalised images
                (bit for bit on the CPU). Other integer images are refused with a
                ``TypeError``.
        """
        images = dense_images(images, self.frozen, type(self).__name__)
        return dense_inference(self.depth, images, self.settings)

    def extra_repr(self) -> str:
        s = self.settings
        window = f", crop_size={s.crop_size}, stride={s.stride}" if s.mode == "slide" else ""
        return f"mode={s.mode!r}{window}, flip={s.flip}"


def _depth_range(head: nn.Module) -> tuple[float, float]:
    low, high = getattr(head, "min_depth", None), getattr(head, "max_depth", None)
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        raise TypeError(
            f"Depther needs a depth head with min_depth and max_depth (metres), "
            f"{type(head).__name__} has {low!r} and {high!r}; use LinearDepthHead or "
            "DPTDepthHead, or give your head those attributes"
        )
    return float(low), float(high)
