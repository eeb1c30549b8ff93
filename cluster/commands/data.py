"""`emt datasets` and `emt judge`: what can be evaluated, and re-judging stored answers."""
from __future__ import annotations

import argparse
import json

from cluster.commands.evaluate import add_judge_args, judge_overrides
from serving import terminal


def run_datasets(args: argparse.Namespace) -> int:
    from evaluators.datasets import describe

    rows = describe()
    if args.json:
        terminal.say(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        terminal.say(f"{r['name']:<14} {r['kind']:<7} {r['classes']:>4} classes  {r['source']:<24} {r['description']}")
    return 0


def run_judge(args: argparse.Namespace) -> int:
    from evaluators.config import JudgeConfig
    from evaluators.datasets import get_spec
    from evaluators.rejudge import judge_jsonl

    spec = get_spec(args.dataset)
    settings = JudgeConfig(**{k: v for k, v in judge_overrides(args).items() if v is not None})
    stats = judge_jsonl(spec.classes, spec.kind, args.input, args.output, judge_name=args.judges or ["rule"],
                        settings=settings)
    terminal.say(json.dumps(stats, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("datasets", help="list the registered datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_datasets)

    p = sub.add_parser("judge", help="re-judge stored answers (JSONL rows with label and output)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    add_judge_args(p)
    p.set_defaults(func=run_judge)
