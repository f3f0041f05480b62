"""A missing official file is named with its address, so it can be fetched by hand, offline here."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinov2_heads.backbone import list_variants
from dinov2_heads.checkpoints import CheckpointNotFoundError, load_backbone, read_checkpoint_file
from dinov2_heads.checkpoints.official_files import OFFICIAL_BASE_URL, official_url
from dinov2_heads.export import load_heads


@pytest.mark.parametrize("variant", list_variants())
def test_every_backbone_and_its_linear_heads_have_an_address(variant: str) -> None:
    plain = variant.removesuffix("_reg")
    full = variant.replace("_reg", "_reg4")
    for kind in ("pretrain", "linear_head", "linear4_head"):
        name = f"{full}_{kind}.pth"
        # The official hub keeps a variant's files, with or without registers, in one folder.
        assert official_url(name) == f"{OFFICIAL_BASE_URL}/{plain}/{name}"
        assert official_url(Path("/models") / name) == f"{OFFICIAL_BASE_URL}/{plain}/{name}"


@pytest.mark.parametrize(
    "name",
    [
        "dinov2_vits14_ade20k_linear_head.pth",
        "dinov2_vitg14_voc2012_ms_head.pth",
        "dinov2_vitb14_nyu_dpt_head.pth",
        "dinov2_vitl14_kitti_linear4_head.pth",
    ],
)
def test_the_released_dense_heads_have_an_address(name: str) -> None:
    assert official_url(name) == f"{OFFICIAL_BASE_URL}/{name[:13]}/{name}"


@pytest.mark.parametrize(
    "name",
    [
        "heads.pt",
        "backbone.pth",
        "dinov2_vits14_pretrain.pt",  # another ending: not the released file
        "dinov2_vits16_pretrain.pth",
        "dinov2_vits14_reg4_ade20k_linear_head.pth",  # no dense heads were released for _reg
        "my_dinov2_vits14_pretrain.pth",
    ],
)
def test_other_names_have_none(name: str) -> None:
    assert official_url(name) is None


def test_loading_a_missing_official_file_says_where_it_comes_from(tmp_path: Path) -> None:
    file = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    with pytest.raises(CheckpointNotFoundError) as error:
        load_backbone(file)
    message = str(error.value)
    assert message.startswith(f"no checkpoint file at {file}; dinov2-heads downloads nothing")
    assert f"{OFFICIAL_BASE_URL}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in message
    assert "pass its path" in message


def test_a_missing_file_of_another_name_says_nothing_is_downloaded(tmp_path: Path) -> None:
    for read in (load_backbone, read_checkpoint_file, load_heads):
        with pytest.raises(CheckpointNotFoundError, match="nothing is downloaded") as error:
            read(tmp_path / "mine.pth")
        assert OFFICIAL_BASE_URL not in str(error.value)


def test_a_folder_given_for_a_file_lists_what_it_holds_without_python_names(
    tmp_path: Path,
) -> None:
    (tmp_path / "backbone.pth").write_bytes(b"")
    (tmp_path / "heads.pt").write_bytes(b"")
    with pytest.raises(IsADirectoryError) as error:
        load_heads(tmp_path)
    message = str(error.value)
    assert message == (
        f"{tmp_path} is a directory, not a file: pass the path of one file inside it; "
        "it contains backbone.pth, heads.pt"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IsADirectoryError, match="it holds no checkpoint file"):
        read_checkpoint_file(empty)
