"""create_backbone and the hub-named builders with weights: one check, one error, one message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dinov2_heads
from dinov2_heads.checkpoints import (
    ArchitectureMismatchError,
    CheckpointError,
    PartialLoadError,
    create_backbone,
    load_backbone,
    load_partial,
)

from .conftest import TINY, tiny_backbone

SIZE = 70


@pytest.mark.parametrize("form", ["path", "state_dict", "hubconf"])
def test_hub_builder_weights_forms(tmp_path: Path, form: str) -> None:
    source = create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=2)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    weights = {"path": path, "state_dict": source.state_dict(), "hubconf": {"LVD142M": str(path)}}
    model = dinov2_heads.dinov2_vits14(weights=weights[form], depth=1, embed_dim=32, num_heads=2)
    assert not model.training
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # The weights are the model's own: changing the source changes nothing in the model.
    if form == "state_dict":
        weights["state_dict"]["cls_token"].add_(1)  # type: ignore[index]
        assert not torch.equal(model.cls_token, weights["state_dict"]["cls_token"])  # type: ignore[index]


def test_weights_become_trainable_float32_parameters_on_the_device(tmp_path: Path) -> None:
    source = tiny_backbone(img_size=SIZE)
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in source.state_dict().items()}, path)
    model = create_backbone("dinov2_vits14", **TINY, img_size=SIZE, checkpoint=path, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())
    torch.testing.assert_close(model.cls_token, source.cls_token.half().float())


@pytest.mark.parametrize("device", ["meta", torch.device("meta")])
def test_weights_on_the_meta_device_are_refused(device: str | torch.device) -> None:
    # Loading into meta parameters copies nothing: the weights would be dropped.
    weights = create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=2).state_dict()
    with pytest.raises(ValueError, match=r"meta device holds no values.*load_backbone"):
        create_backbone(
            "dinov2_vits14", depth=1, embed_dim=32, num_heads=2, device=device, checkpoint=weights
        )


def test_another_variant_is_the_same_error_as_load_backbone(tmp_path: Path) -> None:
    # The same mistake through both doors: weights of a 128-wide model, asked for as ViT-S/reg.
    path = tmp_path / "w.pth"
    torch.save(tiny_backbone(img_size=SIZE).state_dict(), path)
    with pytest.raises(ArchitectureMismatchError) as created:
        create_backbone("dinov2_vits14_reg", checkpoint=path)
    with pytest.raises(ArchitectureMismatchError) as loaded:
        load_backbone(path, variant="dinov2_vits14_reg")
    assert type(created.value) is type(loaded.value) is ArchitectureMismatchError
    assert str(created.value) == str(loaded.value)
    message = str(created.value)
    for part in (
        "the weights do not fit dinov2_vits14_reg",
        "the model asked for has embed_dim=384, depth=12, num_register_tokens=4",
        "the weights have embed_dim=128, depth=2, num_register_tokens=0",
        "they are a custom architecture: D=128, depth=2",
        "load_backbone(path) without variant=",
    ):
        assert part in message


def test_a_missing_tensor_is_the_same_error_as_load_backbone() -> None:
    state = tiny_backbone(img_size=SIZE).state_dict()
    del state["blocks.1.attn.proj.bias"]
    with pytest.raises(ArchitectureMismatchError) as created:
        create_backbone("dinov2_vits14", **TINY, img_size=SIZE, checkpoint=state)
    with pytest.raises(ArchitectureMismatchError) as loaded:
        load_backbone(state, variant="dinov2_vits14", **TINY)
    assert str(created.value) == str(loaded.value)
    assert str(created.value).splitlines() == [
        "the weights do not fit dinov2_vits14 (D=128, depth=2, heads=2, mlp, 0 registers, "
        "5x5 grid):",
        "  missing from the weights (1): blocks.1.attn.proj.bias",
        "  load_backbone(path) without variant= builds the architecture of the weights, or "
        "load_partial(model, path) copies the tensors that fit and reports the rest",
    ]


def test_another_position_grid_names_the_shapes() -> None:
    # create_backbone builds the grid asked for (37x37 here); load_backbone adopts the file's.
    state = tiny_backbone(img_size=SIZE).state_dict()
    with pytest.raises(ArchitectureMismatchError) as caught:
        create_backbone("dinov2_vits14", **TINY, checkpoint=state)
    assert str(caught.value).splitlines()[1] == (
        "  shapes, the weights vs the model (1): pos_embed (1, 26, 128) vs (1, 1370, 128)"
    )
    assert load_backbone(state, variant="dinov2_vits14", **TINY).config.img_size == SIZE


def test_names_a_backbone_does_not_have_are_the_same_error_everywhere() -> None:
    state = {**tiny_backbone(img_size=SIZE).state_dict(), "neck.weight": torch.zeros(2)}
    with pytest.raises(ArchitectureMismatchError, match=r"does not have: neck\.weight") as created:
        create_backbone("dinov2_vits14", **TINY, img_size=SIZE, checkpoint=state)
    with pytest.raises(ArchitectureMismatchError) as loaded:
        load_backbone(state)
    assert str(created.value) == str(loaded.value)
    # A strict partial load refuses the same misfit with the same error type.
    with pytest.raises(ArchitectureMismatchError) as partial:
        load_partial(tiny_backbone(img_size=SIZE), state, strict=True)
    assert isinstance(partial.value, PartialLoadError)
    assert "neck.weight" in str(partial.value)


def test_every_misfit_is_a_checkpoint_error_and_a_value_error() -> None:
    assert issubclass(ArchitectureMismatchError, CheckpointError)
    assert issubclass(ArchitectureMismatchError, ValueError)
    assert issubclass(PartialLoadError, ArchitectureMismatchError)
