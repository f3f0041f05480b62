"""Checkpoints that are folders: Hugging Face model folders, sharded weights, the HF cache.

A path is resolved to the files that hold one model (:func:`find_checkpoint_files`), then those
files are read and shards merged into one mapping (:func:`read_checkpoint`). A plain checkpoint
file resolves to itself, so every reader in the library can take any of these paths.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinov2_heads.checkpoints.errors import (
    CheckpointError,
    CheckpointFileError,
    CheckpointIsADirectoryError,
    CheckpointNotFoundError,
)
from dinov2_heads.checkpoints.fit import check_fit
from dinov2_heads.checkpoints.huggingface_cache import (
    cached_repo,
    looks_like_repo_id,
    not_cached_message,
)
from dinov2_heads.checkpoints.reading import (
    CHECKPOINT_SUFFIXES,
    existing_file,
    read_checkpoint_file,
)

logger = logging.getLogger(__name__)

#: How shard indexes are named: ``model.safetensors.index.json``, ``pytorch_model.bin.index.json``.
INDEX_SUFFIX = ".index.json"
#: The Hugging Face model configuration next to the weights.
CONFIG_NAME = "config.json"

#: ``model-00001-of-00009.safetensors``: the names ``save_pretrained`` gives to shards.
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<number>\d{5})-of-(?P<total>\d{5})(?P<suffix>\.\w+)$")
#: Files that Hugging Face's Trainer writes next to the weights; none of them holds a model.
_NOT_WEIGHTS = re.compile(
    r"^(training_args\.bin|optimizer\.(pt|bin)|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$"
)
#: Hugging Face repositories often hold one model twice, under these names; like transformers,
#: the safetensors copy is read (after checking that the other has the same names and shapes).
_PREFERRED, _TWIN = "model.safetensors", "pytorch_model.bin"

_SHOWN = 5


@dataclass(frozen=True)
class CheckpointFiles:
    """The files that hold one checkpoint, as :func:`find_checkpoint_files` found them.

    Attributes:
        source: The path as given (``~`` expanded).
        folder: The folder that holds the files: the snapshot for a Hugging Face cache repo,
            the file's folder for a file.
        weights: The weight files: one file, or the shards in name order.
        index: The shard index (``*.index.json``), or ``None`` for a single file.
        config: ``config.json`` next to the weights, when ``source`` is a folder or an index;
            a file given directly is read on its own.
        alternative: The same model in another format (``pytorch_model.bin`` next to
            ``model.safetensors``): not loaded, only checked to hold the same names and shapes.
        ignored: Files in the folder that look like weights but are not read (stray shards
            that the index does not name).
    """

    source: Path
    folder: Path
    weights: tuple[Path, ...]
    index: Path | None = None
    config: Path | None = None
    alternative: CheckpointFiles | None = None
    ignored: tuple[Path, ...] = ()

    def names(self) -> tuple[str, ...]:
        """The files read, relative to ``source`` when it is a folder: index, weights, config."""
        paths = [self.index] if self.index is not None else []
        paths += list(self.weights)
        if self.config is not None:
            paths.append(self.config)
        base = self.source if self.source.is_dir() else self.source.parent
        return tuple(_relative(path, base) for path in paths)


def find_checkpoint_files(path: str | os.PathLike[str]) -> CheckpointFiles:
    """The files that hold the checkpoint at ``path``, without reading any weights.

    ``path`` may be:

    - a checkpoint file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``, ``.ckpt``);
    - a shard index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``);
    - a folder holding one model: a single checkpoint file of any kind, or an index and its
      shards (``save_pretrained`` / ``huggingface-cli download``), with or without
      ``config.json``. Files that Hugging Face's Trainer writes beside the weights
      (``training_args.bin``, ``optimizer.pt``, ...) are not weights and are passed over. When
      both ``model.safetensors`` and ``pytorch_model.bin`` (or their indexes) are there, the
      safetensors copy is used, as transformers does;
    - a Hugging Face cache repo (``models--facebook--dinov2-base``): the snapshot that
      ``refs/main`` names, or its only snapshot;
    - a Hugging Face repo id (``"facebook/dinov2-base"``) that is not a local path: its folder
      in the local Hugging Face cache (``HF_HUB_CACHE``, ``HF_HOME``, by default
      ``~/.cache/huggingface/hub``), offline; nothing is downloaded.

    Args:
        path: A local path.

    Returns:
        The files, and ``config.json`` when a folder or an index was given.

    Raises:
        TypeError: ``path`` is not a str or os.PathLike.
        CheckpointNotFoundError: Nothing at ``path`` (for a repo id: not in the cache; the
            message says how to put it there), or a shard or snapshot named by an index or
            ``refs/main`` is missing.
        CheckpointIsADirectoryError: A folder with no checkpoint in it, or several that are not
            one model; the message lists them.
        CheckpointError: The path is one shard of several, or an index is malformed.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"expected a path (str or os.PathLike), got {type(path).__name__}")
    source = Path(path).expanduser()
    if isinstance(path, str) and not source.exists() and looks_like_repo_id(path):
        repo = cached_repo(path)
        if repo is None:
            raise CheckpointNotFoundError(not_cached_message(path))
        logger.info("%s: found in the Hugging Face cache at %s", path, repo)
        return _in_folder(repo, _snapshot(repo))
    if source.is_dir():
        return _in_folder(source, _snapshot(source))
    file = existing_file(source)
    if file.name.endswith(".json"):
        return _from_index(source, file, config=_config_beside(file))
    _refuse_single_shard(file)
    return CheckpointFiles(source=source, folder=file.parent, weights=(file,))


