from __future__ import annotations

import torch
from torch import Tensor, nn

from dinov2_heads import create_backbone
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, HeadLoss, LinearHead, MultiHead, MultiHeadLoss


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        backbone = create_backbone("dinov2_vits14", depth=1, embed_dim=64, num_heads=2, img_size=56)
        self.frozen = FrozenBackbone(backbone)
        self.heads = MultiHead(
            {
                "brand": LinearHead(64, 3),
                "colour": Conv1dNeck((2, 3), 64, 2, dropout=0.1),
            }
        )

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.heads(self.frozen(images))


def synthetic_batch(batch: int = 16) -> tuple[Tensor, dict[str, Tensor]]:
    """28x42 images whose brand shifts all channels and whose colour tints the red channel."""
    gen = torch.Generator().manual_seed(0)
    brand = torch.randint(0, 3, (batch,), generator=gen)
    colour = torch.randint(0, 2, (batch,), generator=gen)
    images = 0.3 * torch.randn(batch, 3, 28, 42, generator=gen)
    images += (brand.float() - 1).view(-1, 1, 1, 1)
    images[:, 0] += 1.5 * (colour.float() * 2 - 1).view(-1, 1, 1)
    brand[::4] = -100  # every fourth sample has no brand label
    colour[1::5] = -100
    return images, {"brand": brand, "colour": colour}


def test_multi_head_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    model = Classifier()
    images, targets = synthetic_batch()
    loss_fn = MultiHeadLoss({"colour": HeadLoss(weight=0.5, label_smoothing=0.05)})
    backbone_before = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.heads.parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=3e-2)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(images), targets).total)

    start = evaluate()
    model.train()
    assert not model.frozen.training
    for _ in range(8):
        optimizer.zero_grad()
        total, per_head = loss_fn(model(images), targets)
        assert torch.isfinite(total)
        total.backward()
        optimizer.step()
    assert all(p.grad is None for p in model.frozen.parameters())
    for name, param in model.heads.named_parameters():
        assert param.grad is not None, name
    end = evaluate()
    assert end < 0.5 * start, (start, end)
    for key, value in model.frozen.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert set(per_head) == {"brand", "colour"}
