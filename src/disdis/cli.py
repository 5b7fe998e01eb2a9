"""The ``disdis`` command line.

Each subcommand lives in ``disdis.commands.<name>`` and exposes
``register(subparsers)``; heavy imports (torch) happen inside the command so
that ``disdis --help`` stays fast. A :class:`~disdis.errors.DisdisError` becomes
one line on stderr and exit status 2; SIGTERM ends a command through its clean-ups
(exit status 143).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from disdis import __version__
from disdis.errors import DisdisError

COMMANDS: tuple[str, ...] = ("data", "train", "evaluate", "interchange", "figures", "sample", "report", "demo", "compare")


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; key=value overrides may also follow the options
    (``disdis evaluate RUN --jobs 1 eval.num_train=2000``), which argparse alone refuses."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    return args


class Terminated(BaseException):  # not an Exception: no "except Exception" may swallow it
    """SIGTERM, raised where the command is, so that its clean-ups (temporary files) run."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    # the default action would end the process at once, leaving temporary files behind
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except Terminated:
        print(f"disdis {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except DisdisError as err:
        print(f"disdis {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"disdis {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