def read_checkpoint(
    path: str | os.PathLike[str], *, mmap: bool = False, verify: bool = False
) -> dict[str, Any]:
    """The mapping stored at ``path``: a checkpoint file, a model folder, an index or a cache repo.

    Shards are merged into one mapping; each is read as
    :func:`~dinov2_heads.checkpoints.read_checkpoint_file` reads a file (into memory of its own
    unless ``mmap=True``, no code run). Every tensor must be in exactly one shard, the one the
    index names.

    Args:
        path: Any path that :func:`find_checkpoint_files` accepts.
        mmap: Leave the tensors as views of memory-mapped files; see
            :func:`~dinov2_heads.checkpoints.read_checkpoint_file` for the hazard.
        verify: Check every checksum the files record first.

    Returns:
        The stored mapping (for shards, names to tensors).

    Raises:
        CheckpointNotFoundError: Nothing at ``path``, or a shard is missing.
        CheckpointIsADirectoryError: A folder with no checkpoint, or several unrelated ones.
        CheckpointError: A file cannot be read, or the shards and their index disagree.
    """
    return read_checkpoint_files(find_checkpoint_files(path), mmap=mmap, verify=verify)


def read_checkpoint_files(
    files: CheckpointFiles, *, mmap: bool = False, verify: bool = False
) -> dict[str, Any]:
    """Read the files that :func:`find_checkpoint_files` found; see :func:`read_checkpoint`."""
    content = (
        _read_shards(files, mmap=mmap, verify=verify)
        if files.index is not None
        else read_checkpoint_file(files.weights[0], mmap=mmap, verify=verify)
    )
    for ignored in files.ignored:
        logger.warning("%s is not named by %s and was not read", ignored.name, files.index)
    if files.alternative is not None:
        _check_same_model(files, content, files.alternative)
    return content


# ------------------------------------------------------------------------------- folders


def _snapshot(folder: Path) -> Path:
    """A cache repo's snapshot (``refs/main``, else the only one); any other folder as it is."""
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return folder
    found = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    ref = folder / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if (snapshots / commit).is_dir():
            logger.debug("%s: refs/main names snapshot %s", folder, commit)
            return snapshots / commit
        raise CheckpointNotFoundError(
            f"{ref} names snapshot {commit!r}, which is not in {snapshots} (it holds "
            f"{_listed(found) or 'none'}); download the model again, or pass a snapshot folder"
        )
    if len(found) == 1:
        return snapshots / found[0]
    if not found:
        raise CheckpointIsADirectoryError(
            f"{folder} is a Hugging Face cache folder with no snapshot in {snapshots}; the "
            "download did not finish: download the model again"
        )
    raise CheckpointIsADirectoryError(
        f"{folder} is a Hugging Face cache folder with {len(found)} snapshots and no refs/main: "
        f"{_listed(found)}; pass one of them, e.g. {snapshots / found[0]}"
    )


def _in_folder(source: Path, folder: Path) -> CheckpointFiles:
    entries = _files_in(folder)
    indexes = [p for p in entries if _is_index(p.name)]
    weights = [
        p
        for p in entries
        if p.suffix in CHECKPOINT_SUFFIXES and not _NOT_WEIGHTS.match(p.name) and p not in indexes
    ]
    config = folder / CONFIG_NAME if (folder / CONFIG_NAME).is_file() else None
    groups = [_from_index(source, index, config=config) for index in indexes]
    claimed = {shard for group in groups for shard in group.weights}
    stray = [p for p in weights if p not in claimed and _is_shard_of(p, groups)]
    groups += [
        CheckpointFiles(source=source, folder=folder, weights=(file,), config=config)
        for file in weights
        if file not in claimed and file not in stray
    ]
    if not groups:
        raise CheckpointIsADirectoryError(_nothing_loadable(source, folder))
    bases = [_base_name(group) for group in groups]
    if sorted(bases) == sorted((_PREFERRED, _TWIN)):
        chosen, twin = groups[bases.index(_PREFERRED)], groups[bases.index(_TWIN)]
        return _with(chosen, alternative=twin, ignored=_strays(chosen, stray))
    if len(groups) > 1:
        names = sorted(_display_name(group) for group in groups)
        raise CheckpointIsADirectoryError(
            f"{source} is a directory with {len(groups)} checkpoints that are not one model: "
            f"{_listed(names)}; pass the path of the one to load"
        )
    return _with(groups[0], ignored=_strays(groups[0], stray))


