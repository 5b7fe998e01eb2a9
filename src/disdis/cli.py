"""The ``disdis`` command line.

Each subcommand lives in ``disdis.commands.<name>`` and exposes
``register(subparsers)``; heavy imports (torch) happen inside the command so
that ``disdis --help`` stays fast. A :class:`~disdis.errors.DisdisError` becomes
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from disdis import __version__
from disdis.errors import DisdisError

COMMANDS: tuple[str, ...] = ("data", "train", "evaluate", "interchange", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disdis",
        description="Disentangled representation learning with diffusion models: data, training, "
        "evaluation, latent interchange and reports.",
    )
    parser.add_argument("--version", action="version", version=f"disdis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"disdis.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DisdisError as err:
        print(f"disdis {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"disdis {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
