"""Hugging Face model folders, sharded or not, and the Hugging Face cache load like single files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from dinov2_heads.checkpoints import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointIsADirectoryError,
    CheckpointNotFoundError,
    describe_checkpoint,
    find_checkpoint_files,
    load_backbone,
    load_partial,
    read_checkpoint,
)

from .conftest import hf_model, hf_tokens, images, tiny_backbone, tokens

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save_file

TOL = 1e-5
SIZE = 28
INDEX = "model.safetensors.index.json"

#: 64 wide with 2 heads: 32-wide heads, which only config.json can tell.
TINY_HF = {"hidden_size": 64, "num_heads": 2, "size": SIZE}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One register model saved whole and in shards, and one plain SwiGLU model in .bin shards."""
    root = tmp_path_factory.mktemp("hf")
    registers = hf_model(registers=True, **TINY_HF)
    registers.save_pretrained(root / "whole")
    registers.save_pretrained(root / "sharded", max_shard_size="50KB")
    swiglu = hf_model(registers=False, swiglu=True, seed=1, **TINY_HF)
    swiglu.save_pretrained(root / "swiglu", max_shard_size="50KB")
    to_pytorch_bin(root / "swiglu", root / "bin_sharded")
    return {"root": root, "registers": registers, "swiglu": swiglu}


