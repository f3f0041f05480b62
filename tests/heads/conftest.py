from __future__ import annotations

import torch
from torch import Tensor, nn

from dinov2_heads.features import Features


def random_features(
    batch: int = 4,
    dim: int = 16,
    grid: tuple[int, int] = (2, 3),
    n_blocks: int = 1,
    seed: int = 0,
    requires_grad: bool = False,
) -> Features:
    """Features of random tokens: n blocks of (B, D) class and (B, h*w, D) patch tokens."""
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    classes = [torch.randn(batch, dim, generator=gen) for _ in range(n_blocks)]
    patches = [torch.randn(batch, n, dim, generator=gen) for _ in range(n_blocks)]
    if requires_grad:
        for tensor in [*classes, *patches]:
            tensor.requires_grad_(True)
    return Features.from_tokens(classes, patches, grid)


class BlogConv(nn.Module):
    """The blog's ``Conv`` with k=1: Conv1d without bias, BatchNorm1d, ReLU."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c1, c2, 1, 1, 0, bias=False)
        self.bn = nn.BatchNorm1d(c2)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class BlogNeck(nn.Module):
    """The blog's ``neck_dinov2`` forward pass, on ModelWithIntermediateLayers output."""

    def __init__(self, c0: int, c1: int, nc: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = BlogConv(c0, c0)
        self.conv2 = BlogConv(c0, c0)
        self.drop = nn.Dropout(p=dropout)
        self.linear = nn.Linear(c1 * 2, nc)

    def forward(self, x: tuple[tuple[Tensor, Tensor], ...]) -> Tensor:
        feature, class_token = x[0]
        feature = self.drop(self.conv2(self.conv1(feature)))
        x0 = torch.cat((torch.mean(feature, dim=1), class_token), dim=-1)
        return self.linear(x0)


def trained_blog_neck(num_patches: int, dim: int, classes: int) -> BlogNeck:
    """A blog neck with non-default BatchNorm statistics, as after training."""
    torch.manual_seed(0)
    blog = BlogNeck(num_patches, dim, classes)
    with torch.no_grad():
        for block in (blog.conv1, blog.conv2):
            block.bn.weight.uniform_(0.5, 1.5)
            block.bn.bias.normal_(std=0.1)
            block.bn.running_mean.normal_(std=0.1)
            block.bn.running_var.uniform_(0.5, 2.0)
            block.bn.num_batches_tracked.fill_(123)
        blog.linear.bias.normal_()
    return blog
