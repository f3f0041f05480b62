"""Helpers shared by the test packages."""

from __future__ import annotations

from pathlib import Path

import torch

from dinov2_heads import DinoVisionTransformer

#: Reference files made with the official DINOv2 code, beside the repository.
FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "dinov2_official"

#: Outputs of the official segmentation and depth heads (random weights), beside the repository.
DENSE_FIXTURES = FIXTURES.parent / "dinov2_dense"


def randomize(model: DinoVisionTransformer, seed: int = 0) -> DinoVisionTransformer:
    """Give every parameter non-trivial random values (tokens, norms and layer scales included).

    A fresh model has zero biases, unit norms and constant layer scales, which would hide
    mistakes in how those tensors are used or converted.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("gamma"):
                param.copy_(0.5 + 0.2 * noise)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim <= 1 or name in {"cls_token", "pos_embed", "register_tokens"}:
                param.copy_(0.05 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    return model.eval()
