"""save_attention_grid: layout, colours where the attention is, the caption, errors; colour maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinov2_heads.checkpoints import create_backbone
from dinov2_heads.data.functional import pil_to_tensor
from dinov2_heads.features import class_attention
from dinov2_heads.viz import COLOURMAPS, apply_colourmap, save_attention_grid

H, W, PAD = 28, 42, 4


def hot_maps(batch: int = 2, heads: int = 3) -> torch.Tensor:
    """(B, heads, 2, 3) maps of 0.01 with one hot patch per head, at (0, head % 3)."""
    maps = torch.full((batch, heads, 2, 3), 0.01)
    for head in range(heads):
        maps[:, head, 0, head % 3] = 0.5
    return maps


def images(batch: int = 2) -> torch.Tensor:
    return torch.full((batch, 3, H, W), 0.5)  # mid grey, in [0, 1]


def read(path: Path) -> tuple[torch.Tensor, str]:
    from PIL import Image

    with Image.open(path) as picture:
        pixels = pil_to_tensor(picture.convert("RGB")).permute(1, 2, 0)  # (H, W, 3) uint8
        return pixels, picture.info.get("Description", "")


def colour(name: str, value: float) -> torch.Tensor:
    rgb = apply_colourmap(torch.tensor(value), name)
    return (rgb * 255).round().to(torch.uint8)


def test_layout_and_colours_follow_the_maps(tmp_path: Path) -> None:
    path = save_attention_grid(
        tmp_path / "attention.png", images(), hot_maps(), normalized=False, caption=""
    )
    pixels, description = read(path)
    assert description == ""
    columns = 2 + 3  # image, mean overlay, three heads
    assert pixels.shape[1] == PAD + columns * (W + PAD)
    header = pixels.shape[0] - 2 * (H + PAD) - PAD  # the row of column names on top
    assert header > 0
    top = header + PAD
    for head in range(3):
        left = PAD + (2 + head) * (W + PAD)
        # Each patch is 14x14 pixels; the hot patch of this head is the brightest colour.
        hot = pixels[top + 7, left + 14 * head + 7]
        cold = pixels[top + 21, left + 7]
        assert torch.equal(hot, colour("magma", 1.0)), head
        assert torch.equal(cold, colour("magma", 0.0)), head
    # The first tile is the image itself (grey).
    assert torch.equal(pixels[top + 5, PAD + 5], torch.tensor([128, 128, 128], dtype=torch.uint8))


def test_overlay_opacity(tmp_path: Path) -> None:
    maps = hot_maps()
    left = PAD + (W + PAD)
    for alpha, expected in ((0.0, torch.tensor([128, 128, 128])), (1.0, colour("magma", 1.0))):
        path = save_attention_grid(
            tmp_path / f"a{alpha}.png", images(), maps, normalized=False, alpha=alpha, caption=""
        )
        pixels, _ = read(path)
        top = pixels.shape[0] - 2 * (H + PAD)
        # All heads are hot in row 0, so the mean is highest there, lowest in row 1.
        assert torch.equal(pixels[top + 7, left + 7], expected.to(torch.uint8)), alpha


def test_shared_scale_keeps_heads_comparable(tmp_path: Path) -> None:
    maps = hot_maps(batch=1, heads=2)
    maps[:, 1] *= 0.5  # a fainter head: the same pattern, half as strong
    each = save_attention_grid(tmp_path / "e.png", images(1), maps, normalized=False, caption="")
    shared = save_attention_grid(
        tmp_path / "s.png", images(1), maps, normalized=False, scale="shared", caption=""
    )
    top = read(each)[0].shape[0] - (H + PAD)
    left = PAD + 3 * (W + PAD)  # head 1, its hot patch at column 1
    assert torch.equal(read(each)[0][top + 7, left + 21], colour("magma", 1.0))
    assert not torch.equal(read(shared)[0][top + 7, left + 21], colour("magma", 1.0))


def test_class_attention_caption_names_block_heads_and_registers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_vits14_reg", depth=2)
    batch = torch.randn(2, 3, 28, 42)
    attention = class_attention(backbone, batch, block=0)
    path = save_attention_grid(tmp_path / "reg.png", batch, attention, heads=[0, 5])
    pixels, description = read(path)
    share = float(attention.to_registers.sum(dim=-1).mean())
    assert "block 0, 6 heads" in description
    assert "softmax over all tokens; registers left out" in description.lower()
    assert f"registers took {100 * share:.1f} %" in description
    assert pixels.shape[1] == PAD + 4 * (W + PAD)  # image, mean, heads 0 and 5
    assert pixels.shape[0] > 2 * (H + PAD) + 20  # grid, header and caption


def test_tensor_maps_caption_takes_the_block_given(tmp_path: Path) -> None:
    path = save_attention_grid(tmp_path / "t.png", images(), hot_maps(), block=11)
    _, description = read(path)
    assert description.startswith("Class-token attention in block 11, 3 heads")
    assert "registers took" not in description


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"\(B, heads, h, w\)"):
        save_attention_grid(out, images(), torch.rand(2, 3, 6))
    with pytest.raises(ValueError, match="got 2 images but attention maps for 3"):
        save_attention_grid(out, images(), hot_maps(batch=3))
    with pytest.raises(ValueError, match=r"head indices in \[0, 3\)"):
        save_attention_grid(out, images(), hot_maps(), heads=[3])
    with pytest.raises(ValueError, match="head indices"):
        save_attention_grid(out, images(), hot_maps(), heads=[])
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        save_attention_grid(out, images(), hot_maps(), alpha=1.5)
    with pytest.raises(ValueError, match="unknown colour map 'jet'"):
        save_attention_grid(out, images(), hot_maps(), colourmap="jet")
    with pytest.raises(ValueError, match="scale must be"):
        save_attention_grid(out, images(), hot_maps(), scale="global")  # type: ignore[arg-type]
    nan = hot_maps()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save_attention_grid(out, images(), nan)
    with pytest.raises(TypeError, match="ClassAttention"):
        save_attention_grid(out, images(), hot_maps().numpy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"images of shape \(B, 3, H, W\)"):
        save_attention_grid(out, torch.rand(2, 1, H, W), hot_maps())
    with pytest.raises(IsADirectoryError):
        save_attention_grid(tmp_path, images(), hot_maps())
    assert not out.exists()


# ---------------------------------------------------------------------- colour maps


@pytest.mark.parametrize("name", sorted(COLOURMAPS))
def test_colour_maps_run_dark_to_light(name: str) -> None:
    values = torch.linspace(0, 1, 101)
    rgb = apply_colourmap(values, name)
    assert rgb.shape == (101, 3)
    anchors = torch.tensor(COLOURMAPS[name])
    torch.testing.assert_close(rgb[0], anchors[0])
    torch.testing.assert_close(rgb[-1], anchors[-1])
    lightness = rgb @ torch.tensor([0.2126, 0.7152, 0.0722])
    assert bool((lightness.diff() > 0).all())
    # Values outside [0, 1] are clipped to the ends.
    torch.testing.assert_close(apply_colourmap(torch.tensor([-3.0, 7.0]), name), anchors[[0, -1]])


def test_colour_map_errors() -> None:
    with pytest.raises(ValueError, match="unknown colour map"):
        apply_colourmap(torch.zeros(2), "rainbow")
    with pytest.raises(ValueError, match="NaN or infinite"):
        apply_colourmap(torch.tensor([float("inf")]))
