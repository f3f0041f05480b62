"""A head file given where a backbone checkpoint belongs: every loader names it and says where it
goes, and following the advice works."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dinov2_heads import FrozenBackbone, load_heads, save_heads
from dinov2_heads.checkpoints import (
    UnknownFormatError,
    create_backbone,
    describe_checkpoint,
    load_backbone,
    load_partial,
    read_backbone_state_dict,
)
from dinov2_heads.heads import (
    DPTDepthHead,
    LinearDepthHead,
    LinearHead,
    LinearSegmentationHead,
    MultiHead,
)

from .conftest import tiny_backbone

#: Every Python entry point that takes a backbone checkpoint.
LOADERS: dict[str, Callable[[Any], object]] = {
    "load_backbone": load_backbone,
    "create_backbone": lambda source: create_backbone("dinov2_vits14", checkpoint=source),
    "read_backbone_state_dict": read_backbone_state_dict,
    "describe_checkpoint": describe_checkpoint,
}
#: The loaders that build or return a backbone: ``describe_checkpoint`` describes a released
#: head file instead (tests/checkpoints/test_head_files.py).
BACKBONE_LOADERS = {name: load for name, load in LOADERS.items() if name != "describe_checkpoint"}


def saved_heads(folder: Path, suffix: str) -> Path:
    backbone = create_backbone("dinov2_vits14", depth=1)
    heads = MultiHead({"brand": LinearHead(384, 5), "colour": LinearHead(384, 3)})
    return save_heads(folder / f"heads{suffix}", heads, backbone=FrozenBackbone(backbone))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_heads_file_is_named_with_its_heads_and_where_it_goes(
    tmp_path: Path, loader: str, suffix: str
) -> None:
    path = saved_heads(tmp_path, suffix)
    with pytest.raises(UnknownFormatError) as caught:
        LOADERS[loader](path)
    message = str(caught.value)
    assert message.startswith(
        f"{path} is a heads file written by save_heads (heads: brand, colour), not a backbone "
        "checkpoint: pass the DINOv2 backbone checkpoint the heads were trained on instead"
    )
    assert "load this file with dinov2_heads.load_heads" in message
    assert f"--heads {path}, with the backbone as --checkpoint" in message
    assert "brand.weight" not in message  # not the generic list of names
    # The advice works: the file is a heads file.
    assert load_heads(path).head_names == ("brand", "colour")


def test_the_backbone_the_heads_were_trained_on_is_named(tmp_path: Path) -> None:
    backbone = create_backbone("dinov2_vits14")
    path = save_heads(tmp_path / "heads.pt", LinearHead(384, 2), backbone=FrozenBackbone(backbone))
    with pytest.raises(UnknownFormatError, match=r"\(heads: head; trained on dinov2_vits14\)"):
        load_backbone(path)


def test_a_heads_file_in_memory_is_named_too(tmp_path: Path) -> None:
    content = torch.load(saved_heads(tmp_path, ".pt"), weights_only=True)
    with pytest.raises(UnknownFormatError) as caught:
        load_backbone(content)
    message = str(caught.value)
    assert message.startswith("the mapping given is a heads file written by save_heads")
    assert "--heads" not in message  # no file to pass on the command line


@pytest.mark.parametrize(("dim", "parts", "blocks"), [(384, 2, 1), (768, 5, 4), (1536, 2, 1)])
@pytest.mark.parametrize("loader", BACKBONE_LOADERS)
def test_a_released_linear_head_gets_the_recipe(
    tmp_path: Path, loader: str, dim: int, parts: int, blocks: int
) -> None:
    released = {"weight": torch.randn(7, parts * dim), "bias": torch.randn(7)}
    path = tmp_path / "released_linear_head.pth"
    torch.save(released, path)
    with pytest.raises(UnknownFormatError) as caught:
        LOADERS[loader](path)
    message = str(caught.value)
    assert message.startswith(
        f"{path} holds a bare weight 7x{parts * dim} and bias, like a released DINOv2 linear "
        "head, not a backbone checkpoint"
    )
    letter = {384: "s", 768: "b", 1536: "g"}[dim]
    assert f"for D = {dim}: dinov2_vit{letter}14_pretrain.pth or " in message
    assert ("n_last_blocks=4" in message) == (blocks == 4)
    match = re.search(r"LinearHead\((\d+), (\d+), n_blocks=(\d+)\)", message)
    assert match is not None
    head = LinearHead(*(int(group) for group in match.groups()[:2]), n_blocks=int(match[3]))
    head.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert torch.equal(head.state_dict()["weight"], released["weight"])


def test_a_released_segmentation_head_gets_its_load_call(tmp_path: Path) -> None:
    head = LinearSegmentationHead(384, 150)
    path = tmp_path / "dinov2_vits14_ade20k_linear_head.pth"
    state = {f"decode_head.{key}": value for key, value in head.state_dict().items()}
    torch.save({"meta": {}, "state_dict": state}, path)
    with pytest.raises(UnknownFormatError) as caught:
        load_backbone(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is a released DINOv2 segmentation head (")
    assert f"dinov2-heads segment --heads {path}" in message
    call = re.search(r"load this file with (load_partial\(.*?\}\))", message)
    assert call is not None
    namespace = {"load_partial": load_partial, "LinearSegmentationHead": LinearSegmentationHead}
    report = eval(call[1], namespace, {"path": path})  # the advice, literally
    assert not report.missing


def test_other_files_keep_the_generic_message(tmp_path: Path) -> None:
    for name, content in {
        "odd_width.pth": {"weight": torch.randn(7, 1000), "bias": torch.randn(7)},
        "classifier.pth": {"fc.weight": torch.randn(2, 2)},
    }.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(UnknownFormatError) as caught:
            load_backbone(tmp_path / name)
        assert "not a DINOv2 backbone in a known layout" in str(caught.value)
        assert "LinearHead(" not in str(caught.value)


def test_a_backbone_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(tiny_backbone().state_dict(), path)
    assert load_backbone(path).embed_dim == 128


def released_depth_head(folder: Path, name: str, head: torch.nn.Module) -> Path:
    """``head`` saved as the released depth head files are: ``decode_head.`` keys in a
    ``{"meta", "state_dict"}`` container."""
    state = {f"decode_head.{key}": value for key, value in head.state_dict().items()}
    torch.save({"meta": {}, "state_dict": state}, folder / name)
    return folder / name


#: Small heads in the released key layout, the file names the hub gives them, and the
#: description the error gives.
DEPTH_HEADS: dict[str, tuple[str, Callable[[], torch.nn.Module], str]] = {
    "linear": (
        "dinov2_vits14_nyu_linear_head.pth",
        lambda: LinearDepthHead(384, n_bins=4),
        "the official linear depth head, 1 block, D = 384",
    ),
    "linear4": (
        "dinov2_vits14_nyu_linear4_head.pth",
        lambda: LinearDepthHead(384, layers=4, n_bins=4),
        "the official linear4 depth head, 4 blocks, D = 384",
    ),
    "dpt_kitti": (
        "dinov2_vits14_kitti_dpt_head.pth",
        lambda: DPTDepthHead(384, channels=8, max_depth=80.0),
        "the official DPT depth head, 4 blocks, D = 384",
    ),
}


@pytest.mark.parametrize("kind", DEPTH_HEADS)
@pytest.mark.parametrize("loader", BACKBONE_LOADERS)
def test_a_released_depth_head_gets_its_load_call(tmp_path: Path, loader: str, kind: str) -> None:
    name, make, description = DEPTH_HEADS[kind]
    torch.manual_seed(0)
    head = make()
    path = released_depth_head(tmp_path, name, head)
    with pytest.raises(UnknownFormatError) as caught:
        LOADERS[loader](path)
    message = str(caught.value)
    assert message.startswith(
        f"{path} is a released DINOv2 depth head ({description}), not a backbone checkpoint: "
        "pass the DINOv2 backbone checkpoint (dinov2_vits14_pretrain.pth for D = 384) instead"
    )
    assert message.endswith(f"(on the command line: dinov2-heads depth --head {path})")
    assert "not a DINOv2 backbone in a known layout" not in message
    call = re.search(r"load this file with (load_partial\(.*?\}\))", message)
    assert call is not None
    namespace = {
        "load_partial": load_partial,
        "LinearDepthHead": LinearDepthHead,
        "DPTDepthHead": DPTDepthHead,
    }
    report = eval(call[1], namespace, {"path": path})  # the advice, literally
    assert report.complete
    loaded = report_module(call[1], namespace, path)
    assert type(loaded) is type(head)
    assert loaded.config() == head.config()  # the depth range included
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), head.state_dict().values(), strict=True)
    )


def report_module(call: str, namespace: dict[str, Any], path: Path) -> torch.nn.Module:
    """The head the advised ``load_partial(Head(...), path, ...)`` call loads into."""
    constructor = re.match(r"load_partial\((\w+\(.*?\)), path", call)
    assert constructor is not None
    head = eval(constructor[1], namespace)
    load_partial(head, path, rename={"decode_head.": ""}, strict=True)
    return head


def test_a_linear_depth_head_whose_width_the_file_cannot_tell_says_so(tmp_path: Path) -> None:
    # 3072 input channels: a ViT-S linear4 head or a ViT-g linear head; the name says neither.
    path = released_depth_head(tmp_path, "head.pth", LinearDepthHead(384, layers=4, n_bins=4))
    with pytest.raises(UnknownFormatError) as caught:
        load_backbone(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is a released DINOv2 depth head (the official linear")
    assert "LinearDepthHead(D, layers=L, n_bins=4)" in message
    assert "with 2 x D x L = 3072" in message


@pytest.mark.parametrize("kind", ["linear1", "linear4", "dpt"])
def test_the_official_depth_head_fixtures_are_named(kind: str, tmp_path: Path) -> None:
    from tests.helpers import DENSE_FIXTURES

    fixture = DENSE_FIXTURES / f"vits14_depth_{kind}_head.pth"
    if not fixture.is_file():
        pytest.skip(f"dense reference fixtures not found at {DENSE_FIXTURES.resolve()}")
    # The released names of these heads.
    name = {"linear1": "linear", "linear4": "linear4", "dpt": "dpt"}[kind]
    path = tmp_path / f"dinov2_vits14_nyu_{name}_head.pth"
    path.write_bytes(fixture.read_bytes())
    with pytest.raises(UnknownFormatError, match="is a released DINOv2 depth head") as caught:
        load_backbone(path)
    call = re.search(r"load this file with (load_partial\(.*?\}\))", str(caught.value))
    assert call is not None
    namespace = {
        "load_partial": load_partial,
        "LinearDepthHead": LinearDepthHead,
        "DPTDepthHead": DPTDepthHead,
    }
    assert eval(call[1], namespace, {"path": path}).complete
