"""The `emt` command line; subcommands live in `cluster/commands/`."""
from __future__ import annotations

import argparse
import sys

from cluster import console
from cluster.commands import MODULES
from serving import terminal
from serving.errors import EMTError

VERBOSE_HELP = "show Ray's and the libraries' log lines on the terminal (by default they go to the session's logs)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emt", description="EMT Cluster: forgetting in multimodal LLMs, on Ray")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        module.register(sub)
    for command in sub.choices.values():  # `emt eval --verbose` as well as `emt --verbose eval`
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command in this process as it is (tests call this); `run` is the terminal's entry point."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EMTError as err:
        terminal.warn(f"emt: error: {err}{console.log_hint()}")
        return 2
    except KeyboardInterrupt:
        terminal.warn("emt: interrupted; finished results are saved, rerun the same command to resume")
        return 130


def run(argv: list[str] | None = None) -> int:
    """The `emt` script: a quiet console unless --verbose, and an unexpected error as one line plus its log."""
    argv = sys.argv[1:] if argv is None else argv
    if not build_parser().parse_args(argv).verbose:
        console.quiet()
    try:
        return main(argv)
    except Exception as err:
        console.report_crash(err)
        return 1


if __name__ == "__main__":
    sys.exit(run())
