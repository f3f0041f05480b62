"""The ``dinov2-heads`` command line.

Exit codes: 0 success, 2 usage error (argparse), 1 any other failure, reported as one line
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence

#: Subcommand name -> module in ``dinov2_heads.commands`` with ``add_parser`` and ``run``.
COMMANDS: dict[str, str] = {
    "demo": "dinov2_heads.commands.demo",
    "extract": "dinov2_heads.commands.extract",
    "train": "dinov2_heads.commands.train",
    "predict": "dinov2_heads.commands.predict",
    "export": "dinov2_heads.commands.export",
    "segment": "dinov2_heads.commands.segment",
    "depth": "dinov2_heads.commands.depth",
    "pca": "dinov2_heads.commands.pca",
    "search": "dinov2_heads.commands.search",
    "inspect": "dinov2_heads.commands.inspect",
}


#: The library's advice names its Python arguments; on the command line the options are the way.
_OPTION_ADVICE: tuple[tuple[str, str], ...] = (
    (r"on_error='skip'", "--on-error skip"),
    (r"\boverwrite=True", "--overwrite"),
    (r"\bimage_column=", "--image-column"),
    (r"\bload_backbone\(path\) without variant=", "leaving --variant out"),
    (r"\bnum_workers=(\d+)\b", r"--num-workers \1"),
    (r"\ba smaller batch_size\b", "a smaller --batch-size"),
    (r"\bextract_features\b(?:\(\.\.\.\))?", "dinov2-heads extract"),
    (r"\bbackend=\"(\w+)\"", r"--backend \1"),
)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in descriptions as written and shows defaults."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # None (no value) and False (a flag left off) say nothing; where None stands for
        # something, the help text says what.
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinov2-heads",
        description="Train and ship small heads on a frozen DINOv2 backbone, offline.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers, _Formatter)
    return parser


def version_line() -> str:
    """``dinov2-heads 0.1.0 (torch 2.13.0, Python 3.11.7)``: what a bug report needs."""
    import platform

    import torch

    # The package's own __init__ holds the version and is loaded before any of its modules;
    # importing it from here would import the layer above the command line.
    version = getattr(sys.modules["dinov2_heads"], "__version__", "unknown")
    python = platform.python_version()
    return f"dinov2-heads {version} (torch {torch.__version__}, Python {python})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    # The library's INFO lines are part of the output; other packages' (the ONNX exporter's
    # optimiser passes, for one) only with --debug.
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s"
    )
    library = logging.getLogger("dinov2_heads")
    previous = library.level
    library.setLevel(level)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        hint = getattr(module, "ON_INTERRUPT", None)
        print(f"interrupted; {hint}" if hint else "interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        for pattern, option in _OPTION_ADVICE:
            message = re.sub(pattern, option, message)
        print(f"dinov2-heads {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        library.setLevel(previous)


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
