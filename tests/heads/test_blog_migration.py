from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from dinov2_heads import DinoVisionTransformer, create_backbone
from dinov2_heads.checkpoints import load_partial
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import Conv1dNeck, MultiHead
from tests.heads.conftest import BlogNeck, trained_blog_neck

GRID = (2, 3)  # 28x42 images
HEADS = {"country_cls": 5, "cn_cls": 4, "ct_cls": 3}


def tiny_backbone() -> DinoVisionTransformer:
    return create_backbone("dinov2_vits14", depth=2, embed_dim=32, num_heads=2, img_size=56)


class ModelWithIntermediateLayers(nn.Module):
    """The official wrapper's layout and forward (its inference_mode/autocast left out)."""

    def __init__(self, feature_model: nn.Module, n_last_blocks: int) -> None:
        super().__init__()
        self.feature_model = feature_model
        self.n_last_blocks = n_last_blocks

    def forward(self, images: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        with torch.no_grad():
            return self.feature_model.get_intermediate_layers(
                images, self.n_last_blocks, return_class_token=True
            )


class BlogThreeHeads(nn.Module):
    """The blog's HubConf with three necks: the backbone sits under base. and again under
    feature_model.feature_model. in its state dict."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.base = tiny_backbone()
        self.feature_model = ModelWithIntermediateLayers(self.base, n_last_blocks=1)
        num_patches = GRID[0] * GRID[1]
        self.country_cls = trained_blog_neck(num_patches, 32, HEADS["country_cls"])
        self.cn_cls = BlogNeck(num_patches, 32, HEADS["cn_cls"])
        self.ct_cls = BlogNeck(num_patches, 32, HEADS["ct_cls"])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        global_feat = self.feature_model(x)
        return self.country_cls(global_feat), self.cn_cls(global_feat), self.ct_cls(global_feat)


class Migrated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)  # different random weights, so that a missed tensor shows
        self.frozen = FrozenBackbone(tiny_backbone())
        self.heads = MultiHead({name: Conv1dNeck(GRID, 32, k) for name, k in HEADS.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.heads(self.frozen(x))


def test_blog_three_head_checkpoint_loads_into_frozen_backbone_and_multihead(
    tmp_path: Path,
) -> None:
    blog = BlogThreeHeads().eval()
    path = tmp_path / "blog_three_heads.pth"
    torch.save(blog.state_dict(), path)
    state_dict = torch.load(path, weights_only=True)
    assert "base.blocks.0.attn.qkv.weight" in state_dict
    assert "feature_model.feature_model.blocks.0.attn.qkv.weight" in state_dict
    assert "country_cls.conv1.bn.running_var" in state_dict

    model = Migrated()
    report = load_partial(
        model,
        path,
        rename={"base.": "frozen.", "feature_model.": None, "": "heads."},
        strict=True,
    )
    assert report.complete
    assert len(report.loaded) == len(model.state_dict())
    assert all(name.startswith("feature_model.") for name in report.dropped)

    x = torch.randn(3, 3, 28, 42)
    model.eval()
    with torch.no_grad():
        expected = blog(x)
        got = model(x)
    for name, blog_logits in zip(HEADS, expected, strict=True):
        assert torch.allclose(got[name], blog_logits, atol=1e-5), name


def test_backbone_and_heads_can_be_loaded_separately(tmp_path: Path) -> None:
    blog = BlogThreeHeads().eval()
    path = tmp_path / "blog.pth"
    torch.save(blog.state_dict(), path)
    frozen = FrozenBackbone(tiny_backbone())
    heads = MultiHead({name: Conv1dNeck(GRID, 32, k) for name, k in HEADS.items()})
    backbone_report = load_partial(frozen, path, rename={"base.": ""})
    heads_report = load_partial(heads, path)
    assert not backbone_report.missing
    assert not heads_report.missing
    assert all(not n.startswith("base.") for n in backbone_report.unexpected)
    x = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        expected = blog.eval()(x)
    got = heads.eval()(frozen(x))
    assert torch.allclose(got["cn_cls"], expected[1], atol=1e-5)
