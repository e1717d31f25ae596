"""The `nanoseek` command. One module per group of subcommands, each parser next to its handler;
the flags several commands share are in common.py. The work itself lives in the package."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nanoseek import __version__
from nanoseek.cli import data, generate, info, serve, train
from nanoseek.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanoseek",
        description="nanoseek: DeepSeek-V3 / R1 end to end in readable PyTorch.",
        epilog="start here:\n"
               "  nanoseek chat              talk to the model nanoseek ships (its reasoning "
               "shown)\n"
               "  nanoseek serve             the same as an OpenAI/DeepSeek-compatible API and a "
               "web chat app\n"
               "  nanoseek pipeline          reproduce how that model was made, with a report\n"
               "`nanoseek COMMAND --help` explains each command.",
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog,
                                                                          max_help_position=30),
    )
    parser.add_argument("--version", action="version", version=f"nanoseek {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (info, data, train, generate, serve):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nanoseek` and `python -m nanoseek`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (UserError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"nanoseek: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `nanoseek info ... | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


__all__ = ["build_parser", "main"]