def to_pytorch_bin(source: Path, target: Path) -> None:
    """The ``pytorch_model-0000k-of-0000n.bin`` shards that transformers 4 wrote with
    ``safe_serialization=False`` (transformers 5 writes safetensors only)."""
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    weight_map = json.loads((source / INDEX).read_text())["weight_map"]
    renamed = {}
    for shard in sorted(set(weight_map.values())):
        name = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(source / shard), target / name)
        renamed[shard] = name
    index = {"metadata": {}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (target / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def copy(saved: dict[str, Any], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved["root"] / name, tmp_path / name))


def assert_matches(folder: Path | str, theirs: Any) -> None:
    ours = load_backbone(folder)
    x = images((SIZE, SIZE), batch=2)
    expected = hf_tokens(theirs, x)
    got = tokens(ours, x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < TOL


def shard_of(folder: Path, key: str) -> Path:
    return folder / json.loads((folder / INDEX).read_text())["weight_map"][key]


# ------------------------------------------------------------------------------ loading


def test_sharded_safetensors_folder_gives_huggingface_outputs(saved: dict[str, Any]) -> None:
    folder = saved["root"] / "sharded"
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2
    assert_matches(folder, saved["registers"])
    # The index itself, as a str path, reads the same shards.
    assert_matches(str(folder / INDEX), saved["registers"])


def test_sharded_pytorch_bin_folder_gives_huggingface_outputs(saved: dict[str, Any]) -> None:
    folder = saved["root"] / "bin_sharded"
    assert len(list(folder.glob("pytorch_model-*-of-*.bin"))) > 2
    files = find_checkpoint_files(folder)
    assert files.index == folder / "pytorch_model.bin.index.json"
    assert [p.name for p in files.weights] == sorted(p.name for p in files.weights)
    model = load_backbone(folder)
    assert model.config.ffn_layer == "swiglufused"
    assert_matches(folder, saved["swiglu"])


@pytest.mark.parametrize("name", ["bin_sharded", "sharded"])
def test_shards_are_mapped_only_with_mmap(saved: dict[str, Any], name: str) -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux) to see the mappings")
    folder = saved["root"] / name
    shards = find_checkpoint_files(folder).weights
    owned = read_checkpoint(folder)
    assert not any(str(shard.resolve()) in maps.read_text() for shard in shards)
    state = read_checkpoint(folder, mmap=True)
    # Each shard appears among the process's memory mappings while its tensors live.
    mapped = maps.read_text()
    for shard in shards:
        assert str(shard.resolve()) in mapped, shard.name
    assert all(torch.equal(owned[key], state[key]) for key in owned)
    index = "pytorch_model.bin.index.json" if name == "bin_sharded" else INDEX
    assert len(state) == len(json.loads((folder / index).read_text())["weight_map"])


@pytest.mark.parametrize("source", ["file", "folder", "state dict"])
def test_custom_huggingface_weights_without_config_json_need_num_heads(
    saved: dict[str, Any], tmp_path: Path, source: str
) -> None:
    """32-wide heads: taking D / 64 = 1 head would load silently and give other outputs."""
    folder = copy(saved, "whole", tmp_path)
    path: Path | dict[str, Tensor] = folder / "model.safetensors"
    hint = "pass the folder"
    if source == "folder":
        (folder / "config.json").unlink()
        path, hint = folder, "put the model's config.json beside the weights"
    elif source == "state dict":
        path, hint = saved["registers"].state_dict(), "a state dict, which has no config.json"
    with pytest.raises(CheckpointError, match=r"number of attention heads is unknown") as caught:
        load_backbone(path)
    assert "Pass num_heads=" in str(caught.value)
    assert hint in str(caught.value)
    with pytest.raises(CheckpointError, match=r"number of attention heads is unknown"):
        describe_checkpoint(path)
    # Given the count, the model is Hugging Face's; a wrong count is a different model.
    model = load_backbone(path, num_heads=2)
    x = images((SIZE, SIZE))
    assert (tokens(model, x) - hf_tokens(saved["registers"], x)).abs().max().item() < TOL
    wrong = load_backbone(path, num_heads=1)
    assert (tokens(wrong, x) - hf_tokens(saved["registers"], x)).abs().max().item() > TOL


@pytest.mark.parametrize("depth", [12, 2])
def test_official_width_in_huggingface_layout_needs_no_config(depth: int) -> None:
    """The released models' heads are 64 wide: so are those of a model with fewer blocks."""
    theirs = hf_model(registers=False, hidden_size=384, num_heads=6, depth=depth, size=SIZE)
    model = load_backbone(theirs.state_dict())
    assert model.variant == ("dinov2_vits14" if depth == 12 else None)
    assert model.config.num_heads == 6
    x = images((SIZE, SIZE))
    assert (tokens(model, x) - hf_tokens(theirs, x)).abs().max().item() < TOL


def test_config_json_gives_the_head_count(
    saved: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    folder = saved["root"] / "whole"
    assert load_backbone(folder).config.num_heads == 2
    with caplog.at_level(logging.WARNING):
        assert load_backbone(folder, num_heads=4).config.num_heads == 4
    assert "num_heads=4 is used" in caplog.text
    assert "says num_attention_heads=2" in caplog.text
    summary = describe_checkpoint(folder)
    assert summary.config["num_heads"] == 2
    assert summary.files == ("model.safetensors", "config.json")
    assert_matches(folder, saved["registers"])


def test_describe_names_the_files_it_read(saved: dict[str, Any]) -> None:
    summary = describe_checkpoint(saved["root"] / "sharded")
    assert summary.format == "huggingface"
    assert summary.num_tensors == 36
    assert summary.files[0] == INDEX
    assert summary.files[-1] == "config.json"
    assert len(summary.files) == 2 + len(list((saved["root"] / "sharded").glob("model-*")))
    row = next(line for line in str(summary).splitlines() if line.startswith("files"))
    assert row.split(None, 1)[1] == f"{INDEX} ({len(summary.files) - 2} shards), config.json"
    single = describe_checkpoint(saved["root"] / "whole" / "model.safetensors", num_heads=2)
    assert single.files == ("model.safetensors",)
    assert "files" not in [line.split()[0] for line in str(single).splitlines()]


def test_huggingface_cache_repo(saved: dict[str, Any], tmp_path: Path) -> None:
    """``models--org--name``: blobs, snapshots of links into them, and refs/main."""
    repo = tmp_path / "models--facebook--dinov2-tiny"
    source = saved["root"] / "sharded"
    for commit in ("a1b2c3", "d4e5f6"):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for file in source.iterdir():
            blob = repo / "blobs" / f"{commit}-{file.name}"
            blob.parent.mkdir(exist_ok=True)
            shutil.copy(file, blob)
            (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    with pytest.raises(CheckpointIsADirectoryError, match=r"2 snapshots and no refs/main.*a1b2c3"):
        load_backbone(repo)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("d4e5f6")
    files = find_checkpoint_files(repo)
    assert files.folder == repo / "snapshots" / "d4e5f6"
    assert_matches(repo, saved["registers"])
    assert describe_checkpoint(repo).files[0] == f"snapshots/d4e5f6/{INDEX}"
    (repo / "refs" / "main").write_text("0000ff")
    with pytest.raises(CheckpointNotFoundError, match=r"refs/main names snapshot '0000ff'"):
        load_backbone(repo)
    # Without refs/main, the only snapshot is used.
    (repo / "refs" / "main").unlink()
    shutil.rmtree(repo / "snapshots" / "a1b2c3")
    assert find_checkpoint_files(repo).folder == repo / "snapshots" / "d4e5f6"


def _cache_with(saved: dict[str, Any], cache: Path, repo_id: str) -> Path:
    """A hub cache as huggingface-cli download leaves it: blobs, a snapshot of links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in (saved["root"] / "whole").iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    return repo


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"])
def test_repo_id_is_found_in_the_local_huggingface_cache(
    saved: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "somewhere"
    cache = {"HF_HUB_CACHE": root, "HF_HOME": root / "hub"}.get(variable, root / "huggingface/hub")
    repo = _cache_with(saved, cache, "facebook/dinov2-tiny")
    monkeypatch.setenv(variable, str(root))
    monkeypatch.chdir(tmp_path)  # "facebook/dinov2-tiny" is no path here
    files = find_checkpoint_files("facebook/dinov2-tiny")
    assert files.folder == repo / "snapshots" / "c0ffee"
    assert files.config == files.folder / "config.json"
    assert_matches("facebook/dinov2-tiny", saved["registers"])
    assert describe_checkpoint("facebook/dinov2-tiny").config["num_heads"] == 2


def test_repo_id_in_the_default_cache(
    saved: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    _cache_with(saved, tmp_path / ".cache" / "huggingface" / "hub", "facebook/dinov2-tiny")
    monkeypatch.chdir(tmp_path)
    assert load_backbone("facebook/dinov2-tiny").config.num_heads == 2


def test_repo_id_not_in_the_cache_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFoundError) as caught:
        load_backbone("facebook/dinov2-small")
    message = str(caught.value)
    assert "not in the local Hugging Face cache" in message
    assert str(tmp_path / "empty-cache" / "models--facebook--dinov2-small") in message
    assert "huggingface-cli download facebook/dinov2-small" in message
    assert "Nothing is downloaded" in message
    # A local folder of that name wins over the cache; a missing file path keeps its own error.
    (tmp_path / "facebook" / "dinov2-small").mkdir(parents=True)
    with pytest.raises(CheckpointIsADirectoryError, match=r"no checkpoint in it"):
        load_backbone("facebook/dinov2-small")
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint file at"):
        load_backbone("facebook/weights.pth")


def test_broken_link_to_a_blob_names_the_shard(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "sharded", tmp_path)
    shard = shard_of(folder, "embeddings.cls_token")
    shard.unlink()
    shard.symlink_to(tmp_path / "blobs" / "gone")
    with pytest.raises(CheckpointNotFoundError, match=rf"{shard.name}.*links to missing files"):
        load_backbone(folder)


def test_folder_with_one_official_file(tmp_path: Path) -> None:
    original = tiny_backbone(registers=True)
    torch.save(original.state_dict(), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    # What Hugging Face's Trainer leaves beside the weights is not a second model.
    torch.save({"learning_rate": 0.1}, tmp_path / "training_args.bin")
    torch.save({"state": {}}, tmp_path / "optimizer.pt")
    model = load_backbone(tmp_path)
    x = images((56, 56))
    assert torch.equal(tokens(model, x), tokens(original, x))
    assert describe_checkpoint(tmp_path).files == ("dinov2_vits14_reg4_pretrain.pth",)


def test_load_partial_reads_a_folder(saved: dict[str, Any]) -> None:
    module = torch.nn.Module()
    module.register_parameter("cls", torch.nn.Parameter(torch.zeros(1, 1, 64)))
    report = load_partial(module, saved["root"] / "sharded", rename={"embeddings.cls_token": "cls"})
    assert report.loaded == ("cls",)
    expected = saved["registers"].state_dict()["embeddings.cls_token"]
    assert torch.equal(module.cls.data, expected)


def test_both_formats_of_one_model_read_the_safetensors(
    saved: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """facebook/dinov2-* repositories hold model.safetensors and pytorch_model.bin."""
    folder = copy(saved, "whole", tmp_path)
    state = load_file(folder / "model.safetensors")
    # Same names and shapes, other values: the safetensors copy is the one read.
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, folder / "pytorch_model.bin")
    with caplog.at_level(logging.INFO, logger="dinov2_heads.checkpoints.folders"):
        assert_matches(folder, saved["registers"])
    assert "pytorch_model.bin holds the same tensors" in caplog.text
    # A different model under the other name is refused, naming both files.
    other = hf_model(registers=True, hidden_size=128, num_heads=2, size=SIZE).state_dict()
    torch.save(other, folder / "pytorch_model.bin")
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"(?s)two different models, model.safetensors and pytorch_model.bin:\n"
        r".*shapes, pytorch_model.bin vs model.safetensors \(\d+\): ",
    ):
        load_backbone(folder)
    # A spare copy that cannot be read is not a reason to refuse the good one.
    (folder / "pytorch_model.bin").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert_matches(folder, saved["registers"])
    assert "pytorch_model.bin was not compared" in caplog.text


# ------------------------------------------------------------------------------ errors


def test_two_unrelated_files_are_named(tmp_path: Path) -> None:
    torch.save(tiny_backbone().state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")
    torch.save(tiny_backbone(seed=1).state_dict(), tmp_path / "dinov2_vitb14_pretrain.pth")
    with pytest.raises(
        CheckpointIsADirectoryError,
        match=r"is a directory with 2 checkpoints that are not one model: "
        r"dinov2_vitb14_pretrain.pth, dinov2_vits14_pretrain.pth; pass the path of the one",
    ):
        load_backbone(tmp_path)


def test_single_file_beside_shards_is_ambiguous(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "sharded", tmp_path)
    torch.save(tiny_backbone().state_dict(), folder / "dinov2_vits14_pretrain.pth")
    with pytest.raises(CheckpointIsADirectoryError, match=rf"dinov2_vits14_pretrain.pth, {INDEX}"):
        describe_checkpoint(folder)


def test_folder_with_nothing_loadable(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("weights elsewhere")
    (tmp_path / "dinov2-base").mkdir()
    torch.save({}, tmp_path / "dinov2-base" / "model.bin")
    with pytest.raises(
        CheckpointIsADirectoryError,
        match=r"is a directory with no checkpoint in it .*folders inside that hold one: "
        r"dinov2-base",
    ):
        load_backbone(tmp_path)
    with pytest.raises(IsADirectoryError):
        read_checkpoint(tmp_path / "dinov2-base" / "..")


def test_key_in_two_shards(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "sharded", tmp_path)
    key = "embeddings.cls_token"
    home = shard_of(folder, key)
    other = shard_of(folder, "layernorm.weight")
    assert home != other
    content = load_file(other)
    content[key] = load_file(home)[key]
    save_file(content, other)
    with pytest.raises(
        CheckpointError,
        match=rf"'{key}' is in two shards, {home.name} and {other.name} .*puts it in {home.name}",
    ):
        load_backbone(folder)


def test_shard_missing(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "sharded", tmp_path)
    shard = shard_of(folder, "layernorm.weight")
    shard.unlink()
    with pytest.raises(
        CheckpointNotFoundError, match=rf"{INDEX} names 1 of \d+ shards .*{shard.name}"
    ):
        load_backbone(folder)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(folder / INDEX)


def test_key_the_index_does_not_name(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "sharded", tmp_path)
    index = json.loads((folder / INDEX).read_text())
    shard = index["weight_map"].pop("layernorm.bias")
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=rf"{shard} holds 'layernorm.bias', but {INDEX} does not name it"
    ):
        load_backbone(folder)


def test_key_in_another_shard_than_the_index_says(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "sharded", tmp_path)
    index = json.loads((folder / INDEX).read_text())
    right = index["weight_map"]["layernorm.bias"]
    wrong = index["weight_map"]["embeddings.cls_token"]
    assert right != wrong
    index["weight_map"]["layernorm.bias"] = wrong
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=rf"{right} holds 'layernorm.bias', but .*puts it in {wrong}"
    ):
        load_backbone(folder)


def test_index_names_a_tensor_no_shard_holds(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "sharded", tmp_path)
    index = json.loads((folder / INDEX).read_text())
    shard = index["weight_map"]["layernorm.bias"]
    index["weight_map"]["encoder.layer.7.norm1.weight"] = shard
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError,
        match=r"names 1 tensors that its shards do not hold: "
        rf"'encoder.layer.7.norm1.weight' \({shard}\)",
    ):
        load_backbone(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"weight_map": {"a": "model-00001-of-00002.safetensors"', "is not valid JSON"),
        ('{"metadata": {}}', "without a 'weight_map'"),
        ('{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}', "lists 'a' twice"),
        ('{"weight_map": {"a": "../elsewhere/x.safetensors"}}', "expected the name of a shard"),
    ],
    ids=["truncated", "no weight map", "duplicate", "outside the folder"],
)
def test_malformed_index(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / INDEX).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path)


def test_one_shard_alone_is_refused(saved: dict[str, Any]) -> None:
    shard = shard_of(saved["root"] / "sharded", "layernorm.weight")
    with pytest.raises(
        CheckpointError, match=rf"is shard \d+ of \d+ of a model; pass the folder or {INDEX}"
    ):
        load_backbone(shard)


def test_config_json_is_not_an_index(saved: dict[str, Any]) -> None:
    with pytest.raises(CheckpointError, match=r"config.json is a model configuration without"):
        load_backbone(saved["root"] / "whole" / "config.json")


def test_stray_shard_is_ignored_with_a_warning(
    saved: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = copy(saved, "sharded", tmp_path)
    total = len(list(folder.glob("model-*")))
    save_file(
        {"x": torch.zeros(1)}, folder / f"model-{total + 1:05d}-of-{total + 1:05d}.safetensors"
    )
    with caplog.at_level(logging.WARNING):
        assert_matches(folder, saved["registers"])
    assert f"model-{total + 1:05d}-of-{total + 1:05d}.safetensors is not named by" in caplog.text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_hidden_layers", 12, r"num_hidden_layers=12 but the weights have depth=2"),
        ("hidden_size", 768, r"hidden_size=768 but the weights have embed_dim=64"),
        ("image_size", 518, r"image_size=518 \(37x37 positions\) but the weights have a 2x2"),
        ("num_register_tokens", 0, r"num_register_tokens=0 but the weights have .*=4"),
        ("use_swiglu_ffn", True, r"use_swiglu_ffn=True but the weights have a mlp FFN"),
        ("num_attention_heads", 3, r"num_attention_heads=3, which does not divide the width"),
        ("layer_norm_eps", 1e-5, r"layer_norm_eps=1e-05 but the DINOv2 backbone has 1e-06"),
    ],
)
def test_config_json_that_contradicts_the_weights(
    saved: dict[str, Any], tmp_path: Path, field: str, value: object, message: str
) -> None:
    folder = copy(saved, "whole", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArchitectureMismatchError, match=message):
        load_backbone(folder)
    with pytest.raises(
        ArchitectureMismatchError, match=r"config.json does not describe the weights"
    ):
        describe_checkpoint(folder)
    # The file on its own is read without the folder's config.json.
    assert load_backbone(folder / "model.safetensors", num_heads=2).config.depth == 2


def test_config_json_of_another_model_is_not_used(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = copy(saved, "whole", tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "num_hidden_layers": 9}))
    # Not used, so the head count is unknown again.
    with pytest.raises(CheckpointError, match=r"config.json is not a DINOv2 configuration"):
        load_backbone(folder)
    assert load_backbone(folder, num_heads=2).config.depth == 2
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON.*remove it"):
        load_backbone(folder)


def test_tensors_match_the_file_read_alone(saved: dict[str, Any]) -> None:
    whole = read_checkpoint(saved["root"] / "whole")
    sharded = read_checkpoint(saved["root"] / "sharded")
    assert whole.keys() == sharded.keys()
    for key, tensor in whole.items():
        value: Tensor = sharded[key]
        assert torch.equal(value, tensor), key
