"""Hugging Face repo ids (``"facebook/dinov2-small"``) found in the local Hugging Face cache.

Nothing is downloaded. ``huggingface-cli download`` and ``from_pretrained`` keep each model in
``<cache>/models--{org}--{name}/snapshots/<revision>/``, with ``refs/main`` naming the current
revision; a repo id is looked up there, offline. The cache folder is found as
``huggingface_hub`` finds it: ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE`` (its older
name), else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: ``org/name`` as the Hugging Face Hub spells repo ids.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
#: Endings that make a string a file path rather than a repo id.
_FILE_ENDINGS = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".json")


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache folder (it need not exist)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(variable)
        if value:
            return Path(value).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "huggingface" / "hub"


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` (not an existing path) reads as ``org/name`` rather than a file path.

    A name ending like a checkpoint file, or whose first part is a folder here, is a path.
    """
    return (
        bool(_REPO_ID.match(text))
        and not text.endswith(_FILE_ENDINGS)
        and not Path(text.split("/")[0]).exists()
    )


def cached_repo(repo_id: str) -> Path | None:
    """The cache folder ``models--{org}--{name}`` of ``repo_id``, or ``None`` when absent."""
    folder = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    return folder if folder.is_dir() else None


def not_cached_message(repo_id: str) -> str:
    """What to do when ``repo_id`` is neither a local path nor in the cache."""
    cache = hub_cache_dir()
    return (
        f"{repo_id!r} is not a file or folder here, and the Hugging Face repo {repo_id} is not "
        f"in the local Hugging Face cache (no {cache / ('models--' + repo_id.replace('/', '--'))}"
        "; the cache is found through HF_HUB_CACHE or HF_HOME). Nothing is downloaded: on a "
        f"machine with internet access run `huggingface-cli download {repo_id}` (or load it "
        "once with transformers) and copy the cache folder here, or point HF_HUB_CACHE at a "
        "cache that holds it, or pass the path of a local checkpoint file or model folder"
    )