def _display_name(group: CheckpointFiles) -> str:
    return group.index.name if group.index is not None else group.weights[0].name


def _base_name(group: CheckpointFiles) -> str:
    """``model.safetensors`` for both that file and ``model.safetensors.index.json``."""
    return _display_name(group).removesuffix(INDEX_SUFFIX)


def _files_in(folder: Path) -> list[Path]:
    try:
        # A link whose target is gone is kept, so that reading it names the broken file.
        return sorted(p for p in folder.iterdir() if p.is_file() or p.is_symlink())
    except OSError as error:
        raise CheckpointFileError(f"cannot list {folder}: {error.strerror or error}") from error


def _is_index(name: str) -> bool:
    return name.endswith(INDEX_SUFFIX) and Path(name.removesuffix(INDEX_SUFFIX)).suffix in (
        CHECKPOINT_SUFFIXES
    )


def _is_shard_of(file: Path, groups: Iterable[CheckpointFiles]) -> bool:
    found = _SHARD.match(file.name)
    if found is None:
        return False
    for group in groups:
        for shard in group.weights:
            other = _SHARD.match(shard.name)
            if other and (other["stem"], other["suffix"]) == (found["stem"], found["suffix"]):
                return True
    return False


def _strays(chosen: CheckpointFiles, stray: list[Path]) -> tuple[Path, ...]:
    return tuple(p for p in stray if _is_shard_of(p, [chosen]))


def _with(
    files: CheckpointFiles,
    *,
    alternative: CheckpointFiles | None = None,
    ignored: tuple[Path, ...] = (),
) -> CheckpointFiles:
    return CheckpointFiles(
        source=files.source,
        folder=files.folder,
        weights=files.weights,
        index=files.index,
        config=files.config,
        alternative=alternative,
        ignored=ignored,
    )


def _config_beside(file: Path) -> Path | None:
    config = file.parent / CONFIG_NAME
    return config if config.is_file() else None


def _nothing_loadable(source: Path, folder: Path) -> str:
    kinds = ", ".join(CHECKPOINT_SUFFIXES)
    message = (
        f"{source} is a directory with no checkpoint in it (no {kinds} file and no "
        f"*{INDEX_SUFFIX} shard index); pass a checkpoint file or a model folder"
    )
    if folder != source:
        message += f" (looked in the snapshot {folder})"
    inside = _folders_with_checkpoints(folder)
    if inside:
        message += f"; folders inside that hold one: {_listed(inside)}"
    return message


def _folders_with_checkpoints(folder: Path, limit: int = 50) -> list[str]:
    found: list[str] = []
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir())[:limit]
        for child in children:
            if (child / "snapshots").is_dir() or any(
                p.suffix in CHECKPOINT_SUFFIXES or _is_index(p.name) for p in child.iterdir()
            ):
                found.append(child.name)
    except OSError:
        return found
    return found


def _refuse_single_shard(file: Path) -> None:
    """A shard alone is part of a model; name the index that reads all of them."""
    found = _SHARD.match(file.name)
    if found is None or found["total"] == "00001":
        return
    indexes = [p.name for p in _files_in(file.parent) if _is_index(p.name)]
    hint = f"pass the folder or {indexes[0]}" if indexes else "pass the folder or its index"
    raise CheckpointError(
        f"{file.name} is shard {int(found['number'])} of {int(found['total'])} of a model; "
        f"{hint} to read them all"
    )


# ------------------------------------------------------------------------------- shards


class _DuplicateKeyError(Exception):
    def __init__(self, key: str, first: object, second: object) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key, out[key], value)
        out[key] = value
    return out


