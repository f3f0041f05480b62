"""What the dense commands (``segment``, ``depth``) share: test-time options and ``--out``.

``--mode``, ``--crop-size``, ``--stride`` and ``--flip`` map onto
:class:`~dinov2_heads.dense.InferenceSettings`, which checks them (a window without
``--mode slide``, a stride larger than the window) when the predictor is built. The files
each image gets in ``--out`` are named by :func:`output_names`, one rule for both commands;
files already in ``--out`` are refused unless ``--overwrite`` (:func:`refuse_existing`),
before anything runs.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dinov2_heads.dense import InferenceSettings


def add_window_arguments(parser: argparse.ArgumentParser, *, preset: bool) -> None:
    """``--mode``, ``--crop-size``, ``--stride`` and ``--flip``.

    Args:
        parser: The command's parser.
        preset: The command has presets (``segment``): no option has a default of its own, each
            overrides the preset's value, and ``--no-flip`` turns a preset's flip off. Without
            presets (``depth``) the mode is ``whole`` and ``--flip`` is off unless given.
    """
    from dinov2_heads.dense.inference import MODES

    overrides = " (overrides the preset's)" if preset else ""
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=None if preset else "whole",
        help="override the preset's mode"
        if preset
        else "whole: the image in one pass; slide: overlapping --crop-size windows, averaged",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help=f"window size for --mode slide{overrides}",
    )
    parser.add_argument(
        "--stride",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help=f"window step for --mode slide{overrides}",
    )
    if preset:
        parser.add_argument(
            "--flip",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="average with the mirror image (default: as the preset; off without one)",
        )
    else:
        parser.add_argument("--flip", action="store_true", help="average with the mirrored image")


def window_settings(
    args: argparse.Namespace, preset: InferenceSettings | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``Segmenter`` / ``Depther``: the preset's, then the options given.

    ``--mode whole`` drops the preset's windows; ``--scales`` is read when the command has it.
    """
    settings: dict[str, Any] = {}
    if preset is not None:
        settings = {
            "mode": preset.mode,
            "crop_size": preset.crop_size,
            "stride": preset.stride,
            "flip": preset.flip,
            "scales": preset.scales,
        }
    if args.mode is not None:
        settings["mode"] = args.mode
        if args.mode == "whole":
            settings.pop("crop_size", None)
            settings.pop("stride", None)
    if args.crop_size is not None:
        settings["crop_size"] = tuple(args.crop_size)
    if args.stride is not None:
        settings["stride"] = tuple(args.stride)
    if args.flip is not None:
        settings["flip"] = args.flip
    if getattr(args, "scales", None) is not None:
        settings["scales"] = tuple(args.scales)
    return settings


#: What an output name keeps of an image's stem: letters, digits, ``_``, ``.`` and ``-``;
#: anything else (spaces, quotes, ``&``, ...) becomes ``_``.
_UNSAFE = re.compile(r"[^\w.-]")


def output_names(paths: Sequence[Path], suffixes: Sequence[str]) -> list[str]:
    """The name of each image's files in ``--out``: ``NAME + suffix`` for every suffix.

    NAME is the image's stem with every character other than a letter, a digit, ``_``, ``.``
    or ``-`` replaced by ``_`` (``my car.jpg`` -> ``my_car``; ``image`` for a stem with nothing
    left). Images whose files would have one name (``a/x.jpg`` and ``b/x.jpg``, ``x.jpg`` and
    ``x.png``, ``my car.jpg`` and ``my_car.jpg``, ``X.jpg`` and ``x.jpg`` on a file system
    that ignores case, or ``x.jpg``'s overlay and ``x_overlay.jpg``'s labels) never share
    one: in the order given, an image takes the first of ``NAME``, ``NAME-2``, ``NAME-3``, ...
    none of whose files an earlier image took, compared without case. The same images in the
    same order always get the same names.

    Args:
        paths: The images, in the order the command runs them.
        suffixes: What follows NAME in each file written per image (``".png"``,
            ``"_overlay.png"``).

    Returns:
        One name per image, in order.
    """
    taken: set[str] = set()
    names = []
    for path in paths:
        stem = _UNSAFE.sub("_", path.stem) or "image"
        name, number = stem, 1
        while any((name + suffix).casefold() in taken for suffix in suffixes):
            number += 1
            name = f"{stem}-{number}"
        taken.update((name + suffix).casefold() for suffix in suffixes)
        names.append(name)
    return names


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: replace files already in ``--out`` (see :func:`refuse_existing`)."""
    parser.add_argument(
        "--overwrite", action="store_true", help="replace pictures already in --out"
    )


def refuse_existing(out: Path, names: Iterable[str], *, overwrite: bool) -> None:
    """Refuse a run that would replace files in ``out``, unless ``overwrite``.

    Called before the backbone is loaded and before anything is written, so a refused run
    leaves ``out`` as it was.

    Args:
        out: The ``--out`` folder (it may not exist yet).
        names: Every file name the run would write into ``out``.
        overwrite: ``--overwrite`` was given.

    Raises:
        FileExistsError: One of the files exists; the message names the first and
            ``--overwrite``.
    """
    if overwrite or not out.is_dir():
        return
    taken = [out / name for name in names if (out / name).exists()]
    if taken:
        raise FileExistsError(
            f"{taken[0]} already exists ({len(taken)} of the files this run writes are in "
            f"{out}); pass --overwrite to replace them, or choose another --out folder"
        )
