"""The ``dinov2-heads`` command line.

Exit codes: 0 success, 2 usage error (argparse), 1 any other failure, reported as one line
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from dinov2_heads.data.loading import UnreadableImageError

#: Subcommand name -> module in ``dinov2_heads.commands`` with ``add_parser`` and ``run``.
COMMANDS: dict[str, str] = {
    "demo": "dinov2_heads.commands.demo",
    "extract": "dinov2_heads.commands.extract",
    "pca": "dinov2_heads.commands.pca",
    "predict": "dinov2_heads.commands.predict",
    "inspect": "dinov2_heads.commands.inspect",
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in descriptions as written and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinov2-heads",
        description="Train and ship small heads on a frozen DINOv2 backbone, offline.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers, _Formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        if isinstance(error, UnreadableImageError):
            # The library's advice names the Python argument; here the option is the way.
            message = message.replace("on_error='skip'", "--on-error skip")
        print(f"dinov2-heads {args.command}: error: {message}", file=sys.stderr)
        return 1


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
