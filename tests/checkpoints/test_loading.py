"""load_backbone: the architecture from the weights, any layout, and clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from dinov2_heads import create_backbone, dinov2_vits14_reg
from dinov2_heads.backbone import get_config, list_variants, variant_name
from dinov2_heads.checkpoints import (
    ArchitectureMismatchError,
    CheckpointError,
    UnknownFormatError,
    describe_checkpoint,
    infer_config,
    load_backbone,
    read_backbone_state_dict,
)
from dinov2_heads.checkpoints.architecture import check_variant

from .conftest import (
    TINY,
    images,
    official_to_huggingface,
    official_to_timm,
    tiny_backbone,
    tokens,
)

SIZE = 70


def same_outputs(a: nn.Module, b: nn.Module, size: tuple[int, int] = (SIZE, SIZE)) -> bool:
    x = images(size)
    return bool((tokens(a, x) - tokens(b, x)).abs().max().item() < 1e-5)  # type: ignore[arg-type]


def teacher_checkpoint(state: dict[str, Tensor], chunk_size: int = 1) -> dict[str, object]:
    """A DINOv2 training checkpoint: teacher and student, chunked blocks, projection heads."""

    def chunked(prefix: str) -> dict[str, Tensor]:
        out = {}
        for key, value in state.items():
            if key.startswith("blocks."):
                _, index, rest = key.split(".", 2)
                key = f"blocks.{int(index) // chunk_size}.{index}.{rest}"
            out[f"{prefix}backbone.{key}"] = value
        out[f"{prefix}dino_head.mlp.0.weight"] = torch.zeros(8, 128)
        out[f"{prefix}ibot_head.mlp.0.weight"] = torch.zeros(8, 128)
        return out

    return {"model": {**chunked("teacher."), **chunked("student.")}, "iteration": 1250}


def test_official_file_needs_no_other_argument(tmp_path: Path) -> None:
    source = tiny_backbone(registers=True, img_size=SIZE)
    path = tmp_path / "dinov2_tiny_reg4_pretrain.pth"
    torch.save(source.state_dict(), path)
    model = load_backbone(path)
    assert model.config == source.config
    assert not model.training
    assert same_outputs(model, source)


@pytest.mark.parametrize("name", list_variants())
def test_every_official_variant_is_recognised(name: str) -> None:
    # Shapes are enough to decide, so meta tensors (no data) stand in for the released files.
    source = create_backbone(name, device="meta")
    config = infer_config(source.state_dict())
    assert config == source.config
    assert variant_name(config) == name


def test_check_variant_names_both() -> None:
    config = infer_config(create_backbone("dinov2_vitg14", device="meta").state_dict())
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"do not fit dinov2_vitb14: the model asked for has embed_dim=768.*"
        r"ffn_layer='mlp'.*they are dinov2_vitg14",
    ):
        check_variant(config, "dinov2_vitb14", get_config("dinov2_vitb14"))


def test_variant_mismatch_names_both(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tiny_backbone(img_size=SIZE).state_dict(), path)
    with pytest.raises(ArchitectureMismatchError) as caught:
        load_backbone(path, variant="dinov2_vits14_reg")
    message = str(caught.value)
    assert "do not fit dinov2_vits14_reg" in message
    for part in (
        "embed_dim=384",
        "embed_dim=128",
        "num_register_tokens=4",
        "num_register_tokens=0",
    ):
        assert part in message


def test_variant_sets_the_head_count() -> None:
    # Meta tensors carry the shapes of a full ViT-S without its memory; the model stays on meta.
    source = create_backbone("dinov2_vits14", img_size=SIZE, device="meta")
    model = load_backbone(source.state_dict(), variant="dinov2_vits14")
    assert model.variant == "dinov2_vits14"
    assert model.config.img_size == SIZE
    assert model.pos_embed.is_meta


def test_custom_depth_and_width_load_as_custom() -> None:
    source = tiny_backbone(img_size=SIZE, depth=3)
    model = load_backbone(source.state_dict())
    assert model.variant is None
    assert model.config.depth == 3
    assert same_outputs(model, source)


def test_heads_not_64_wide_need_an_override() -> None:
    source = tiny_backbone(img_size=SIZE, embed_dim=96, num_heads=4)
    with pytest.raises(CheckpointError, match=r"pass num_heads="):
        load_backbone(source.state_dict())
    model = load_backbone(source.state_dict(), num_heads=4)
    assert same_outputs(model, source)


def test_training_checkpoint_at_224_px(tmp_path: Path) -> None:
    source = tiny_backbone(img_size=224)
    path = tmp_path / "training.pth"
    torch.save(teacher_checkpoint(source.state_dict(), chunk_size=1), path)
    model = load_backbone(path)
    assert model.config.pos_grid == 16
    assert same_outputs(model, source, (224, 224))
    summary = describe_checkpoint(path)
    assert summary.unwrapped[0] == "took 'model' out of its container (also held: iteration)"
    assert "flattened 2 block chunks" in summary.unwrapped[-1]
    assert len(summary.set_aside) == 2 + len(source.state_dict()) + 2


def test_half_precision_loads_as_float32(tmp_path: Path) -> None:
    source = tiny_backbone(img_size=SIZE).half()
    path = tmp_path / "half.pth"
    torch.save(source.state_dict(), path)
    model = load_backbone(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.pos_embed, source.pos_embed.float())
    assert describe_checkpoint(path).dtypes == {"float16": len(source.state_dict())}


def test_integer_weights_are_refused_not_cast(tmp_path: Path) -> None:
    # A quantised or damaged file: casting int8 values to float would build a wrong backbone.
    state = tiny_backbone(img_size=SIZE).state_dict()
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"].to(torch.int8)
    path = tmp_path / "int8.pth"
    torch.save(state, path)
    message = r"1 backbone tensors are not floating point \(int8\): blocks\.0\.attn\.qkv\.weight"
    with pytest.raises(CheckpointError, match=message):
        load_backbone(path)
    with pytest.raises(CheckpointError, match=message):
        create_backbone("dinov2_vits14", **TINY, img_size=SIZE, checkpoint=path)


def test_nonfinite_weights_warn_with_names(caplog: pytest.LogCaptureFixture) -> None:
    state = tiny_backbone(img_size=SIZE).state_dict()
    state["blocks.1.ls2.gamma"] = state["blocks.1.ls2.gamma"].clone()
    state["blocks.1.ls2.gamma"][0] = float("nan")
    with caplog.at_level(logging.WARNING):
        load_backbone(state)
    assert "1 backbone tensors contain NaN or inf: blocks.1.ls2.gamma" in caplog.text
    assert describe_checkpoint(state).nonfinite == ("blocks.1.ls2.gamma",)


def test_mapping_weights_are_copied_and_mmap_weights_stay_private(tmp_path: Path) -> None:
    source = tiny_backbone(img_size=SIZE)
    state = source.state_dict()
    model = load_backbone(state)
    assert model.pos_embed.data_ptr() != state["pos_embed"].data_ptr()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    mapped = load_backbone(path, mmap=True)
    assert str(path.resolve()) in Path("/proc/self/maps").read_text()
    # Training the mapped model never writes to the file (private mapping).
    with torch.no_grad():
        mapped.pos_embed.add_(1.0)
    assert torch.equal(torch.load(path, weights_only=True)["pos_embed"], state["pos_embed"])
    assert all(p.requires_grad for p in mapped.parameters())


@pytest.mark.parametrize("layout", ["huggingface", "timm", "safetensors"])
def test_every_layout_from_a_file(tmp_path: Path, layout: str) -> None:
    source = tiny_backbone(registers=True, swiglu=True, img_size=SIZE)
    state = source.state_dict()
    if layout == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        path = tmp_path / "model.safetensors"
        safetensors_torch.save_file(dict(state), str(path))
    else:
        path = tmp_path / f"{layout}.bin"
        write = official_to_huggingface if layout == "huggingface" else official_to_timm
        torch.save(write(dict(state)), path)
    # A Hugging Face file alone has no config.json to give the head count.
    model = load_backbone(path, num_heads=2) if layout == "huggingface" else load_backbone(path)
    assert same_outputs(model, source)
    expected = "official" if layout == "safetensors" else layout
    assert describe_checkpoint(path, num_heads=2).format == expected


def test_unrelated_model_is_an_unknown_layout() -> None:
    with pytest.raises(UnknownFormatError, match=r"not a DINOv2 backbone.*'0.weight'"):
        load_backbone(nn.Sequential(nn.Linear(2, 2), nn.ReLU()).state_dict())


def test_backbone_under_a_prefix_gets_a_hint() -> None:
    state = {f"base.{k}": v for k, v in tiny_backbone(img_size=SIZE).state_dict().items()}
    with pytest.raises(UnknownFormatError, match=r"seems to live under 'base.'"):
        load_backbone(state)


def test_mixed_layouts_are_ambiguous() -> None:
    state = tiny_backbone(img_size=SIZE).state_dict()
    mixed = {**state, **official_to_huggingface(dict(state))}
    with pytest.raises(UnknownFormatError, match=r"mixes Hugging Face names"):
        load_backbone(mixed)


def test_extra_tensors_are_an_error_with_a_way_out() -> None:
    state = {**tiny_backbone(img_size=SIZE).state_dict(), "neck.weight": torch.zeros(2)}
    with pytest.raises(
        ArchitectureMismatchError, match=r"does not have: neck.weight.*load_partial"
    ):
        load_backbone(state)
    assert describe_checkpoint(state).unexpected == ("neck.weight",)


def test_missing_block_tensor_is_named() -> None:
    state = tiny_backbone(img_size=SIZE).state_dict()
    del state["blocks.1.attn.proj.bias"]
    with pytest.raises(
        ArchitectureMismatchError, match=r"missing from the weights \(1\): blocks.1.attn"
    ):
        load_backbone(state)


def test_missing_block_is_named() -> None:
    state = {k: v for k, v in tiny_backbone(img_size=SIZE, depth=3).state_dict().items()}
    state = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match=r"blocks \[1\] are absent"):
        load_backbone(state)


def test_builders_accept_the_hubconf_form(tmp_path: Path) -> None:
    source = create_backbone("dinov2_vits14_reg", depth=1, img_size=SIZE)
    path = tmp_path / "w.pth"
    torch.save(official_to_timm(dict(source.state_dict())), path)
    model = dinov2_vits14_reg(weights={"LVD142M": str(path)}, depth=1, img_size=SIZE)
    assert same_outputs(model, source)
    assert read_backbone_state_dict(path).keys() == source.state_dict().keys()
