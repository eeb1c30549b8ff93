"""`emt baseline`: CLIP zero-shot accuracy on EMT datasets, the vision-encoder reference for every MLLM report."""
from __future__ import annotations

import argparse

from cluster.commands.evaluate import add_run_args, report, run_overrides, start_run


def run_baseline(args: argparse.Namespace) -> int:
    from evaluators.baseline import clip_baseline
    from evaluators.config import BaselineConfig

    cfg = start_run(BaselineConfig, args, {**run_overrides(args), "clip": {"name": args.clip}},
                    lambda c: [(c.clip.name, c.clip.revision, "CLIP model")])
    return report(cfg.out, clip_baseline(cfg, progress=not args.no_progress))


def register(sub) -> None:
    p = sub.add_parser("baseline", help="CLIP zero-shot accuracy with the paper's CLIP prompts (same result format)")
    add_run_args(p)
    p.add_argument("--clip", help="CLIP hub id (openai/clip-vit-large-patch14) or local CLIP directory")
    p.set_defaults(func=run_baseline)
