"""The heads of a heads file that answer per pixel, and the command line that runs each.

``predict`` labels whole images; a segmentation or depth head runs through ``dinov2-heads
segment`` or ``dinov2-heads depth`` instead. What a head does is read from the head registry
(:func:`~dinov2_heads.training.dense_task`), never from its class here.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from dinov2_heads.training import DenseTask

#: What each kind of dense head gives, for messages.
ANSWERS: dict[str, str] = {"segmentation": "a class per pixel", "depth": "depth per pixel"}
#: The file to give instead when a heads file does not hold one head of a kind (``None``:
#: either kind), for messages.
REMEDIES: dict[str | None, str] = {
    "segmentation": "give a released head file",
    "depth": "give a file with one LinearDepthHead or DPTDepthHead",
    None: "give a file with one depth or segmentation head",
}


def members(heads: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The heads of a heads file by name: those of a ``MultiHead``, else the one head.

    Args:
        heads: What :func:`~dinov2_heads.export.load_heads` rebuilt.
        names: The file's head names (``HeadCheckpoint.head_names``; ``("head",)`` for one).
    """
    from dinov2_heads.heads import MultiHead

    if isinstance(heads, MultiHead):
        return {name: heads[name] for name in names}
    (name,) = names
    return {name: heads}


def dense_heads(heads: Mapping[str, nn.Module]) -> dict[str, DenseTask]:
    """The segmentation and depth heads among ``heads``, with the task of each, in order."""
    from dinov2_heads.training import dense_task

    tasks = {name: dense_task(head) for name, head in heads.items()}
    return {name: task for name, task in tasks.items() if task is not None}


def pick_dense_head(
    heads: nn.Module, file: object, head_name: str | None, task: DenseTask | None = None
) -> tuple[str, nn.Module]:
    """The one dense head of a save_heads file, as ``segment``, ``depth`` and ``export
    --whole-image`` choose it: ``head_name`` picks it among several.

    Without ``head_name`` the file must hold exactly one head of the task (classifiers beside
    it are left alone); with it, the head of that name, which must be of the task.

    Args:
        heads: What :func:`~dinov2_heads.export.load_heads` rebuilt: a ``MultiHead`` or one
            head.
        file: The heads file, for messages.
        head_name: ``--head-name``, or ``None``.
        task: ``"segmentation"``, ``"depth"``, or ``None`` for either.

    Returns:
        (the head's name in the file, ``""`` for a file of one head; the head).

    Raises:
        ValueError: No such head, or several without ``head_name``; the message lists the
            file's heads.
    """
    from torch import nn

    from dinov2_heads.training import dense_task

    members = dict(heads.items()) if isinstance(heads, nn.ModuleDict) else {"": heads}
    tasks = {name: dense_task(head) for name, head in members.items()}
    candidates = {
        name: head
        for name, head in members.items()
        if (tasks[name] == task if task is not None else tasks[name] is not None)
    }
    if head_name is not None:
        candidates = {name: head for name, head in candidates.items() if name == head_name}
    if len(candidates) != 1:
        found = ", ".join(repr(name) for name in candidates) or "none"
        held = ", ".join(f"{name or 'head'}: {type(h).__name__}" for name, h in members.items())
        kind = f"{task} head" if task is not None else "depth or segmentation head"
        raise ValueError(
            f"{file} must hold exactly one {kind} (found: {found}; the file holds {held}); "
            f"{REMEDIES[task]}, or pick one with --head-name"
        )
    return next(iter(candidates.items()))


def run_command(
    args: argparse.Namespace,
    task: DenseTask,
    name: str,
    *,
    pick: bool,
    input_size: tuple[int, int] | None,
) -> str:
    """The ``segment`` / ``depth`` command line that runs head ``name`` of ``args.heads``.

    It keeps the user's heads file, checkpoint, ``--variant``, ``--device`` and images, and
    the size the heads were trained at (``--size``, else ``input_size``) as ``train``
    advises; the output folder, beside the heads file, is named after the head (or its task for
    a file of one head).

    Args:
        args: The parsed options of a command with ``--heads``, the backbone options and
            ``images`` (``predict``).
        task: The head's task.
        name: The head's name in the file.
        pick: Add ``--head-name name`` (the file holds several heads).
        input_size: The (H, W) the heads were trained at, or ``None``.
    """
    from dinov2_heads.export.heads_summary import DENSE_COMMANDS

    words = ["dinov2-heads", DENSE_COMMANDS[task], "--heads", str(args.heads)]
    if pick:
        words += ["--head-name", name]
    words += ["--checkpoint", str(args.checkpoint)]
    if getattr(args, "variant", None) is not None:
        words += ["--variant", args.variant]
    if getattr(args, "device", "auto") != "auto":
        words += ["--device", args.device]
    size = tuple(args.size) if getattr(args, "size", None) is not None else input_size
    if size is not None:
        words += ["--size", str(size[0]), str(size[1])]
    # The pictures go beside the heads file, as train and inspect suggest.
    pictures = Path(args.heads).parent / (name if pick else task)
    words += ["--out", str(pictures), *map(str, args.images)]
    return shlex.join(words)
