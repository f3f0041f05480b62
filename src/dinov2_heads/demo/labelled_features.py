"""The features of a demo's (image, label map) pairs, extracted once into memory."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dinov2_heads.features import Features, FrozenBackbone
from dinov2_heads.progress import Progress

#: Images per backbone call.
_BATCH = 32


def labelled_features(
    frozen: FrozenBackbone,
    pairs: Dataset[tuple[Tensor, Tensor]],
    indices: range,
    progress: bool,
) -> tuple[Features, Tensor]:
    """The features (on the CPU) and the stacked labels of the pairs at ``indices``.

    Args:
        frozen: The backbone, on any device.
        pairs: Items ``(image (3, H, W), label)``: a part mask (H, W) or a depth map (1, H, W).
        indices: Consecutive item positions.
        progress: Show a progress bar.
    """
    features, labels = [], []
    device = next(frozen.parameters()).device
    with Progress(len(indices), "extracting features", enabled=progress) as bar:
        for start in range(indices.start, indices.stop, _BATCH):
            batch = [pairs[i] for i in range(start, min(start + _BATCH, indices.stop))]
            images = torch.stack([image for image, _ in batch]).to(device)
            features.append(frozen(images).to(torch.device("cpu")))
            labels.append(torch.stack([label for _, label in batch]))
            bar.update(len(batch))
    return Features.cat(features), torch.cat(labels)
