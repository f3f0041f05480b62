"""``Segmenter``: a frozen backbone and a segmentation head run as the official evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from dinov2_heads.dense.inference import InferenceSettings, dense_inference, resize
from dinov2_heads.dense.padding import center_pad
from dinov2_heads.dense.presets import get_preset
from dinov2_heads.dense.wrapping import dense_images, frozen_for


def _softmax(logits: Tensor) -> Tensor:
    return logits.softmax(dim=1)


class Segmenter(nn.Module):
    """Class probabilities (B, K, H, W) for images of any size, as mmsegmentation 0.x computes.

    Equal (to 1e-5) to mmsegmentation's ``EncoderDecoder`` with the official notebook's backbone
    hook: every pass centre-pads its input to a multiple of the patch size, runs the backbone
    and the head, and resizes the logits (B, K, h, w) bilinearly to the unpadded input size.
    ``mode="slide"`` runs crops of ``crop_size`` every ``stride`` (mmsegmentation's grid; the
    crops go through the backbone in batches) and averages the logits where crops overlap.
    The softmax of each view is averaged over ``scales`` and, with ``flip``, the mirror.
    Images are normalised floats or ``uint8`` pixels 0..255; pixels are normalised first, on
    the backbone's device, with the ``FrozenBackbone``'s ``mean`` and ``std``, so a
    ``DataLoader`` hands over a quarter of the bytes and the output is the same.

    Args:
        backbone: A :class:`~dinov2_heads.DinoVisionTransformer` (or the official model),
            wrapped in a ``FrozenBackbone`` that extracts the blocks the head reads, or a
            :class:`~dinov2_heads.features.FrozenBackbone` that already extracts them.
        head: A segmentation head: ``Features -> logits (B, K, h, w)``, such as
            :class:`~dinov2_heads.heads.LinearSegmentationHead`.
        mode: ``"whole"`` or ``"slide"``.
        crop_size: Sliding-window size (``slide`` only).
        stride: Sliding-window step (``slide`` only).
        flip: Average with the horizontal mirror.
        scales: Resize ratios to average over.
        crops_per_call: Windows per backbone call (``None``: all; ``1``: the official loop).

    Example:
        >>> from dinov2_heads import create_backbone
        >>> from dinov2_heads.heads import LinearSegmentationHead
        >>> backbone = create_backbone("dinov2_vits14", depth=2)
        >>> segmenter = Segmenter(backbone, LinearSegmentationHead(384, 21)).eval()
        >>> segmenter(torch.randn(1, 3, 50, 70)).shape
        torch.Size([1, 21, 50, 70])
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
        scales: Sequence[float] = (1.0,),
        crops_per_call: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module, got {type(head).__name__}")
        self.settings = InferenceSettings(
            mode=mode,
            crop_size=crop_size,  # type: ignore[arg-type]  # normalised by the settings
            stride=stride,  # type: ignore[arg-type]
            flip=flip,
            scales=tuple(scales),
            crops_per_call=crops_per_call,
        )
        self.frozen = frozen_for(backbone, head)
        self.head = head

    @classmethod
    def from_preset(
        cls, backbone: nn.Module, head: nn.Module, preset: str, **overrides: Any
    ) -> Segmenter:
        """A ``Segmenter`` with the test settings of a released head family.

        Args:
            backbone: As for the constructor.
            head: As for the constructor.
            preset: A key of :data:`~dinov2_heads.dense.SEGMENTATION_PRESETS`, such as
                ``"ade20k_linear"`` or ``"voc2012_ms"``.
            **overrides: Constructor arguments that replace the preset's (``scales=(1.0,)``).
        """
        settings = get_preset(preset).settings()
        values: dict[str, Any] = {
            "mode": settings.mode,
            "crop_size": settings.crop_size,
            "stride": settings.stride,
            "flip": settings.flip,
            "scales": settings.scales,
        }
        values.update(overrides)
        return cls(backbone, head, **values)

    @property
    def patch_size(self) -> int:
        """P, the multiple each pass pads to."""
        return self.frozen.patch_size

    def logits(self, images: Tensor) -> Tensor:
        """One pass without test-time averaging: logits (B, K, H, W) at the input size.

        Pads (B, 3, H, W) to multiples of P, runs the backbone and the head (logits on the
        padded patch grid), and resizes the logits to H x W, as mmsegmentation's
        ``encode_decode`` with the notebook's padding hook. Takes what :meth:`forward` takes.
        """
        images = dense_images(images, self.frozen, type(self).__name__)
        features = self.frozen(center_pad(images, self.patch_size))
        logits = self.head(features)
        if not isinstance(logits, Tensor) or logits.ndim != 4:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"the segmentation head must return logits (B, K, h, w), got {shape}; use a "
                "dense head such as LinearSegmentationHead"
            )
        return resize(logits, (images.shape[-2], images.shape[-1]))

    def forward(self, images: Tensor) -> Tensor:
        """Class probabilities (B, K, H, W) of images (B, 3, H, W) of any size.

        Args:
            images: Normalised float images, or ``uint8`` pixels 0..255, which are moved to
                the backbone's device and normalised there with the ``FrozenBackbone``'s
                ``mean`` and ``std`` (ImageNet's unless it was built with others), in float32,
                before any padding, flip or rescale: the probabilities are those of the
                normalised images (bit for bit on the CPU). Other integer images are refused
                with a ``TypeError``.
        """
        images = dense_images(images, self.frozen, type(self).__name__)
        return dense_inference(self.logits, images, self.settings, activation=_softmax)

    def predict(self, images: Tensor) -> Tensor:
        """The label map (B, H, W): the most probable class of each pixel."""
        return self(images).argmax(dim=1)

    def extra_repr(self) -> str:
        s = self.settings
        window = f", crop_size={s.crop_size}, stride={s.stride}" if s.mode == "slide" else ""
        return f"mode={s.mode!r}{window}, flip={s.flip}, scales={s.scales}"
