"""`emt matrix DIR`: rebuild a tuning run's forgetting matrix, metrics, pictures and report from stored results."""
from __future__ import annotations

import argparse

from evaluators.forgetting import OBJECTIVES
from serving import terminal


def run_matrix(args: argparse.Namespace) -> int:
    from evaluators.report import write_report

    paths = write_report(args.dir, objective=args.objective, weight=args.weight)
    terminal.say(paths["matrix.md"].read_text())
    for name, path in paths.items():
        terminal.say(f"{name:<15} {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("matrix", help="rebuild the forgetting matrix, metrics and report.html of a tuning run")
    p.add_argument("dir", help="tuning run directory (holds evals/<row>/row.json and summary.json)")
    p.add_argument("--objective", choices=OBJECTIVES, default="tradeoff",
                   help="what 'best' means in the report: gain, forgetting (lowest among rows that gained), "
                        "or tradeoff = gain - weight x mean forgetting (default)")
    p.add_argument("--weight", type=float, default=1.0, help="forgetting weight of the tradeoff objective (default 1)")
    p.set_defaults(func=run_matrix)