def _read_index(index: Path) -> dict[str, str]:
    """The index's ``weight_map``: tensor name -> shard file name."""
    try:
        text = index.read_text(encoding="utf-8")
    except OSError as error:
        raise CheckpointFileError(f"cannot read {index}: {error.strerror or error}") from error
    except UnicodeDecodeError:
        raise CheckpointError(f"{index} is not a text file, so not a shard index") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as duplicate:
        raise CheckpointError(
            f"{index} lists {duplicate.key!r} twice (in {duplicate.first} and "
            f"{duplicate.second}); a tensor must be in one shard: save the model again"
        ) from None
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{index} is not valid JSON ({error.msg} at line {error.lineno}); the download was "
            "probably interrupted"
        ) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        what = "a model configuration" if isinstance(data, dict) and "model_type" in data else ""
        raise CheckpointError(
            f"{index} is {what or 'JSON'} without a 'weight_map'; expected a Hugging Face shard "
            'index, {"weight_map": {"tensor name": "shard file", ...}}: pass the model folder '
            "or its *.index.json"
        )
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard:
            raise CheckpointError(
                f"{index} puts {key!r} in {shard!r}; expected the name of a shard file in "
                f"{index.parent}"
            )
    return weight_map


def _from_index(source: Path, index: Path, *, config: Path | None) -> CheckpointFiles:
    weight_map = _read_index(index)
    # Shard names count up (model-00001-of-00009, ...), so sorting gives the saved order.
    shards = tuple(index.parent / name for name in sorted(set(weight_map.values())))
    return CheckpointFiles(
        source=source, folder=index.parent, weights=shards, index=index, config=config
    )


def _read_shards(files: CheckpointFiles, *, mmap: bool, verify: bool) -> dict[str, Any]:
    index = files.index
    assert index is not None
    weight_map = _read_index(index)
    missing = [shard for shard in files.weights if not shard.is_file()]
    if missing:
        broken = [shard.name for shard in missing if shard.is_symlink()]
        note = f" ({_listed(broken)} are links to missing files)" if broken else ""
        raise CheckpointNotFoundError(
            f"{index.name} names {len(missing)} of {len(files.weights)} shards that are not in "
            f"{files.folder}: {_listed([s.name for s in missing])}{note}; the download is "
            "incomplete: fetch the missing files again"
        )
    contents = {
        shard.name: read_checkpoint_file(shard, mmap=mmap, verify=verify) for shard in files.weights
    }
    origin: dict[str, str] = {}
    for shard, content in contents.items():
        for key in content:
            if key in origin:
                raise CheckpointError(
                    f"{key!r} is in two shards, {origin[key]} and {shard} (the index "
                    f"{index.name} puts it in {weight_map.get(key, 'neither')}); the shards are "
                    "from different saves: download or save the model again"
                )
            origin[key] = shard
    unnamed = [(key, shard) for key, shard in origin.items() if weight_map.get(key) != shard]
    if unnamed:
        key, shard = unnamed[0]
        named = weight_map.get(key)
        where = f"puts it in {named}" if named else "does not name it"
        raise CheckpointError(
            f"{shard} holds {key!r}, but {index.name} {where}"
            f"{f' ({len(unnamed)} such tensors)' if len(unnamed) > 1 else ''}; the shards and "
            "the index are from different saves: download or save the model again"
        )
    absent = [key for key in weight_map if key not in origin]
    if absent:
        shown = ", ".join(f"{key!r} ({weight_map[key]})" for key in absent[:_SHOWN])
        raise CheckpointError(
            f"{index.name} names {len(absent)} tensors that its shards do not hold: {shown}"
            f"{', ...' if len(absent) > _SHOWN else ''}; a shard is from another save: download "
            "or save the model again"
        )
    logger.info("read %d tensors from %d shards listed in %s", len(origin), len(contents), index)
    return {key: value for content in contents.values() for key, value in content.items()}


def _check_same_model(
    files: CheckpointFiles, content: Mapping[str, Any], alternative: CheckpointFiles
) -> None:
    """Both copies of a model must hold the same names and shapes; otherwise which one is meant?

    Raises:
        ArchitectureMismatchError: They differ; the message names the tensors.
    """
    try:
        # Mapped: only names and shapes are compared, so no tensor data is read.
        other = read_checkpoint_files(alternative, mmap=True)
    except (CheckpointError, CheckpointFileError) as error:
        # The copy that is loaded is fine; a broken spare copy is worth a warning, not a failure.
        logger.warning(
            "%s was not compared with %s: %s", alternative.weights[0].name, files.folder, error
        )
        return
    mine, theirs = _display_name(files), _display_name(alternative)
    check_fit(
        content,
        other,
        what=f"{files.folder} holds two different models, {mine} and {theirs}",
        fix="pass the path of the one to load",
        given_name=theirs,
        expected_name=mine,
    )
    logger.info("%s: read %s; %s holds the same tensors", files.folder, mine, theirs)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")
