"""The `emt` command line; subcommands live in `cluster/commands/`."""
from __future__ import annotations

import argparse
import sys

from cluster.commands import MODULES
from serving.errors import EMTError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emt", description="EMT Cluster: forgetting in multimodal LLMs, on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EMTError as err:
        print(f"emt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emt: interrupted; finished results are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
